"""`DistillOptions`: what the best distillation recipes add to the logits loss, checked once.

On-policy sequences (GKD: ``on_policy``, ``prompt_length``) and hidden-state matching for
depth-pruned students (``features``, ``feature_weight``, ``feature_loss``). `Distiller` takes
them as keyword arguments and the recipes' distill stage as keys; both go through this class.

Example:
    >>> DistillOptions(on_policy=0.5, features=True, feature_loss="cosine")
    >>> DistillOptions.from_config({"on_polcy": 0.5})   # TfcompressError: did you mean...
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from tfcompress.core.registry import unknown_keys
from tfcompress.errors import TfcompressError

FEATURE_LOSSES = ("mse", "cosine")


def _number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


@dataclass(frozen=True)
class DistillOptions:
    """On-policy sequences and feature matching of a `Distiller` (all off by default).

    ``on_policy``: probability in [0, 1] that a training batch is replaced by the student's
    own continuations of its first ``prompt_length`` tokens (None: half the window), scored by
    the teacher with the divergence alone. ``features``: match hidden states (True: GPT block
    outputs, each student block to the teacher block it was copied from, else spread evenly;
    a list of teacher block indices, one per student block; or ``(student_layer,
    teacher_layer)`` name pairs), by ``feature_loss`` (``"mse"`` or ``"cosine"``: 1 - cosine
    similarity), weighted by ``feature_weight``.

    Example:
        >>> options = DistillOptions(features=[1, 3], feature_weight=0.1)
        >>> options.feature_weight
        0.1
    """

    on_policy: float = 0.0
    prompt_length: int | None = None
    features: bool | list | tuple | None = None
    feature_weight: float = 1.0
    feature_loss: str = "mse"

    def __post_init__(self):
        if not _number(self.on_policy) or not 0.0 <= self.on_policy <= 1.0:
            raise TfcompressError(f"on_policy must be a probability in [0, 1] (the share of "
                                  f"batches the student generates), got {self.on_policy!r}")
        if self.prompt_length is not None and (
                not isinstance(self.prompt_length, int) or isinstance(self.prompt_length, bool)
                or self.prompt_length < 1):
            raise TfcompressError(f"prompt_length must be a positive integer (tokens kept before "
                                  f"the student continues) or None, got {self.prompt_length!r}")
        if not (self.features is None or isinstance(self.features, bool | list | tuple)):
            raise TfcompressError(f"features must be True, a list of teacher block indices or "
                                  f"of (student_layer, teacher_layer) pairs, got "
                                  f"{self.features!r}")
        if not _number(self.feature_weight) or self.feature_weight < 0:
            raise TfcompressError(f"feature_weight must be a number >= 0, got "
                                  f"{self.feature_weight!r}")
        if self.feature_loss not in FEATURE_LOSSES:
            raise TfcompressError(f"feature_loss must be one of {list(FEATURE_LOSSES)}, got "
                                  f"{self.feature_loss!r}")

    def get_config(self) -> dict:
        """The options as keyword arguments of `Distiller`."""
        return asdict(self)

    @classmethod
    def from_config(cls, config: dict) -> DistillOptions:
        """Options from a dict; an unknown key is refused with the closest valid one."""
        problem = unknown_keys(cls, config)
        if problem:
            raise TfcompressError(problem)
        return cls(**config)

    @classmethod
    def from_stage(cls, settings: dict) -> DistillOptions:
        """The options among a recipe distill stage's settings (its other keys left out)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in settings.items() if k in names})


__all__ = ["FEATURE_LOSSES", "DistillOptions"]
