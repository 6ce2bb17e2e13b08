"""Progress of a block-by-block calibration kept in a folder, so an interrupted run resumes.

No pickle: ``manifest.json`` holds the run's key (model, layers, settings, data) and how many
blocks are finished; each finished block has ``block_NNNN.npz`` (its weights, in order),
``block_NNNN_results.npz`` (each layer's result as its `Compressor` saves it) with
``block_NNNN.json`` (the layers' paths), and ``inputs.npz`` holds the next block's inputs.
Every file is written whole, then renamed (`tfcompress.core.files.atomic_path`), and the
manifest last, so a crash leaves the previous finished block readable.

Example:
    >>> store = ResumeStore("runs/gptq-resume", key)
    >>> store.save(0, block_layers, {"block0_mlp_in": mask}, next_inputs, compressor)
    >>> ResumeStore("runs/gptq-resume", key).done
    1
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from tfcompress.core.compressor import Compressor
from tfcompress.core.files import atomic_path, write_atomic
from tfcompress.errors import TfcompressError


def _variables(layers) -> list:
    """Every variable of ``layers`` once, in a fixed order."""
    seen, out = set(), []
    for layer in layers:
        for v in layer.weights:
            if id(v) not in seen:
                seen.add(id(v))
                out.append(v)
    return out


class ResumeStore:
    """A calibration run's finished blocks under ``path`` for run ``key``; a folder holding
    another run's key is refused."""

    def __init__(self, path: str | os.PathLike, key: str):
        self.path, self.key = Path(path), key
        self.path.mkdir(parents=True, exist_ok=True)
        manifest = self.path / "manifest.json"
        self.done = 0
        if manifest.exists():
            saved = json.loads(manifest.read_text())
            if saved.get("key") != key:
                raise TfcompressError(
                    f"folder {str(self.path)!r} holds a different calibration run (other "
                    "model, layers, settings or data): give an empty folder")
            self.done = int(saved["done"])

    def _npz(self, name: str, arrays: dict) -> None:
        with atomic_path(self.path / name) as tmp, open(tmp, "wb") as f:
            np.savez(f, **arrays)

    def save(self, index: int, layers, results: dict, inputs: list | None,
             compressor: Compressor) -> None:
        """Block ``index`` finished: the weights of ``layers``, ``results`` ({path: result})
        and, when another block follows, its ``inputs`` (``inputs[j][i]``: input ``j`` of
        batch ``i``)."""
        stem = f"block_{index:04d}"
        self._npz(f"{stem}.npz", {f"w{i}": np.asarray(v.numpy())
                                  for i, v in enumerate(_variables(layers))})
        arrays = {f"r{k}_{name}": value for k, result in enumerate(results.values())
                  for name, value in compressor.save(result).items()}
        self._npz(f"{stem}_results.npz", arrays)
        write_atomic(self.path / f"{stem}.json", json.dumps({"paths": list(results)}))
        if inputs is not None:
            self._npz("inputs.npz", {"n": len(inputs), **{
                f"t{j}_{i}": np.asarray(x) for j, per in enumerate(inputs)
                for i, x in enumerate(per)}})
        self.done = index + 1
        write_atomic(self.path / "manifest.json", json.dumps({"key": self.key,
                                                              "done": self.done}))

    def load(self, index: int, layers, compressor: Compressor) -> dict:
        """Block ``index``'s weights assigned back to ``layers``; returns its results."""
        stem = f"block_{index:04d}"
        with np.load(self.path / f"{stem}.npz") as saved:
            for i, v in enumerate(_variables(layers)):
                v.assign(saved[f"w{i}"])
        paths = json.loads((self.path / f"{stem}.json").read_text())["paths"]
        with np.load(self.path / f"{stem}_results.npz") as saved:
            arrays = {name: saved[name] for name in saved.files}
        return {path: compressor.load({name.split("_", 1)[1]: value
                                       for name, value in arrays.items()
                                       if name.split("_", 1)[0] == f"r{k}"})
                for k, path in enumerate(paths)}

    def inputs(self, n_batches: int) -> list:
        """The next block's inputs saved with the last finished block."""
        with np.load(self.path / "inputs.npz") as saved:
            return [[saved[f"t{j}_{i}"] for i in range(n_batches)]
                    for j in range(int(saved["n"]))]
