"""On-policy distillation (GKD, Agarwal et al. 2024): the student continues the prompt prefix of
a window with its own samples and learns the teacher's distributions on those tokens, the
sequences it will meet when it generates instead of the ones the corpus holds.

Pure functions on token-id tensors; `Distiller(on_policy=...)` calls them in its train step.

Example:
    >>> ids = sample_continuations(student, x, prompt_length=64, seed=[0, 7])
    >>> targets, mask = continuation_targets(ids, prompt_length=64)
"""

from __future__ import annotations

from collections.abc import Callable

import tensorflow as tf

# fold_in index of the draw that decides whether a batch is replaced (sampling uses t >= 1)
CHOICE = 0


def sample_continuations(logits_fn: Callable, tokens, prompt_length: int, seed,
                         temperature: float = 1.0):
    """``tokens`` (batch, seq) with every position from ``prompt_length`` on replaced, left to
    right, by a sample of ``logits_fn``'s next-token distribution.

    Position ``t`` is drawn from ``softmax(logits_fn(ids)[:, t - 1] / temperature)`` with the
    stateless seed ``fold_in(seed, t)``, where ``ids`` already holds the samples before ``t``:
    the same ``seed`` gives the same ids. ``logits_fn`` maps (batch, seq) int32 ids to
    (batch, seq, vocab) logits and must be causal (position ``t - 1`` reads ids up to it),
    so the window keeps its shape and the positions not yet drawn are never read.

    Example:
        >>> table = np.eye(4)[[1, 2, 3, 0]] * 50.0          # token k is followed by k + 1
        >>> sample_continuations(lambda ids: tf.gather(table, ids), [[2, 0, 0]], 1, [0, 0])
        <tf.Tensor: ... numpy=array([[2, 3, 0]], dtype=int32)>
    """
    ids = tf.cast(tf.convert_to_tensor(tokens), tf.int32)
    seed = tf.cast(tf.convert_to_tensor(seed), tf.int32)
    seq = tf.shape(ids)[1]

    def draw(t, ids):
        logits = tf.gather(tf.cast(logits_fn(ids), tf.float32), t - 1, axis=1)
        new = tf.random.stateless_categorical(
            logits / temperature, 1, seed=tf.random.experimental.stateless_fold_in(seed, t),
            dtype=tf.int32)
        column = tf.one_hot(t, seq, dtype=tf.int32)[None, :]
        return t + 1, ids * (1 - column) + new * column

    _, ids = tf.while_loop(lambda t, _: t < seq, draw,
                           [tf.cast(prompt_length, tf.int32), ids])
    return tf.stop_gradient(ids)


def continuation_targets(ids, prompt_length: int, mask=None):
    """``(targets, mask)`` for a window made by `sample_continuations`.

    Targets are the next ids; the mask keeps the positions ``prompt_length - 1 .. seq - 2``,
    those that predict a sampled id (GKD's loss over the generated tokens), in rows whose
    ``mask`` (the batch's own, when given) keeps the prompt's last position.

    Example:
        >>> continuation_targets([[5, 6, 7, 8]], 2)[1]
        <tf.Tensor: ... numpy=array([[0., 1., 1., 0.]], dtype=float32)>
    """
    ids = tf.cast(tf.convert_to_tensor(ids), tf.int32)
    targets = tf.concat([ids[:, 1:], ids[:, -1:]], axis=1)
    positions = tf.range(tf.shape(ids)[1])
    scored = (positions >= prompt_length - 1) & (positions < tf.shape(ids)[1] - 1)
    keep = tf.ones_like(ids[:, :1], tf.float32) if mask is None else tf.cast(
        tf.convert_to_tensor(mask)[:, prompt_length - 1:prompt_length], tf.float32)
    return targets, tf.cast(scored, tf.float32)[None, :] * keep


def replaced(probability: float, seed) -> tf.Tensor:
    """Whether a batch is replaced by the student's samples: a stateless draw below
    ``probability`` with seed ``fold_in(seed, CHOICE)``.

    Example:
        >>> bool(replaced(1.0, [0, 3])), bool(replaced(0.0, [0, 3]))
        (True, False)
    """
    seed = tf.random.experimental.stateless_fold_in(tf.cast(seed, tf.int32), CHOICE)
    return tf.random.stateless_uniform([], seed=seed) < probability


__all__ = ["continuation_targets", "replaced", "sample_continuations"]
