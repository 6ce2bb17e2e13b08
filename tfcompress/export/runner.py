"""Run a ``.tflite`` model with the LiteRT interpreter (``ai_edge_litert``).

Example:
    >>> runner = TFLiteRunner("model.tflite", num_threads=2)
    >>> logits = runner.predict(token_ids)          # any batch size
    >>> logits = runner.predict(token_ids, padding_mask=mask)   # a file exposing its mask
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tfcompress.core.latency import time_callable
from tfcompress.core.signature import MAIN_INPUTS
from tfcompress.core.validation import check_input_file, reading
from tfcompress.errors import TfcompressError

_QUANTIZED = (np.int8, np.uint8, np.int16)


def _input_name(tensor_name: str) -> str:
    """``serving_default_padding_mask:0`` -> ``padding_mask`` (the SavedModel argument)."""
    return tensor_name.removeprefix("serving_default_").split(":")[0]


class TFLiteRunner:
    """A LiteRT interpreter that accepts any batch size and (de)quantizes int8/int16 I/O.

    A model exported with a fixed batch (the default, batch 1) runs a larger batch one row
    at a time; one exported with a dynamic batch is resized instead. A file whose auxiliary
    inputs are exposed (``padding_mask``) gets ones there unless `predict` is given them.
    ``preserve_all_tensors`` keeps every intermediate tensor readable (for `diagnose`).
    """

    def __init__(self, model: str | Path | bytes, num_threads: int | None = None,
                 preserve_all_tensors: bool = False):
        from ai_edge_litert.interpreter import Interpreter

        if isinstance(model, bytes):
            content, name = model, "<model bytes>"
        else:
            name = check_input_file(model, "model")
            content = name.read_bytes()
        with reading(name, "a .tflite model (truncated, or not a TFLite flatbuffer?)"):
            self.interpreter = Interpreter(
                model_content=content, num_threads=num_threads,
                experimental_preserve_all_tensors=preserve_all_tensors)
            self.interpreter.allocate_tensors()
        self._details()
        signature = self.input.get("shape_signature", self.input["shape"])
        self.fixed_batch = int(signature[0]) if int(signature[0]) > 0 else None
        self._batch = int(self.input["shape"][0])

    def _details(self) -> None:
        """``inputs`` by name, the main one (token ids or features) first; ``input`` is it."""
        details = {_input_name(d["name"]): d for d in self.interpreter.get_input_details()}
        main = next((n for n in MAIN_INPUTS if n in details), next(iter(details)))
        self.inputs = {main: details.pop(main), **details}
        self.input = self.inputs[main]
        self.output = self.interpreter.get_output_details()[0]

    @property
    def auxiliary(self) -> list[str]:
        """The names of the inputs after the main one (e.g. ``["padding_mask"]``)."""
        return list(self.inputs)[1:]

    @property
    def seq_len(self) -> int:
        return int(self.input["shape"][1])

    @property
    def vocab_size(self) -> int:
        return int(self.output["shape"][-1])

    def _resize(self, batch: int) -> None:
        if self._batch != batch:
            for d in self.inputs.values():
                self.interpreter.resize_tensor_input(d["index"], [batch, *d["shape"][1:]])
            self.interpreter.allocate_tensors()
            self._details()
            self._batch = batch

    def _invoke(self, x: np.ndarray, auxiliary: dict) -> np.ndarray:
        self._resize(x.shape[0])
        scale, zero = self.input["quantization"]
        if self.input["dtype"] in _QUANTIZED and scale:
            info = np.iinfo(self.input["dtype"])
            x = np.clip(np.round(x / scale + zero), info.min, info.max)
        self.interpreter.set_tensor(self.input["index"], x.astype(self.input["dtype"]))
        for name in self.auxiliary:
            d = self.inputs[name]
            value = auxiliary.get(name, np.ones(d["shape"], d["dtype"]))
            self.interpreter.set_tensor(d["index"], np.asarray(value).astype(d["dtype"]))
        self.interpreter.invoke()
        out = self.interpreter.get_tensor(self.output["index"])
        scale, zero = self.output["quantization"]
        if self.output["dtype"] in _QUANTIZED and scale:
            out = (out.astype(np.float32) - zero) * scale
        return np.asarray(out, dtype=np.float32)

    def predict(self, x: np.ndarray, **auxiliary: np.ndarray) -> np.ndarray:
        """Float outputs for inputs ``x`` of shape ``(batch, seq_len, ...)``; ``auxiliary``
        inputs the file exposes (``padding_mask=``, shape ``(batch, seq_len)``) default to
        ones."""
        unknown = sorted(set(auxiliary) - set(self.auxiliary))
        if unknown:
            raise TfcompressError(f"predict got inputs {unknown} that the file does not take; "
                                  f"its inputs after {next(iter(self.inputs))!r}: "
                                  f"{self.auxiliary or 'none'}")
        x = np.asarray(x)
        step = self.fixed_batch
        if step is None or len(x) == step:
            return self._invoke(x, auxiliary)
        if len(x) % step:
            raise ValueError(f"batch {len(x)} is not a multiple of the exported batch {step}")
        return np.concatenate([
            self._invoke(x[i:i + step], {k: np.asarray(v)[i:i + step]
                                         for k, v in auxiliary.items()})
            for i in range(0, len(x), step)])

    def sample_input(self, batch_size: int = 1, seed: int = 0) -> np.ndarray:
        """Random inputs: token ids below the output width for integer inputs, else normal."""
        rng = np.random.default_rng(seed)
        shape = (batch_size, *self.input["shape"][1:])
        if np.issubdtype(self.input["dtype"], np.integer) and not self.input["quantization"][0]:
            return rng.integers(0, self.vocab_size, shape).astype(np.int32)
        return rng.standard_normal(shape).astype(np.float32)

    def latency(self, batch_size: int = 1, warmup: int = 3, repeats: int = 10, seed: int = 0):
        """Milliseconds per forward pass on random inputs, plus tokens per second."""
        x = self.sample_input(batch_size, seed)
        stats = time_callable(lambda: self.predict(x), warmup, repeats)
        stats["tokens_per_s"] = batch_size * self.seq_len / (stats["median_ms"] / 1e3)
        return stats
