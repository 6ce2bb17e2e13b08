"""The token-by-token decoding loop over any ids -> logits function (a ``.tflite`` runner, a Keras
model, a bundle's runner): in core so export's generators and the models' deprecated
``generate`` share it. `tfcompress.generate` (package ``export``) is the public name.

Example:
    >>> table = np.eye(4)[[1, 2, 3, 0]]          # token t -> logits peaking at t + 1 (mod 4)
    >>> generate(lambda ids: table[ids], [0], max_new_tokens=5).tolist()
    [0, 1, 2, 3, 0, 1]
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from tfcompress.errors import TfcompressError


def next_token(logits: np.ndarray, top_k: int = 1, temperature: float = 1.0,
               rng: np.random.Generator | None = None) -> int:
    """Greedy (``top_k=1``) or top-k sampling at ``temperature`` from one logits vector."""
    logits = np.asarray(logits, dtype=np.float64)
    if top_k == 1:
        return int(np.argmax(logits))
    k = min(top_k, logits.shape[-1])
    top = np.argpartition(-logits, k - 1)[:k]
    scaled = logits[top] / temperature
    probs = np.exp(scaled - scaled.max())
    rng = rng or np.random.default_rng()
    return int(top[rng.choice(k, p=probs / probs.sum())])


def generate(
    predict: Callable[[np.ndarray], np.ndarray],
    prompt_ids: Sequence[int],
    max_new_tokens: int = 32,
    seq_len: int | None = None,
    top_k: int = 1,
    temperature: float = 1.0,
    seed: int = 0,
    vocab_size: int | None = None,
    stop_ids: Sequence[int] = (),
) -> np.ndarray:
    """Token ids of ``prompt_ids`` followed by up to ``max_new_tokens`` decoded ones (decoding
    stops after a token in ``stop_ids``).

    ``predict`` maps ``(1, n)`` int32 ids to ``(1, n, vocab)`` logits. With ``seq_len`` (a
    fixed-shape ``.tflite`` model) the context is right-padded to that length and slides past
    it; without it the model sees the exact context each step.

    Example:
        >>> new = generate(runner.predict, tokenizer.encode("It is"), 20, seq_len=128)[2:]
    """
    prompt = np.asarray(prompt_ids).reshape(-1)
    if prompt.size == 0:
        raise TfcompressError("prompt_ids is empty: give at least one token")
    if not np.issubdtype(prompt.dtype, np.integer) or prompt.min() < 0 or (
        vocab_size is not None and prompt.max() >= vocab_size
    ):
        raise TfcompressError(f"prompt_ids must be token ids in [0, {vocab_size}), got {prompt}")
    if max_new_tokens < 0 or (seq_len is not None and seq_len < 1) or top_k < 1 or (
            temperature <= 0):
        raise TfcompressError(
            "max_new_tokens must be >= 0, seq_len >= 1, top_k >= 1 and temperature > 0; got "
            f"{max_new_tokens}, {seq_len}, {top_k}, {temperature}"
        )
    rng = np.random.default_rng(seed)
    tokens = [int(t) for t in prompt]
    for _ in range(max_new_tokens):
        context = tokens if seq_len is None else tokens[-seq_len:]
        window = np.zeros((1, seq_len or len(context)), dtype=np.int32)
        window[0, : len(context)] = context
        logits = np.asarray(predict(window))[0, len(context) - 1]
        tokens.append(next_token(logits, top_k, temperature, rng))
        if tokens[-1] in stop_ids:
            break
    return np.asarray(tokens, dtype=np.int32)
