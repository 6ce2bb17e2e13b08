"""The calibration engine shared by every data-aware method: block by block, statistics
streamed, each block compressed before the next one sees its outputs.

`calibrate` finds the model's repeated blocks (`find_blocks`), runs the model up to the first
block once, then for each block: runs it while the selected layers' inputs are reduced into
`InputStats` (layers reading the same tensor, such as q/k/v, share one), lets the method's
`Compressor` compress the block's layers, and runs it again with the compressed weights to
make the next block's inputs (``sequential=False`` keeps the dense outputs instead).
``layerwise=True`` goes one group of layers at a time inside a block too (`input_groups`:
q/k/v, the attention output, gate/up, down), each group's inputs recorded from a run of the
block stopped at it, after the groups before it were compressed. Selected
layers outside every block are calibrated last, in one pass of the whole model. Peak memory
is one block's activations plus its statistics (large arrays are kept off the C heap, freed
heap memory handed back to the system after each block: `tfcompress.core.memory`). With
``folder`` each finished block is saved (`ResumeStore`: weights, results, the next block's
inputs) and a rerun resumes after it.
`capture_inputs` records whole inputs through the same hook (`input_hooks`).

Example:
    >>> masks = calibrate(model, layers, calibration_ids, SparseGPTPruner(config))
    >>> inputs = capture_inputs(model, [layer], calibration_ids)   # {path: (n, d_in) array}
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import numpy as np

from tfcompress.core.blocks import (
    BlockGraph,
    BlockPlan,
    cut_graph,
    find_blocks,
    graph_of,
    unchanged_graph,
)
from tfcompress.core.compressor import Compressor
from tfcompress.core.layers import kernel_of, layer_paths, matrix_shape
from tfcompress.core.memory import large_arrays_off_heap, release_freed_memory
from tfcompress.core.progress import progress_bar
from tfcompress.core.resume import ResumeStore
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


@contextmanager
def input_hooks(layers: Sequence, paths: dict[int, str],
                on_input: Callable[[str, object], None]) -> Iterator[None]:
    """While open, each of ``layers`` first calls ``on_input(path, x)`` with its first input
    (``paths``: layer id -> path), then runs as usual; the one hook `capture_inputs` and the
    calibration engine share. ``on_input`` may raise to cut the forward pass short.

    Example:
        >>> with input_hooks([layer], {id(layer): "mlp_in"}, lambda p, x: print(p, x.shape)):
        ...     model(ids)
    """
    for layer in layers:
        path, original = paths[id(layer)], layer.call

        def hooked(*args, _path=path, _call=original, **kwargs):
            on_input(_path, args[0] if args else next(iter(kwargs.values())))
            return _call(*args, **kwargs)

        layer.call = hooked
    try:
        yield
    finally:
        for layer in layers:
            del layer.call


def capture_inputs(model, layers: Sequence, data, max_rows: int | None = None) -> dict:
    """Record the first input of each of ``layers`` while ``model`` runs eagerly on ``data``.

    ``data`` is what `calibration_batches` takes (arrays, dicts for models with named inputs
    such as KerasHub backbones, or iterables of them). Keeps every row: methods reduce
    inputs as they stream with `tfcompress.core.calibrate` instead. Returns
    ``{path: array (rows, d_in)}``, rows in the order of `kernel_matrix`'s rows.
    """
    batches = calibration_batches(data, model)
    paths = layer_paths(model)
    widths = {paths[id(la)]: matrix_shape(la)[0] if kernel_of(la) is not None else -1
              for la in layers}
    store: dict[str, list[np.ndarray]] = {p: [] for p in widths}

    def record(path, x):
        store[path].append(np.asarray(x).reshape(-1, widths[path]))

    with input_hooks(layers, paths, record):
        for batch in batches:
            _call(model, batch)
    out = {p: np.concatenate(v) for p, v in store.items() if v}
    missing = [p for p in store if p not in out]
    if missing:
        raise TfcompressError(f"layers {missing} were never called on the calibration data")
    return {p: v[:max_rows] if max_rows else v for p, v in out.items()}


class _Stop(Exception):
    """Raised by a hook once it has what it needs, to skip the rest of a forward pass."""


class _Recorder:
    """Streams the first input of chosen layers into `InputStats` (``record``, the hook)."""

    def __init__(self, layers, paths: dict[int, str], needs, max_rows):
        self.stats = {paths[id(la)]: InputStats(matrix_shape(la)[0], needs, max_rows)
                      for la in layers}
        self.order: list[str] = []
        self.follows: dict[str, str] = {}  # path -> path of the layer whose statistic it shares
        self._seen: list = []
        self._first = True

    def new_batch(self) -> None:
        if self.order:
            self._first = False
        self._seen = []

    def record(self, path: str, x) -> None:
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


def _probe_block(sub, inputs: list[list]) -> None:
    """Run block model ``sub`` on each batch until a hook raises `_Stop`."""
    for i in range(len(inputs[0])):
        try:
            sub([x[i] for x in inputs], training=False)
        except _Stop:
            pass


def _first_row(inputs: list[list]) -> list[list]:
    """The first batch of each block input, cut to its first row where it has the batch
    axis the first input has (a run that only learns the call order needs no more)."""
    rows = getattr(inputs[0][0], "shape", (None,))[0]
    return [[x[0][:1]] if len(getattr(x[0], "shape", ())) and x[0].shape[0] == rows else [x[0]]
            for x in inputs]


def input_groups(order: Sequence[str], follows: dict[str, str]) -> list[list[str]]:
    """Layers grouped by the input they read, in call order: each group's first path is the
    one whose input is recorded (``follows``: path -> that path), the others share it.

    Example:
        >>> input_groups(["q", "k", "v", "o"], {"k": "q", "v": "q"})
        [['q', 'k', 'v'], ['o']]
    """
    groups: dict[str, list[str]] = {}
    for path in order:
        groups.setdefault(follows.get(path, path), []).append(path)
    return list(groups.values())


def _host_inputs(model, host, batches) -> list:
    """What ``host`` receives for each batch when ``model`` runs (the batch itself when the
    host is the model's own graph); the rest of the forward pass is skipped."""
    if host is graph_of(model):
        return [_model_input(model, b) for b in batches]
    seen = []

    def stop(path, inputs):
        seen.append(inputs)
        raise _Stop

    with input_hooks([host], {id(host): host.name}, stop):
        for batch in batches:
            try:
                _call(model, batch)
            except _Stop:
                pass
    if len(seen) != len(batches):
        raise TfcompressError(f"the blocks' model {host.name!r} is not called by "
                              f"{model.name!r} once per batch")
    return seen


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


def calibrate(model, layers: Sequence[tuple[str, object]], calibration,
              compressor: Compressor, *,
              blocks=None, sequential: bool = True, layerwise: bool = False,
              max_rows: int | None = None, folder: str | os.PathLike | None = None,
              key: str = "", verbose: int = 1) -> dict:
    """Calibrate and compress ``layers`` of ``model`` block by block with ``compressor``;
    returns the ``{path: result}`` of its `Compressor.compress_layer` calls.

    Each block's selected layers get the statistics ``compressor.needs`` of their inputs
    (``max_rows`` rows at most per layer), in call order; the compressor changes their
    weights in place. ``blocks``: None (found), a regex or layer names (`find_blocks`).
    ``sequential``: the next block's inputs come from this block's compressed weights (False:
    from its dense ones). ``layerwise`` (with ``sequential``): inside a block too, each group
    of layers reading one input (q/k/v, the attention output, gate/up, down) is calibrated
    on what the layers compressed before it give, from one partial run of the block per
    group (False: every layer of a block from the block's dense run; layers outside every
    block are always calibrated together). ``folder``: save progress there (`ResumeStore`)
    and resume a run with the same ``key`` (the method's settings), model, layers and
    ``calibration``.
    ``verbose`` shows a progress bar with an ETA. ``model``'s graph is left as it was.

    Example:
        >>> masks = calibrate(model, layers, token_ids, SparseGPTPruner(config))
    """
    if layerwise and not sequential:
        raise TfcompressError("layerwise=True calibrates each layer on the layers compressed "
                              "before it, so it needs sequential=True")
    large_arrays_off_heap()  # each block's activations leave the process when freed
    with unchanged_graph(model):
        batches = calibration_batches(calibration, model)
        plan = find_blocks(model, blocks, [la for _, la in layers])
        graph, by_block, rest = _split_by_block(plan, layers, blocks)
        store = (ResumeStore(folder, _run_key(key, plan, [p for p, _ in layers], batches))
                 if folder else None)
        runner = _BlockRunner(model, layers, batches, compressor, sequential=sequential,
                              layerwise=layerwise, max_rows=max_rows, store=store,
                              bar=progress_bar(len(by_block) + bool(rest), verbose=verbose,
                                               unit_name="block"))
        if graph is not None:
            runner.run_blocks(plan, graph, by_block)
        if rest:
            runner.run_rest(len(by_block), rest)
    missing = [p for p, _ in layers if p not in runner.results]
    if missing:
        raise TfcompressError(f"layers {missing} were never called on the calibration data")
    return runner.results


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


class _BlockRunner:
    """One calibration run: each unit (a block, or the layers outside every block) is run
    with its layers' inputs recorded, compressed, run again on the compressed weights when
    ``sequential``, and saved to ``store``; ``results`` gathers the compressor's results."""

    def __init__(self, model, layers, batches, compressor: Compressor, *, sequential: bool,
                 layerwise: bool, max_rows: int | None, store: ResumeStore | None, bar):
        self.model, self.batches, self.compressor = model, batches, compressor
        self.path_of = {id(la): p for p, la in layers}
        self.sequential, self.max_rows, self.store, self.bar = sequential, max_rows, store, bar
        self.layerwise = layerwise
        self.done = store.done if store else 0
        self.results: dict = {}

    def step(self, targets, run: Callable) -> list | None:
        """Calibrate one unit: ``run(recorder)`` runs it and returns its outputs per batch."""
        rec = _Recorder(targets, self.path_of, self.compressor.needs, self.max_rows)
        with input_hooks(targets, self.path_of, rec.record):
            outputs = run(rec)
        if targets:
            by_path = {self.path_of[id(la)]: la for la in targets}
            self.results.update(self.compressor.compress_block(
                [(p, by_path[p]) for p in rec.order], {p: rec.stats[p] for p in rec.order}))
            if self.sequential and outputs is not None:
                outputs = None  # dropped first: one block's activations at a time
                outputs = run(None)
        return outputs

    def step_layerwise(self, targets, sub, inputs: list[list], outputs: bool) -> list | None:
        """Calibrate block model ``sub`` group by group (`input_groups`, learnt from one
        sequence), each group from a run stopped at it; returns the compressed block's
        outputs (None unless ``outputs``: the last block's are not needed)."""
        order = _Recorder(targets, self.path_of, (), None)  # call order and shared inputs
        with input_hooks(targets, self.path_of, order.record):
            _run_block(sub, _first_row(inputs), order)
        by_path = {self.path_of[id(la)]: la for la in targets}
        for paths in input_groups(order.order, order.follows):
            stats = InputStats(matrix_shape(by_path[paths[0]])[0], self.compressor.needs,
                               self.max_rows)
            stats.readers = len(paths)

            def record(path, x, _stats=stats):
                _stats.update(np.asarray(x))
                raise _Stop  # the rest of the block waits for this group's new weights

            with input_hooks([by_path[paths[0]]], self.path_of, record):
                _probe_block(sub, inputs)
            self.results.update(self.compressor.compress_block(
                [(p, by_path[p]) for p in paths], dict.fromkeys(paths, stats)))
            del stats
            release_freed_memory()  # each partial run's temporaries, before the next one
        return _run_block(sub, inputs, None) if outputs else None

    def finish(self, index: int, group, targets, inputs) -> None:
        """Unit ``index`` is done: saved (its layers' results, the next inputs) if resumable;
        the memory its activations and temporaries freed goes back to the system (glibc
        would keep it: the resident size would climb block after block)."""
        release_freed_memory()
        if self.store is not None:
            paths = [self.path_of[id(la)] for la in targets]
            self.store.save(index, group, {p: self.results[p] for p in paths
                                           if p in self.results}, inputs, self.compressor)
        self.bar.add(1)

    def restored(self, index: int, group) -> bool:
        """Whether unit ``index`` was finished by an earlier run (then its weights and results
        are loaded back)."""
        if index >= self.done:
            return False
        self.results.update(self.store.load(index, group, self.compressor))
        self.bar.add(1)
        return True

    def first_inputs(self, plan: BlockPlan, graph: BlockGraph) -> dict:
        """``{tensor id: per-batch values}``: the first unfinished block's inputs and the
        side inputs every block reads (such as a padding mask)."""
        import keras

        side = [id(t) for t in graph.side]
        live = dict(zip([id(t) for t in graph.inputs[self.done]],
                        self.store.inputs(len(self.batches)), strict=True)) if self.done else {}
        if any(i not in live for i in side):
            host_in = _host_inputs(self.model, plan.host, self.batches)
            outs = [keras.tree.flatten(graph.prefix(x, training=False)) for x in host_in]
            live |= {i: [o[j] for o in outs] for j, i in enumerate(side) if i not in live}
        return live

    def run_blocks(self, plan: BlockPlan, graph: BlockGraph, by_block: list) -> None:
        live = self.first_inputs(plan, graph) if self.done < len(by_block) else {}
        keep_always = {id(t) for t in graph.side}
        for b, group in enumerate(plan.groups):
            if self.restored(b, group):
                continue
            nxt = graph.inputs[b + 1] if b + 1 < len(by_block) else []
            ins = [live[id(t)] for t in graph.inputs[b]]
            if self.layerwise and by_block[b]:
                produced = self.step_layerwise(by_block[b], graph.models[b], ins, bool(nxt))
            else:
                produced = self.step(by_block[b], functools.partial(_run_block,
                                                                    graph.models[b], ins))
            if produced is not None:
                live |= {id(t): produced[j] for j, t in enumerate(graph.outputs[b])}
            keep = keep_always | {id(t) for t in nxt}
            live = {i: v for i, v in live.items() if i in keep}  # one block's activations
            self.finish(b, group, by_block[b], [live[id(t)] for t in nxt] if nxt else None)

    def run_rest(self, index: int, rest: list) -> None:
        """The selected layers outside every block, in one pass of the whole model."""
        if self.restored(index, rest):
            return

        def run_model(rec):
            for batch in self.batches:
                rec.new_batch()
                _call(self.model, batch)

        self.step(rest, run_model)
        self.finish(index, rest, rest, None)
