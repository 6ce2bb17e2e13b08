"""Distillation math as pure functions on logits (numpy arrays or tensors in, tensors out).

Every divergence compares the teacher's and the student's next-token distributions at
temperature ``T`` position by position and is multiplied by ``T**2`` (Hinton et al.), so its
gradient keeps the same scale whatever ``T`` is. Reductions over tokens honour a mask: a
position whose mask is 0 counts for nothing.

Example:
    >>> t = np.array([[[2.0, 0.0, -1.0]]]); s = np.zeros((1, 1, 3))
    >>> per_token = forward_kl(t, s, temperature=2.0)          # shape (1, 1)
    >>> total, hard, soft = kd_loss([[0]], s, t, alpha=0.5, temperature=2.0)
"""

from __future__ import annotations

import math

from keras import ops

from tfcompress.errors import TfcompressError

# The defaults of `Distiller` and of the recipes' distill stage (one source), chosen at the
# distill benchmark's full size (`python -m benchmarks.distill --sweep`, README "Distillation
# defaults"). The labels weight is a pair: linear from the first to the second over a fit.
DEFAULT_LABELS_WEIGHT = (0.3, 1.0)
DEFAULT_TEMPERATURE = 1.0
DEFAULT_DIVERGENCE = "forward_kl"

# Stands for log(0) in logits rebuilt from a top-k cache: finite, so 0 * fill stays 0.
MISSING_LOGIT = -1e9


def _log_probs(logits, temperature):
    return ops.log_softmax(ops.cast(logits, "float32") / temperature, axis=-1)


def forward_kl(teacher_logits, student_logits, temperature=1.0):
    """``T^2 * KL(p_teacher || p_student)`` per position: mass-covering (standard KD)."""
    log_p = _log_probs(teacher_logits, temperature)
    log_q = _log_probs(student_logits, temperature)
    return temperature**2 * ops.sum(ops.exp(log_p) * (log_p - log_q), axis=-1)


def reverse_kl(teacher_logits, student_logits, temperature=1.0):
    """``T^2 * KL(p_student || p_teacher)`` per position: mode-seeking (MiniLLM)."""
    log_p = _log_probs(teacher_logits, temperature)
    log_q = _log_probs(student_logits, temperature)
    return temperature**2 * ops.sum(ops.exp(log_q) * (log_q - log_p), axis=-1)


def soft_cross_entropy(teacher_logits, student_logits, temperature=1.0):
    """``T^2 * H(p_teacher, p_student)`` per position: forward KL plus the teacher's entropy."""
    log_p = _log_probs(teacher_logits, temperature)
    log_q = _log_probs(student_logits, temperature)
    return -(temperature**2) * ops.sum(ops.exp(log_p) * log_q, axis=-1)


def jensen_shannon(teacher_logits, student_logits, temperature=1.0, beta=0.5):
    """Generalized JSD (GKD): ``T^2 (beta KL(p||m) + (1-beta) KL(q||m))``, m = beta p + (1-beta) q.

    ``beta`` in (0, 1) moves it from forward-KL-like (small beta) to reverse-KL-like (large).
    """
    log_p = _log_probs(teacher_logits, temperature)
    log_q = _log_probs(student_logits, temperature)
    log_m = ops.logaddexp(math.log(beta) + log_p, math.log1p(-beta) + log_q)
    kl_pm = ops.sum(ops.exp(log_p) * (log_p - log_m), axis=-1)
    kl_qm = ops.sum(ops.exp(log_q) * (log_q - log_m), axis=-1)
    return temperature**2 * (beta * kl_pm + (1.0 - beta) * kl_qm)


DIVERGENCES = {
    "forward_kl": forward_kl,
    "reverse_kl": reverse_kl,
    "jsd": jensen_shannon,
    "soft_ce": soft_cross_entropy,
}


def divergence(name: str, teacher_logits, student_logits, temperature=1.0, beta: float = 0.5):
    """Per-position divergence called by name (see `DIVERGENCES`)."""
    if name == "jsd":
        return jensen_shannon(teacher_logits, student_logits, temperature, beta)
    return DIVERGENCES[name](teacher_logits, student_logits, temperature)


def hard_cross_entropy(targets, student_logits):
    """Next-token cross-entropy per position, at temperature 1.

    The same op as ``keras.losses.SparseCategoricalCrossentropy(from_logits=True)``, so that
    ``alpha=1`` reproduces plain ``fit`` bit for bit (a hand-written log-softmax differs in the
    last bits, which Adam amplifies on near-zero gradients).
    """
    return ops.sparse_categorical_crossentropy(ops.cast(targets, "int32"),
                                               ops.cast(student_logits, "float32"),
                                               from_logits=True)


def masked_mean(values, mask=None, total=None):
    """Mean of ``values`` over positions whose ``mask`` is non-zero (0 when none is).

    ``total`` replaces the mask's own sum as the denominator: under tf.distribute the
    global batch's weight (`tfcompress.core.distribute.global_weight`), so each replica
    returns its share and the shares sum to the mean over the global batch.

    Example:
        >>> float(masked_mean([1.0, 3.0], [1.0, 0.0], total=4.0))   # 1 / 4
        0.25
    """
    values = ops.cast(values, "float32")
    if mask is None and total is None:
        return ops.mean(values)
    mask = ops.ones_like(values) if mask is None else ops.cast(mask, "float32")
    # Keras's "mean_with_sample_weight" reduction, op for op
    return ops.divide_no_nan(ops.sum(values * mask), ops.sum(mask) if total is None else total)


def kd_loss(targets, student_logits, teacher_logits, mask=None, alpha=0.5, temperature=1.0,
            divergence_name: str = "forward_kl", beta: float = 0.5, total=None):
    """``(alpha * hard + (1 - alpha) * soft, hard, soft)``, each a masked mean over tokens
    (over ``total`` weight, when given: see `masked_mean`)."""
    hard = masked_mean(hard_cross_entropy(targets, student_logits), mask, total)
    soft = masked_mean(
        divergence(divergence_name, teacher_logits, student_logits, temperature, beta), mask,
        total,
    )
    return alpha * hard + (1.0 - alpha) * soft, hard, soft


def feature_mse(student_features, teacher_features, mask=None, total=None):
    """Mean squared error between hidden states per position, then a masked mean."""
    diff = ops.cast(student_features, "float32") - ops.cast(teacher_features, "float32")
    return masked_mean(ops.mean(ops.square(diff), axis=-1), mask, total)


def feature_cosine(student_features, teacher_features, mask=None, total=None):
    """``1 - cosine similarity`` between hidden states per position, then a masked mean:
    blind to scale, so a student whose states differ only in norm scores 0.

    Example:
        >>> float(feature_cosine([[[1.0, 0.0]]], [[[0.0, 2.0]]]))
        1.0
    """
    s = ops.cast(student_features, "float32")
    t = ops.cast(teacher_features, "float32")
    norms = ops.maximum(ops.norm(s, axis=-1) * ops.norm(t, axis=-1), 1e-12)
    return masked_mean(1.0 - ops.sum(s * t, axis=-1) / norms, mask, total)


FEATURE_LOSS_FUNCTIONS = {"mse": feature_mse, "cosine": feature_cosine}


def densify_top_k(values, indices, vocab_size: int, divergence: str | None = None):
    """Full logits from the top-k ``values`` at ``indices``; the rest get `MISSING_LOGIT`.

    Softmax of the result is the teacher's distribution renormalised over its top k tokens,
    which is exactly the teacher's distribution when ``k == vocab_size``. ``divergence``
    (the one the logits feed) is checked: reverse KL weighs the student's mass on the missing
    tokens by their -1e9 logits, so it needs ``k == vocab_size``.
    """
    import tensorflow as tf

    if divergence == "reverse_kl" and values.shape[-1] != vocab_size:
        raise TfcompressError(
            f"reverse_kl needs the full teacher distribution: the cache holds top "
            f"{values.shape[-1]} of {vocab_size} logits; use forward_kl, jsd or soft_ce, or "
            "cache with top_k=vocab size"
        )
    values = tf.cast(values, tf.float32)
    k = tf.shape(values)[-1]
    lead = tf.shape(values)[:-1]
    rows = tf.reduce_prod(lead)
    flat = tf.reshape(tf.cast(indices, tf.int64), [rows, k])
    flat += tf.range(tf.cast(rows, tf.int64), dtype=tf.int64)[:, None] * vocab_size
    where = tf.reshape(flat, [-1, 1])
    dense = tf.fill(tf.cast([rows * vocab_size], tf.int64), MISSING_LOGIT)
    dense = tf.tensor_scatter_nd_update(dense, where, tf.reshape(values, [-1]))
    return tf.reshape(dense, tf.concat([lead, [vocab_size]], 0))


def uniform_layer_map(n_student: int, n_teacher: int) -> list[int]:
    """Teacher layer for each student layer, spread evenly and ending at the top.

    Example:
        >>> uniform_layer_map(2, 4)
        [1, 3]
    """
    if n_student < 1 or n_teacher < 1:
        raise TfcompressError(
            f"layer counts must be positive, got n_student={n_student}, n_teacher={n_teacher}"
        )
    return [math.ceil((i + 1) * n_teacher / n_student) - 1 for i in range(n_student)]


SCHEDULES = ("constant", "linear", "cosine")


def schedule_value(kind: str, start: float, end: float, progress: float) -> float:
    """Value of a schedule from ``start`` to ``end`` at ``progress`` in [0, 1] (clipped)."""
    progress = min(max(float(progress), 0.0), 1.0)
    if kind == "constant":
        return float(start)
    if kind == "linear":
        return float(start + (end - start) * progress)
    if kind == "cosine":
        return float(end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * progress)))
    raise TfcompressError(f"schedule kind must be one of {SCHEDULES}, got {kind!r}")


def check_alpha(alpha, name: str = "alpha") -> float:
    """``alpha`` (the weight of the hard loss, called ``name``) as a float in [0, 1]."""
    if not isinstance(alpha, int | float) or not 0.0 <= alpha <= 1.0:
        raise TfcompressError(f"{name} must be a number in [0, 1] (weight of the hard loss), "
                              f"got {alpha!r}")
    return float(alpha)


def check_labels_weight(value, name: str = "labels_weight") -> tuple[float, float | None]:
    """``(start, end)`` of a labels weight given as a number in [0, 1] (constant: ``end`` is
    None) or as a pair of them (linear from ``start`` to ``end`` over a ``fit``).

    Example:
        >>> check_labels_weight((0.3, 1)), check_labels_weight(0.7)
        ((0.3, 1.0), (0.7, None))
    """
    if isinstance(value, tuple | list):
        if len(value) != 2:
            raise TfcompressError(f"{name} must be a number in [0, 1] or a pair (start, end) "
                                  f"of them, got {value!r}")
        return check_alpha(value[0], f"{name}'s start"), check_alpha(value[1], f"{name}'s end")
    return check_alpha(value, name), None


def labels_weight_text(value) -> str:
    """A labels weight as people read it: ``0.7`` or ``0.3 -> 1`` (linear over the fit).

    Example:
        >>> labels_weight_text((0.3, 1.0))
        '0.3 -> 1'
    """
    start, end = check_labels_weight(value)
    return f"{start:g}" if end is None else f"{start:g} -> {end:g}"


def check_temperature(temperature) -> float:
    if not isinstance(temperature, int | float) or not temperature > 0:
        raise TfcompressError(f"temperature must be a number > 0, got {temperature!r}")
    return float(temperature)


def check_divergence(name, beta) -> tuple[str, float]:
    if name not in DIVERGENCES:
        raise TfcompressError(f"divergence must be one of {sorted(DIVERGENCES)}, got {name!r}")
    if not isinstance(beta, int | float) or not 0.0 < beta < 1.0:
        raise TfcompressError(f"beta must be a number in (0, 1) (the JSD mixture weight), "
                              f"got {beta!r}")
    return name, float(beta)


__all__ = [
    "DIVERGENCES", "FEATURE_LOSS_FUNCTIONS", "SCHEDULES", "densify_top_k", "divergence",
    "feature_cosine", "feature_mse", "forward_kl",
    "hard_cross_entropy", "jensen_shannon", "kd_loss", "masked_mean", "reverse_kl",
    "schedule_value", "soft_cross_entropy", "uniform_layer_map",
]
