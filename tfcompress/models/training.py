"""Train and cache language models with plain ``compile``/``fit``.

Example:
    >>> model = build_gpt("student", vocab_size=corpus.vocab_size)
    >>> train_lm(model, corpus.dataset("train", 128, 32, repeat=True), steps=200)
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import keras

from tfcompress.core.losses import lm_loss
from tfcompress.errors import TfcompressError


def lm_optimizer(steps: int | None = None, learning_rate: float = 1e-3, warmup: float = 0.05):
    """The training recipe every model here uses: AdamW (weight decay 0.01, clipnorm 1) with,
    when ``steps`` is given, a linear warm-up over ``warmup`` of them then cosine decay to 10 %.

    Example:
        >>> model.compile(optimizer=lm_optimizer(200), loss=lm_loss())
    """
    lr = learning_rate
    if steps:
        lr = keras.optimizers.schedules.CosineDecay(
            0.0, steps, alpha=0.1, warmup_target=learning_rate,
            warmup_steps=max(int(steps * warmup), 1),
        )
    return keras.optimizers.AdamW(lr, weight_decay=0.01, clipnorm=1.0)


def compile_lm(model, learning_rate: float = 1e-3, steps: int | None = None, **kwargs):
    """Compile with `lm_optimizer` and next-token accuracy."""
    model.compile(
        optimizer=lm_optimizer(steps, learning_rate),
        loss=lm_loss(),
        weighted_metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
        **kwargs,
    )
    return model


def train_lm(model, dataset, steps: int, learning_rate: float = 1e-3, verbose: int | str = 1,
             callbacks=None, validation_data=None):
    """Compile ``model`` and train it for ``steps`` batches of a repeating ``dataset``."""
    if steps < 1:
        raise TfcompressError(f"steps must be a positive integer, got {steps}")
    compile_lm(model, learning_rate, steps)
    # shuffle=False: the dataset shuffles itself (Keras warns on every call otherwise)
    return model.fit(dataset, steps_per_epoch=steps, epochs=1, verbose=verbose, shuffle=False,
                     callbacks=callbacks, validation_data=validation_data)


def cache_dir() -> Path:
    """Where trained models are cached: ``$TFCOMPRESS_CACHE`` or ``~/.cache/tfcompress``."""
    return Path(os.environ.get("TFCOMPRESS_CACHE", Path.home() / ".cache" / "tfcompress"))


def cache_key(**fields) -> str:
    """A short stable hash of the settings that determine a trained model."""
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:12]
