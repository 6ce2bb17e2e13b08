"""Callbacks for distillation with ``fit``: schedules for T and alpha, best-student checkpoint.

Example:
    >>> callbacks = [ParameterSchedule("temperature", "cosine", start=4.0, end=1.0),
    ...              BestStudentCheckpoint(valid_batches, path="best_student.keras")]
    >>> distiller.fit(train, steps_per_epoch=300, callbacks=callbacks)
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import keras
import numpy as np

from tfcompress.core.latency import keras_forward
from tfcompress.core.quality import lm_quality
from tfcompress.distill.losses import SCHEDULES, check_alpha, check_temperature, schedule_value
from tfcompress.errors import TfcompressError

PARAMETERS = ("temperature", "labels_weight", "alpha")
# the labels weight: Distiller.labels_weight (alpha: its deprecated alias), SoftTargetLoss.alpha
NAMES = {"temperature": ("temperature",), "labels_weight": ("labels_weight", "alpha"),
         "alpha": ("labels_weight", "alpha")}


def schedule_target(model, parameter: str):
    """The variable a schedule writes: ``model.<parameter>`` or ``model.loss.<parameter>``
    (``labels_weight`` and ``alpha`` name the same weight of the labels loss)."""
    for owner in (model, getattr(model, "loss", None)):
        for name in NAMES[parameter]:
            variable = getattr(owner, name, None)
            if variable is not None and hasattr(variable, "assign"):
                return variable
    raise TfcompressError(
        f"the model being fit has no {parameter} variable: schedule a Distiller, or a model "
        "compiled with loss=SoftTargetLoss(...)"
    )


@keras.saving.register_keras_serializable(package="tfcompress")
class ParameterSchedule(keras.callbacks.Callback):
    """Set the distillation ``temperature`` or ``labels_weight`` (``alpha``) before every batch.

    ``kind`` is ``"constant"``, ``"linear"`` or ``"cosine"`` from ``start`` to ``end`` over
    ``steps`` batches (default: the whole ``fit``); the value stays at ``end`` afterwards.
    A ``fit`` whose length Keras cannot know (a dataset of unknown size, no
    ``steps_per_epoch``) follows the schedule by epochs instead, with a warning: one epoch
    keeps ``start`` throughout.

    Example:
        >>> schedule = ParameterSchedule("labels_weight", "linear", start=0.0, end=1.0, steps=200)
    """

    def __init__(self, parameter: str, kind: str = "linear", start: float = 1.0,
                 end: float = 1.0, steps: int | None = None):
        super().__init__()
        if parameter not in PARAMETERS:
            raise TfcompressError(f"parameter must be one of {PARAMETERS}, got {parameter!r}")
        if kind not in SCHEDULES:
            raise TfcompressError(f"kind must be one of {SCHEDULES}, got {kind!r}")
        if parameter == "temperature":
            self.start, self.end = check_temperature(start), check_temperature(end)
        else:
            self.start, self.end = check_alpha(start, parameter), check_alpha(end, parameter)
        if steps is not None and (not isinstance(steps, int) or steps < 1):
            raise TfcompressError(f"steps must be a positive integer or None, got {steps!r}")
        self.parameter, self.kind, self.steps = parameter, kind, steps
        self._step = 0
        self._total = steps

    def value(self, step: int) -> float:
        """The scheduled value at batch ``step`` (0-based)."""
        total = self._total or 1
        return schedule_value(self.kind, self.start, self.end, step / max(total - 1, 1))

    def on_train_begin(self, logs=None):
        self._variable = schedule_target(self.model, self.parameter)
        self._per_epoch = self.params.get("steps")
        self._by_epoch = self.steps is None and not self._per_epoch
        if self._by_epoch:
            # counting batches against an unknown total would reach ``end`` after a few
            warnings.warn(f"ParameterSchedule: this fit's number of steps is unknown (a dataset "
                          f"of unknown size without steps_per_epoch), so {self.parameter} "
                          "follows its schedule by epochs", stacklevel=2)
        if self.steps is None:
            self._total = (self._per_epoch or 1) * (self.params.get("epochs") or 1)
        self._step = 0

    def on_epoch_begin(self, epoch, logs=None):
        # From the epoch number, not from batches seen: a fit that BackupAndRestore resumes
        # at a later epoch continues the schedule where the interrupted one stopped.
        if self._per_epoch or self._by_epoch:
            self._step = epoch * (self._per_epoch or 1)

    def on_train_batch_begin(self, batch, logs=None):
        self._variable.assign(self.value(self._step))
        self._step += 0 if self._by_epoch else 1

    def get_config(self) -> dict:
        return {"parameter": self.parameter, "kind": self.kind, "start": self.start,
                "end": self.end, "steps": self.steps}

    @classmethod
    def from_config(cls, config: dict):
        return cls(**config)


def student_perplexity(student, data) -> float:
    """Held-out perplexity of a Keras 3 or tf.keras student over ``(x, y, mask)`` batches."""
    return lm_quality(keras_forward(student), data)["perplexity"]


class BestStudentCheckpoint(keras.callbacks.Callback):
    """Keep the student with the lowest held-out perplexity; restore it when ``fit`` ends.

    Works under a `Distiller` (the bare ``distiller.student`` is checked and saved) and under a
    plain ``student.fit``. Perplexity on ``data`` is measured every ``every`` training batches
    (default: at each epoch end); with ``path`` each new best is also saved there as ``.keras``.
    The best value is in ``best_perplexity`` and each check in ``history``.
    """

    def __init__(self, data, path: str | Path | None = None, every: int | None = None,
                 restore: bool = True):
        super().__init__()
        if path is not None and Path(path).suffix != ".keras":
            raise TfcompressError(f"path must end in .keras, got {str(path)!r}")
        if every is not None and (not isinstance(every, int) or every < 1):
            raise TfcompressError(f"every must be a positive integer or None, got {every!r}")
        self.data = data
        self.path = None if path is None else Path(path)
        self.every, self.restore = every, restore
        self.best_perplexity = math.inf
        self.history: list[float] = []
        self._best_weights = None
        self._seen = 0
        self._forward = None

    def on_train_begin(self, logs=None):
        self._forward = keras_forward(self.student)  # traced once per fit, not per check

    @property
    def student(self):
        return getattr(self.model, "student", self.model)

    def _check(self):
        perplexity = lm_quality(self._forward, self.data)["perplexity"]
        self.history.append(perplexity)
        if perplexity < self.best_perplexity:
            self.best_perplexity = perplexity
            self._best_weights = [np.array(w) for w in self.student.get_weights()]
            if self.path is not None:
                self.student.save(self.path)

    def on_train_batch_end(self, batch, logs=None):
        self._seen += 1
        if self.every and self._seen % self.every == 0:
            self._check()

    def on_epoch_end(self, epoch, logs=None):
        if not self.every:
            self._check()
        if logs is not None:
            logs["val_student_perplexity"] = self.history[-1] if self.history else math.nan

    def on_train_end(self, logs=None):
        if self.restore and self._best_weights is not None:
            self.student.set_weights(self._best_weights)
