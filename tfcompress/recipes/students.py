"""Students for the ``distill`` stage: a fresh built-in preset, or fewer blocks of the teacher.

``{"preset": "student"}`` builds a new `build_gpt` model with the teacher's vocabulary;
``{"depth": 0.5}`` or ``{"layers": [0, 2]}`` keeps those transformer blocks of the teacher
(embeddings, norms and head copied: the usual start of a distilled student). The shallow form
works on `build_gpt` and `build_llama` models and on KerasHub ``CausalLM``s. ``depth`` takes
evenly spaced blocks, or with ``select: importance`` the blocks that change their input most
(`choose_blocks`, Minitron / ShortGPT depth pruning). ``{"model": name}`` starts from an
earlier model of the run instead of the teacher (a pruned one: prune, then distil from the
unpruned model), whole or cut by ``layers`` / ``depth``; the stage resolves the name.

Example:
    >>> student = make_student(teacher, {"depth": 0.5}, seq_len=128)
"""

from __future__ import annotations

import re

from tfcompress.errors import TfcompressError

BLOCK = re.compile(r"^block(\d+)_")
HUB_BLOCK = re.compile(r"^transformer_layer_(\d+)$")


def kept_blocks(n_layers: int, spec: dict) -> list[int]:
    """Block indices a ``layers`` / ``depth`` spec keeps: ``depth`` takes evenly spaced blocks
    (every other one for 0.5), always at least one."""
    if "layers" in spec:
        keep = [int(i) for i in spec["layers"]]
        if not keep or any(not 0 <= i < n_layers for i in keep):
            raise TfcompressError(f"student.layers must list block indices in [0, {n_layers}), "
                                  f"got {spec['layers']}")
        return keep
    n = depth_count(n_layers, spec["depth"])
    return sorted({int(i * n_layers / n) for i in range(n)})


def depth_count(n_layers: int, depth: float) -> int:
    """Blocks a ``depth`` student keeps: ``round(n_layers * depth)``, at least one.

    Example:
        >>> depth_count(30, 0.5), depth_count(3, 0.1)
        (15, 1)
    """
    return max(1, round(n_layers * depth))


def choose_blocks(source, spec: dict, calibration) -> tuple[dict, list[float] | None]:
    """``spec`` with a ``select: importance`` depth turned into the ``layers`` it keeps,
    and the importance of every block of ``source`` (None when nothing was measured).

    ``calibration`` is an array of token windows ``(n, seq)``, scored 8 windows at a time.

    Example:
        >>> choose_blocks(teacher, {"depth": 0.5, "select": "importance"}, windows)
        ({'layers': [0, 3]}, [0.96, 0.15, 0.12, 0.18])
    """
    if spec.get("select") != "importance":
        return spec, None
    from tfcompress.distill import block_importance, most_important

    batches = [calibration[i:i + 8] for i in range(0, len(calibration), 8)]
    scores = [float(v) for v in block_importance(source, batches)]
    keep = most_important(scores, depth_count(len(scores), spec["depth"]))
    rest = {k: v for k, v in spec.items() if k not in ("depth", "select")}
    return {**rest, "layers": keep}, scores


def make_student(teacher, spec: dict, seq_len: int, name: str = "student"):
    """A new student model for ``teacher`` from a validated student spec.

    With ``spec["model"]`` the caller passes that model as ``teacher``: it is copied whole,
    or cut to ``layers`` / ``depth`` like the teacher would be. ``select: importance`` must be
    resolved first (`choose_blocks`).
    """
    from tfcompress.distill.distiller import vocab_size_of

    if "preset" in spec:
        from tfcompress.models import build_gpt

        overrides = {k: v for k, v in spec.items() if k != "preset"}
        return build_gpt(spec["preset"], vocab_size=vocab_size_of(teacher, "teacher"),
                         seq_len=seq_len, name=name, **overrides)
    if spec.get("select") == "importance":
        raise TfcompressError("student: select: importance needs the measured blocks; pass "
                              "the spec through choose_blocks first")
    if "layers" not in spec and "depth" not in spec:
        from tfcompress.core import copy_model

        return copy_model(teacher)
    from tfcompress.distill.features import hub_causal_lm

    hub = hub_causal_lm(teacher)
    if hub is not None:
        return _shallow_kerashub(hub, spec, name)
    blocks = sorted({int(m.group(1)) for la in teacher.layers if (m := BLOCK.match(la.name))})
    if not blocks:
        raise TfcompressError(
            f"student: cannot find transformer blocks in {teacher.name!r} (layers named "
            "block<i>_..., or a KerasHub CausalLM); use student: {preset: ...} instead")
    from tfcompress.distill import take_blocks

    return take_blocks(teacher, kept_blocks(len(blocks), spec), name=name)


def _shallow_kerashub(causal_lm, spec: dict, name: str):
    from tfcompress.recipes.sources import ids_to_logits

    backbone = causal_lm.backbone
    config = backbone.get_config()
    keep = kept_blocks(config["num_layers"], spec)
    small = type(backbone).from_config({**config, "num_layers": len(keep)})
    for layer in small.layers:
        match = HUB_BLOCK.match(layer.name)
        source = f"transformer_layer_{keep[int(match.group(1))]}" if match else layer.name
        if layer.weights:
            layer.set_weights(backbone.get_layer(source).get_weights())
    student = type(causal_lm)(backbone=small, preprocessor=None, name=name)
    return ids_to_logits(student)
