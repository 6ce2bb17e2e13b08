"""Text generation with any next-token-logits function: a ``.tflite`` runner or Keras.

The exported signature maps a fixed-length window ``(1, seq_len)`` of token ids to logits
``(1, seq_len, vocab)``, where position ``t`` holds the next-token logits after token ``t``.
Decoding puts the context at the start of the window (right-padded); a causal model never
looks at the padding, so the logits at the last real position are exact. Past ``seq_len``
tokens the window slides.

Example:
    >>> runner = TFLiteRunner("student.tflite")
    >>> generate_text(runner, tokenizer, "It is a truth", max_new_tokens=40)
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from tfcompress.core.generation import generate, next_token
from tfcompress.core.validation import check_seq_len
from tfcompress.errors import TfcompressError


def _predictor(model, seq_len: int | None) -> tuple[Callable, int, int]:
    """``(predict, seq_len, vocab)`` for a runner, a ``.tflite`` path or a Keras model."""
    from tfcompress.export.runner import TFLiteRunner

    if isinstance(model, str | Path):
        model = TFLiteRunner(model)
    if isinstance(model, TFLiteRunner):
        return model.predict, model.seq_len, model.vocab_size
    from tfcompress.core.latency import keras_forward
    from tfcompress.core.layers import is_keras3_model
    from tfcompress.core.signature import model_seq_len, output_width, signature

    check_seq_len(model, seq_len)
    sig = signature(model) if is_keras3_model(model) else None
    if sig is not None and not np.issubdtype(np.dtype(sig.dtype), np.integer):
        raise TfcompressError(
            f"generate_text needs a language model taking token ids; model {model.name!r} "
            f"({type(model).__name__}) takes {sig.dtype} inputs of shape {sig.shape}: for a "
            "classifier use evaluate(model, (x, y), task='classifier') or export_tflite")
    return keras_forward(model), model_seq_len(model, seq_len), output_width(model)


def generate_text(
    model, tokenizer, prompt: str, max_new_tokens: int = 64, top_k: int = 1,
    temperature: float = 1.0, seed: int = 0, seq_len: int | None = None,
) -> str:
    """Decode ``prompt`` + ``max_new_tokens`` with a `TFLiteRunner`, ``.tflite`` path or Keras
    model (give ``seq_len`` for a Keras model whose input length is not fixed)."""
    if not isinstance(prompt, str):
        raise TfcompressError(f"prompt must be a string, got {type(prompt).__name__}")
    predict, length, vocab = _predictor(model, seq_len)
    ids = generate(predict, tokenizer.encode(prompt), max_new_tokens, length, top_k,
                   temperature, seed, vocab)
    return tokenizer.decode(ids.tolist())


__all__ = ["generate", "generate_text", "next_token"]
