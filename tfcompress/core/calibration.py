"""The calibration engine shared by every data-aware method: block by block, statistics
streamed, each block compressed before the next one sees its outputs.

`calibrate` finds the model's repeated blocks (`find_blocks`), runs the model up to the first
block once, then for each block: runs it while the selected layers' inputs are reduced into
`InputStats` (layers reading the same tensor, such as q/k/v, share one), lets the method
``compress`` the block's layers, and runs it again with the compressed weights to make the
next block's inputs (``sequential=False`` keeps the dense outputs instead). Selected layers
outside every block are calibrated last, in one pass of the whole model. Peak memory is one
block's activations plus its statistics. With ``folder`` each finished block (weights,
results) and the next block's inputs are saved, and a rerun resumes after the last one.

Example:
    >>> def compress(layers, stats):                  # one block's [(path, layer)], {path: stats}
    ...     return {p: prune_layer(la, stats[p]) for p, la in layers}
    >>> masks = calibrate(model, layers, calibration_ids, compress, needs=("xtx",))
    >>> inputs = capture_inputs(model, [layer], calibration_ids)   # {path: (n, d_in) array}
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import pickle
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from tfcompress.core.blocks import (
    BlockGraph,
    BlockPlan,
    cut_graph,
    find_blocks,
    graph_of,
    unchanged_graph,
)
from tfcompress.core.files import atomic_path
from tfcompress.core.layers import kernel_of, layer_paths, matrix_shape
from tfcompress.core.progress import progress_bar
from tfcompress.core.signature import model_inputs
from tfcompress.core.stats import InputStats
from tfcompress.core.validation import check_calibration
from tfcompress.errors import TfcompressError


def calibration_batches(data, model=None, arg: str = "calibration",
                        batch_size: int = 8) -> list:
    """Model-input batches from an array (split into ``batch_size`` rows), a dict, or an
    iterable of them (or of ``(inputs, targets[, weights])`` tuples, whose inputs are used);
    read once, so generators work. Checked (`check_calibration`, input shape) against
    ``model`` when given.

    Example:
        >>> [b.shape for b in calibration_batches(np.zeros((20, 16), "int32"))]
        [(8, 16), (8, 16), (4, 16)]
    """
    if data is None:
        raise TfcompressError(f"{arg} is required for this method: give calibration inputs "
                              "(token ids or batches)")
    if model is not None:  # token ids are checked against the model's vocabulary
        batches = check_calibration(model, data, arg)
    else:
        items = [data] if isinstance(data, np.ndarray | dict) else list(data)
        batches = [b[0] if isinstance(b, tuple | list) else b for b in items]
    if not batches or all(not isinstance(b, dict) and np.size(b) == 0 for b in batches):
        raise TfcompressError(f"{arg} is empty: give at least one batch of inputs")
    specs = getattr(model, "inputs", None) or []
    if len(specs) == 1:
        expected = tuple(specs[0].shape)
        for b in batches:
            shape = np.shape(b) if not isinstance(b, dict) else expected
            if len(shape) != len(expected) or any(
                    e is not None and s != e for s, e in zip(shape, expected, strict=True)):
                raise TfcompressError(
                    f"{arg} batches must have the model's input shape {expected}, got {shape}")
    if isinstance(data, np.ndarray):
        return [data[i:i + batch_size] for i in range(0, len(data), batch_size)]
    return batches


def capture_inputs(model, layers: Sequence, data, max_rows: int | None = None) -> dict:
    """Record the first input of each of ``layers`` while ``model`` runs eagerly on ``data``.

    ``data`` is what `calibration_batches` takes (arrays, dicts for models with named inputs
    such as KerasHub backbones, or iterables of them). Keeps every row: methods reduce
    inputs as they stream with `tfcompress.core.calibrate` instead. Returns
    ``{path: array (rows, d_in)}``, rows in the order of `kernel_matrix`'s rows.
    """
    batches = calibration_batches(data, model)
    paths = layer_paths(model)
    store: dict[str, list[np.ndarray]] = {paths[id(la)]: [] for la in layers}
    for layer in layers:
        path, original = paths[id(layer)], layer.call
        width = matrix_shape(layer)[0] if kernel_of(layer) is not None else -1

        def recording(*args, _path=path, _call=original, _width=width, **kwargs):
            store[_path].append(np.asarray(args[0]).reshape(-1, _width))
            return _call(*args, **kwargs)

        layer.call = recording
    try:
        for batch in batches:
            model(model_inputs(model, batch if isinstance(batch, dict) else np.asarray(batch)),
                  training=False)
    finally:
        for layer in layers:
            del layer.call
    out = {p: np.concatenate(v) for p, v in store.items() if v}
    missing = [p for p in store if p not in out]
    if missing:
        raise TfcompressError(f"layers {missing} were never called on the calibration data")
    return {p: v[:max_rows] if max_rows else v for p, v in out.items()}


class _Stop(Exception):
    """Raised by a hook once it has what it needs, to skip the rest of a forward pass."""


class _Recorder:
    """Streams the first input of chosen layers into `InputStats` while they are patched."""

    def __init__(self, layers, paths: dict[int, str], needs, max_rows):
        self.layers, self.paths = list(layers), paths
        self.stats = {paths[id(la)]: InputStats(matrix_shape(la)[0], needs, max_rows)
                      for la in self.layers}
        self.order: list[str] = []
        self.follows: dict[str, str] = {}  # path -> path of the layer whose statistic it shares
        self._seen: list = []
        self._first = True

    def new_batch(self) -> None:
        if self.order:
            self._first = False
        self._seen = []

    def _record(self, path: str, x) -> None:
        if path in self.follows:
            return
        if self._first:
            if path not in self.order:
                self.order.append(path)
            leader = next((p for t, p in self._seen if t is x), None)
            if leader is not None and leader != path:
                self.follows[path] = leader
                self.stats[path] = self.stats[leader]
                self.stats[leader].readers += 1
                return
            self._seen.append((x, path))
        self.stats[path].update(np.asarray(x))

    def __enter__(self):
        for layer in self.layers:
            path, original = self.paths[id(layer)], layer.call

            def hooked(*args, _path=path, _call=original, **kwargs):
                self._record(_path, args[0] if args else next(iter(kwargs.values())))
                return _call(*args, **kwargs)

            layer.call = hooked
        return self

    def __exit__(self, *exc):
        for layer in self.layers:
            del layer.call
        self._seen = []


def _model_input(model, batch):
    # auxiliary inputs (a KerasHub padding_mask) are filled in for plain token ids
    return model_inputs(model, batch if isinstance(batch, dict) else np.asarray(batch))


def _call(model, batch):
    return model(_model_input(model, batch), training=False)


def _run_block(sub, inputs: list[list], rec) -> list[list]:
    """Outputs of block model ``sub`` per batch (``inputs[j][i]``: input ``j`` of batch ``i``)."""
    import keras

    values = []
    for i in range(len(inputs[0])):
        if rec is not None:
            rec.new_batch()
        values.append(keras.tree.flatten(sub([x[i] for x in inputs], training=False)))
    return [list(v) for v in zip(*values, strict=True)]


def _host_inputs(model, host, batches) -> list:
    """What ``host`` receives for each batch when ``model`` runs (the batch itself when the
    host is the model's own graph); the rest of the forward pass is skipped."""
    if host is graph_of(model):
        return [_model_input(model, b) for b in batches]
    seen = []

    def hooked(inputs, *args, **kwargs):
        seen.append(inputs)
        raise _Stop

    host.call = hooked
    try:
        for batch in batches:
            try:
                _call(model, batch)
            except _Stop:
                pass
    finally:
        del host.call
    if len(seen) != len(batches):
        raise TfcompressError(f"the blocks' model {host.name!r} is not called by "
                              f"{model.name!r} once per batch")
    return seen


class _Folder:
    """Resume state under ``path``: ``manifest.json`` (run key, finished blocks), one
    ``block_NNNN.npz`` (weights) + ``.pkl`` (method results) per finished block, and
    ``inputs.npz`` (the next block's inputs). Each file is written whole, then renamed."""

    def __init__(self, path, key: str):
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

    def _write(self, name: str, write) -> None:
        with atomic_path(self.path / name) as tmp, open(tmp, "wb") as f:
            write(f)

    def save(self, index: int, layers, results: dict, inputs: list | None) -> None:
        weights = {f"w{i}": np.asarray(v.numpy()) for i, v in enumerate(_variables(layers))}
        self._write(f"block_{index:04d}.npz", lambda f: np.savez(f, **weights))
        self._write(f"block_{index:04d}.pkl", lambda f: pickle.dump(results, f))
        if inputs is not None:
            arrays = {f"t{j}_{i}": np.asarray(x) for j, per in enumerate(inputs)
                      for i, x in enumerate(per)}
            self._write("inputs.npz", lambda f: np.savez(f, n=len(inputs), **arrays))
        self.done = index + 1
        text = json.dumps({"key": self.key, "done": self.done}).encode()
        self._write("manifest.json", lambda f: f.write(text))

    def load(self, index: int, layers) -> dict:
        with np.load(self.path / f"block_{index:04d}.npz") as saved:
            for i, v in enumerate(_variables(layers)):
                v.assign(saved[f"w{i}"])
        with open(self.path / f"block_{index:04d}.pkl", "rb") as f:
            return pickle.load(f)

    def inputs(self, n_batches: int) -> list:
        with np.load(self.path / "inputs.npz") as saved:
            return [[saved[f"t{j}_{i}"] for i in range(n_batches)] for j in range(int(saved["n"]))]


def _variables(layers) -> list:
    seen, out = set(), []
    for layer in layers:
        for v in layer.weights:
            if id(v) not in seen:
                seen.add(id(v))
                out.append(v)
    return out


def run_key(config) -> str:
    """A method's settings as a resume key: its ``get_config()`` without ``resume_dir``."""
    return json.dumps({k: v for k, v in config.get_config().items() if k != "resume_dir"},
                      sort_keys=True, default=str)


def _run_key(key: str, plan: BlockPlan, paths, batches) -> str:
    shapes = [sorted((k, np.shape(v)) for k, v in b.items()) if isinstance(b, dict)
              else np.shape(b) for b in batches]
    digest = hashlib.sha256(np.ascontiguousarray(
        np.concatenate([np.ravel(np.asarray(v, np.float64)) for b in batches[:4] for v in
                        (b.values() if isinstance(b, dict) else [b])])).tobytes())
    text = f"{key}|{plan.names}|{sorted(paths)}|{shapes}|{digest.hexdigest()}"
    return hashlib.sha256(text.encode()).hexdigest()


def calibrate(model, layers: Sequence[tuple[str, object]], data,
              compress: Callable[[list, dict], dict], *, needs: Sequence[str] = ("xtx",),
              blocks=None, sequential: bool = True, max_rows: int | None = None,
              folder: str | os.PathLike | None = None, key: str = "",
              verbose: int = 1) -> dict:
    """Calibrate and compress ``layers`` of ``model`` block by block; returns the merged
    ``{path: result}`` of every ``compress(block_layers, {path: InputStats})`` call.

    ``compress`` gets one block's selected ``(path, layer)`` pairs in call order and their
    statistics (``needs``: see `InputStats`; ``max_rows`` rows at most per layer) and changes
    the weights in place. ``blocks``: None (found), a regex or layer names (`find_blocks`).
    ``folder``: save progress there and resume a run with the same ``key`` (the method's
    settings), model, layers and data. ``verbose`` shows a progress bar with an ETA.
    ``model``'s graph is left as it was (the per-block models are dropped afterwards).
    """
    with unchanged_graph(model):
        return _calibrate(model, layers, data, compress, needs=needs, blocks=blocks,
                          sequential=sequential, max_rows=max_rows, folder=folder, key=key,
                          verbose=verbose)


def _split_by_block(plan: BlockPlan, layers, blocks) -> tuple[BlockGraph | None, list, list]:
    """The graph cut into ``plan``'s blocks (None when it is no chain of blocks), the selected
    layers of each block, and those outside every block (calibrated last, in one pass)."""
    graph = None
    if plan.host is not None and plan.groups:
        try:
            graph = cut_graph(plan)
        except TfcompressError:
            if blocks is not None:  # the user's blocks must form a chain
                raise
            # found automatically in a graph that is no chain of blocks (a user's own model):
            # every layer is calibrated in one pass over the whole model instead
    by_block, inside = [], set()
    for group in plan.groups if graph else []:
        ids = {id(s) for m in group for s in m._flatten_layers(include_self=True, recursive=True)}
        by_block.append([la for _, la in layers if id(la) in ids])
        inside |= ids
    return graph, by_block, [la for _, la in layers if id(la) not in inside]


def _calibrate(model, layers, data, compress, *, needs, blocks, sequential, max_rows, folder,
               key, verbose) -> dict:
    import keras

    batches = calibration_batches(data, model)
    paths = [p for p, _ in layers]
    path_of = {id(la): p for p, la in layers}
    plan = find_blocks(model, blocks, [la for _, la in layers])
    graph, by_block, rest = _split_by_block(plan, layers, blocks)
    store = _Folder(folder, _run_key(key, plan, paths, batches)) if folder else None
    done = store.done if store else 0
    bar = progress_bar(len(by_block) + bool(rest), verbose=verbose, unit_name="block")
    results: dict = {}

    def step(targets, run) -> list | None:
        """Calibrate one unit: ``run(recorder)`` runs it and returns its outputs per batch."""
        with _Recorder(targets, path_of, needs, max_rows) as rec:
            outputs = run(rec)
        if targets:
            by_path = {path_of[id(la)]: la for la in targets}
            results.update(compress([(p, by_path[p]) for p in rec.order],
                                    {p: rec.stats[p] for p in rec.order}))
            if sequential and outputs is not None:
                outputs = None  # dropped first: one block's activations at a time
                outputs = run(None)
        return outputs

    def finish(index, group, targets, inputs) -> None:
        if store is not None:
            kept = {path_of[id(la)]: results[path_of[id(la)]] for la in targets
                    if path_of[id(la)] in results}
            store.save(index, group, kept, inputs)
        bar.add(1)

    if graph is not None and done < len(by_block):
        side = [id(t) for t in graph.side]
        live = dict(zip([id(t) for t in graph.inputs[done]], store.inputs(len(batches)),
                        strict=True)) if done else {}
        if any(i not in live for i in side):
            host_in = _host_inputs(model, plan.host, batches)
            outs = [keras.tree.flatten(graph.prefix(x, training=False)) for x in host_in]
            live |= {i: [o[j] for o in outs] for j, i in enumerate(side) if i not in live}
    for b, group in enumerate(plan.groups if graph else []):
        if b < done:
            results.update(store.load(b, group))
            bar.add(1)
            continue
        outs = graph.outputs[b]
        nxt = graph.inputs[b + 1] if b + 1 < len(by_block) else []
        ins = [live[id(t)] for t in graph.inputs[b]]
        produced = step(by_block[b], functools.partial(_run_block, graph.models[b], ins))
        live |= {id(t): produced[j] for j, t in enumerate(outs)}
        keep = set(side) | {id(t) for t in nxt}
        live = {i: v for i, v in live.items() if i in keep}  # one block's activations
        finish(b, group, by_block[b], [live[id(t)] for t in nxt] if nxt else None)
    if rest:
        index = len(by_block)
        if index < done:
            results.update(store.load(index, rest))
            bar.add(1)
        else:
            def run_model(rec):
                for batch in batches:
                    rec.new_batch()
                    _call(model, batch)

            step(rest, run_model)
            finish(index, rest, rest, None)
    missing = [p for p in paths if p not in results]
    if missing:
        raise TfcompressError(f"layers {missing} were never called on the calibration data")
    return results
