"""Run a ``.tflite`` model with the LiteRT interpreter (``ai_edge_litert``).

Example:
    >>> runner = TFLiteRunner("model.tflite", num_threads=2)
    >>> logits = runner.predict(token_ids)          # any batch size
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tfcompress.evaluate.latency import time_callable


class TFLiteRunner:
    """A LiteRT interpreter that accepts any batch size and (de)quantizes int8 I/O."""

    def __init__(self, model: str | Path | bytes, num_threads: int | None = None):
        from ai_edge_litert.interpreter import Interpreter

        content = model if isinstance(model, bytes) else Path(model).read_bytes()
        self.model_content = content
        self.interpreter = Interpreter(model_content=content, num_threads=num_threads)
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]
        self._batch = None

    @property
    def seq_len(self) -> int:
        return int(self.input["shape"][1])

    def _resize(self, batch: int) -> None:
        if self._batch != batch:
            self.interpreter.resize_tensor_input(self.input["index"], [batch, self.seq_len])
            self.interpreter.allocate_tensors()
            self.input = self.interpreter.get_input_details()[0]
            self.output = self.interpreter.get_output_details()[0]
            self._batch = batch

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Float outputs for inputs ``x`` of shape ``(batch, seq_len)``."""
        x = np.asarray(x)
        self._resize(x.shape[0])
        scale, zero = self.input["quantization"]
        if self.input["dtype"] in (np.int8, np.uint8) and scale:
            x = np.round(x / scale + zero)
        self.interpreter.set_tensor(self.input["index"], x.astype(self.input["dtype"]))
        self.interpreter.invoke()
        out = self.interpreter.get_tensor(self.output["index"])
        scale, zero = self.output["quantization"]
        if self.output["dtype"] in (np.int8, np.int16, np.uint8) and scale:
            out = (out.astype(np.float32) - zero) * scale
        return np.asarray(out, dtype=np.float32)

    def latency(self, batch_size: int = 1, warmup: int = 3, repeats: int = 10, seed: int = 0):
        """Milliseconds per invoke on random token ids (vocabulary from the output width)."""
        vocab = int(self.output["shape"][-1])
        x = np.random.default_rng(seed).integers(0, vocab, (batch_size, self.seq_len))
        stats = time_callable(lambda: self.predict(x), warmup, repeats)
        stats["tokens_per_s"] = batch_size * self.seq_len / (stats["median_ms"] / 1e3)
        return stats
