"""`distill`, the package's verb: `Distiller` built, compiled and fit in one call, as
``tfcompress.prune(...)`` and ``tfcompress.quantize(...)`` are for theirs.

Example:
    >>> small = tfcompress.distill(model, student, calibration, steps=2, verbose=0)
    >>> small is student, small.count_params() == student.count_params()
    (False, True)
"""

from __future__ import annotations

from collections.abc import Sequence

import keras

from tfcompress.core.layers import copy_model
from tfcompress.distill.distiller import Distiller, check_settings
from tfcompress.distill.losses import (
    DEFAULT_DIVERGENCE,
    DEFAULT_LABELS_WEIGHT,
    DEFAULT_TEMPERATURE,
)
from tfcompress.errors import TfcompressError


def distill(
    teacher: keras.Model,
    student: keras.Model,
    data,
    steps: int,
    *,
    labels_weight: float | tuple[float, float] = DEFAULT_LABELS_WEIGHT,
    temperature: float = DEFAULT_TEMPERATURE,
    divergence: str = DEFAULT_DIVERGENCE,
    learning_rate: float = 1e-3,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    inplace: bool = False,
    verbose: int = 1,
) -> keras.Model:
    """``student`` trained for ``steps`` batches of ``data`` (a ``tf.data`` dataset or a list of
    ``(x, y[, mask])`` batches, repeated for as many steps as asked) to match ``teacher`` with
    `Distiller`'s losses and defaults (``labels_weight``: a number, or ``(start, end)``
    linear over the steps), AdamW at ``learning_rate``. Returns the trained
    student: a copy, unless ``inplace`` (then ``student`` itself). ``verbose``: 0 silent, 1 a
    progress bar.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise TfcompressError(f"steps must be a positive integer, got {steps!r}")
    if (isinstance(learning_rate, bool) or not isinstance(learning_rate, int | float)
            or not learning_rate > 0):
        raise TfcompressError(f"learning_rate must be a number > 0, got {learning_rate!r}")
    check_settings(teacher, student, labels_weight, temperature, divergence)  # before the copy
    data = _repeated(data)
    student = student if inplace else copy_model(student)
    distiller = Distiller(teacher, student, labels_weight=labels_weight,
                          temperature=temperature, divergence=divergence)
    distiller.compile(optimizer=keras.optimizers.AdamW(float(learning_rate)))
    distiller.fit(data, steps_per_epoch=steps, epochs=1, verbose=verbose,
                  callbacks=list(callbacks))
    return student


def _repeated(data):
    """``data`` (a dataset or a list of equally shaped batches) as a dataset that never ends."""
    import tensorflow as tf

    if not isinstance(data, tf.data.Dataset):
        batches = list(data)
        if not batches:
            raise TfcompressError("data is empty: give at least one (x, y[, mask]) batch")
        data = tf.data.Dataset.from_tensor_slices(tuple(
            tf.stack([b[i] for b in batches]) for i in range(len(batches[0]))))
    return data.repeat()
