"""Keras (3 or tf.keras) model -> verified ``.tflite`` file.

Example:
    >>> result = export_tflite(model, "runs/model.tflite", mode="float16", seq_len=128)
    >>> result.max_abs_error, result.agreement
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from tfcompress.core.layers import is_keras3_model, is_tf_keras_model
from tfcompress.errors import TfcompressError, VerificationError
from tfcompress.evaluate.latency import keras_forward
from tfcompress.evaluate.size import file_sizes
from tfcompress.export.runner import TFLiteRunner


def _float32(converter) -> None:
    del converter  # the converter's default is float32


def _float16(converter) -> None:
    import tensorflow as tf

    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.target_spec.supported_types = [tf.float16]


# mode -> (converter set-up, max |logit error| allowed, next-token agreement required)
MODES: dict[str, tuple[Callable, float, float]] = {
    "float32": (_float32, 1e-3, 0.99),
    "float16": (_float16, 5e-2, 0.95),
}


@dataclass
class ExportResult:
    """Where the file went, its size and how well it agrees with the Keras model."""

    path: str
    mode: str
    bytes: int
    gzip_bytes: int
    max_abs_error: float | None
    agreement: float | None

    def to_dict(self) -> dict:
        return asdict(self)


def _is_keras_model(model) -> bool:
    return is_keras3_model(model) or is_tf_keras_model(model)


def model_seq_len(model, seq_len: int | None) -> int:
    """The fixed sequence length to export with: given, or the model's own input length."""
    if seq_len is not None:
        if seq_len < 1:
            raise TfcompressError(f"seq_len must be a positive integer, got {seq_len}")
        return int(seq_len)
    shape = model.inputs[0].shape if getattr(model, "inputs", None) else None
    if shape is None or len(shape) < 2 or shape[1] is None:
        raise TfcompressError(
            "seq_len is needed: the model's input length is not fixed; pass seq_len=<int>"
        )
    return int(shape[1])


def to_saved_model(model, directory: str | Path, seq_len: int) -> None:
    """Write an inference SavedModel with signature ``token_ids[None, seq_len] -> logits``."""
    import keras
    import tensorflow as tf

    spec = tf.TensorSpec([None, seq_len], tf.int32, name="token_ids")
    if isinstance(model, keras.Model):
        # Keras 3 variables are only tracked by Keras's own export archive.
        model.export(str(directory), format="tf_saved_model", input_signature=[spec],
                     verbose=False)
        return
    fn = tf.function(lambda token_ids: model(token_ids, training=False), input_signature=[spec])
    tf.saved_model.save(model, str(directory), signatures={"serving_default": fn})


def convert(model, seq_len: int, mode: str = "float32", configure: Callable | None = None):
    """Flatbuffer bytes of ``model`` converted in ``mode``; ``configure`` may adjust more."""
    import tensorflow as tf

    with tempfile.TemporaryDirectory() as tmp:
        to_saved_model(model, tmp, seq_len)
        converter = tf.lite.TFLiteConverter.from_saved_model(tmp)
        MODES[mode][0](converter)
        if configure is not None:
            configure(converter)
        return converter.convert()


def verify(model, runner: TFLiteRunner, sample: np.ndarray) -> tuple[float, float]:
    """Max absolute output difference and argmax agreement of TFLite vs Keras on ``sample``."""
    expected = keras_forward(model)(sample)
    got = runner.predict(sample)
    return float(np.abs(expected - got).max()), float(
        (expected.argmax(-1) == got.argmax(-1)).mean()
    )


def export_tflite(
    model,
    path: str | Path,
    mode: str = "float32",
    seq_len: int | None = None,
    sample: np.ndarray | None = None,
    verify_output: bool = True,
    max_abs_error: float | None = None,
    min_agreement: float | None = None,
) -> ExportResult:
    """Convert ``model`` to ``.tflite`` at ``path`` and check it against Keras.

    Verification runs the interpreter on ``sample`` token ids (default: 4 random sequences)
    and raises `VerificationError` with the figures when the largest output difference
    exceeds ``max_abs_error`` or next-token agreement falls below ``min_agreement``
    (defaults depend on ``mode``).
    """
    if mode not in MODES:
        raise TfcompressError(f"mode must be one of {sorted(MODES)}, got {mode!r}")
    if not _is_keras_model(model):
        raise TfcompressError(
            "model must be a Keras model (keras.Model or tf_keras.Model), "
            f"got {type(model).__name__}"
        )
    seq_len = model_seq_len(model, seq_len)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(convert(model, seq_len, mode))
    sizes = file_sizes(path)
    err = agreement = None
    if verify_output:
        if sample is None:
            vocab = int(model.outputs[0].shape[-1])
            sample = np.random.default_rng(0).integers(0, vocab, (4, seq_len)).astype(np.int32)
        err, agreement = verify(model, TFLiteRunner(path), np.asarray(sample, dtype=np.int32))
        tol, need = MODES[mode][1:]
        tol = tol if max_abs_error is None else max_abs_error
        need = need if min_agreement is None else min_agreement
        if err > tol or agreement < need:
            raise VerificationError(
                f"{mode} export disagrees with the Keras model: max |error| {err:.4g} "
                f"(allowed {tol:.4g}), next-token agreement {agreement:.2%} (needed {need:.0%})"
            )
    return ExportResult(str(path), mode, sizes["bytes"], sizes["gzip_bytes"], err, agreement)
