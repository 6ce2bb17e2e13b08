"""Distillation in a plain ``student.fit``: the teacher's logits ride in the dataset's targets.

`with_teacher_logits` (online teacher) or `load_teacher_cache(..., packed=True)` (offline top-k
cache) turn ``(x, y, mask)`` batches into ``(x, packed, mask)``; `SoftTargetLoss` unpacks them.
It works with Keras 3 and tf.keras (e.g. TF-MOT quantization-aware) students alike, because
it is a plain function of ``(y_true, y_pred)`` that returns one value per token and leaves the
mask to Keras's ``sample_weight``.

Example:
    >>> kd = SoftTargetLoss(alpha=0.5, temperature=2.0)
    >>> student.compile(optimizer="adam", loss=kd)
    >>> student.fit(with_teacher_logits(train, teacher), steps_per_epoch=100)
"""

from __future__ import annotations

import keras
import tensorflow as tf

from tfcompress.core.layers import require_keras3
from tfcompress.distill.losses import (
    check_alpha,
    check_divergence,
    check_temperature,
    densify_top_k,
    divergence,
    hard_cross_entropy,
)
from tfcompress.errors import TfcompressError


def pack_targets(targets, teacher_values, teacher_indices=None):
    """``[targets, values(, indices)]`` along the last axis, as one float32 tensor."""
    parts = [tf.cast(targets, tf.float32)[..., None], tf.cast(teacher_values, tf.float32)]
    if teacher_indices is not None:
        parts.append(tf.cast(teacher_indices, tf.float32))
    return tf.concat(parts, axis=-1)


def with_teacher_logits(dataset, teacher):
    """Map ``(x, y, mask)`` batches to ``(x, [y, teacher logits], mask)`` for `SoftTargetLoss`."""
    require_keras3(teacher, "teacher")

    def add(x, y, mask):
        return x, pack_targets(y, teacher(x, training=False)), mask

    return dataset.map(add)


@keras.saving.register_keras_serializable(package="tfcompress")
class SoftTargetLoss:
    """Per-token ``alpha * hard + (1 - alpha) * T^2 * divergence`` from packed targets.

    ``top_k=None`` reads full teacher logits (`with_teacher_logits`); an integer reads a
    top-k cache (`load_teacher_cache(..., packed=True)`). Keras reduces it as any plain loss
    function (masked tokens summed, divided by all tokens), so ``alpha=1`` trains exactly as
    ``loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True)`` does.
    ``temperature`` and ``alpha`` are variables, so `ParameterSchedule` can change them
    during ``fit``.
    """

    def __init__(self, alpha: float = 0.5, temperature: float = 2.0,
                 divergence: str = "forward_kl", beta: float = 0.5, top_k: int | None = None):
        alpha, temperature = check_alpha(alpha), check_temperature(temperature)
        self.divergence, self.beta = check_divergence(divergence, beta)
        if top_k is not None and (not isinstance(top_k, int) or top_k < 1):
            raise TfcompressError(f"top_k must be a positive integer or None, got {top_k!r}")
        self.top_k = top_k
        self.alpha = tf.Variable(alpha, trainable=False, dtype=tf.float32, name="alpha")
        self.temperature = tf.Variable(temperature, trainable=False, dtype=tf.float32,
                                       name="temperature")
        self.__name__ = "soft_target_loss"

    def __call__(self, y_true, y_pred):
        y_pred = tf.cast(y_pred, tf.float32)
        vocab = y_pred.shape[-1]
        targets = y_true[..., 0]
        if self.top_k is None:
            teacher = y_true[..., 1:]
        else:
            k = self.top_k
            teacher = densify_top_k(y_true[..., 1 : 1 + k], y_true[..., 1 + k : 1 + 2 * k], vocab,
                                    self.divergence)
        soft = divergence(self.divergence, teacher, y_pred, self.temperature, self.beta)
        hard = hard_cross_entropy(targets, y_pred)
        return self.alpha * hard + (1.0 - self.alpha) * soft

    def get_config(self) -> dict:
        return {"alpha": float(self.alpha.numpy()), "temperature": float(self.temperature.numpy()),
                "divergence": self.divergence, "beta": self.beta, "top_k": self.top_k}

    @classmethod
    def from_config(cls, config: dict):
        return cls(**config)
