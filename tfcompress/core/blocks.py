"""Find a model's repeated blocks and cut its graph into one runnable sub-model per block.

Blocks are groups of layers of a functional model (the *host*: the model itself, or a nested
functional model such as a KerasHub backbone inside its task model). Found automatically for
the built-in GPT / Llama models (``block{i}_*`` layers) and KerasHub backbones
(``transformer_layer_{i}``); otherwise every top-level layer holding a selected layer is a
block of its own. Users name blocks with a regex (layers whose matched text is equal form one
block) or a list of layer names / paths (one block each).

Example:
    >>> plan = find_blocks(build_gpt("test-tiny"))
    >>> plan.names
    ['block0', 'block1']
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from dataclasses import dataclass, field

from tfcompress.core.layers import layer_paths
from tfcompress.errors import TfcompressError

AUTO_PATTERNS = (r"^block\d+(?=_)", r"^transformer_layer_\d+$")


@dataclass
class BlockPlan:
    """``host``: the functional model the blocks belong to (None: the model has no graph,
    it runs whole); ``groups``: the layers of each block, in graph order."""

    host: object | None
    groups: list[list] = field(default_factory=list)
    names: list[str] = field(default_factory=list)


def graph_of(model):
    """The functional graph behind ``model`` (itself, a built Sequential's), or None."""
    from keras.src.models.functional import Functional

    if isinstance(model, Functional):
        return model
    inner = getattr(model, "_functional", None)
    return inner if isinstance(inner, Functional) else None


def _hosts(model):
    """``model``'s graph, then nested functional models, depth first."""
    graph = graph_of(model)
    if graph is None:
        return
    yield graph
    for layer in graph.layers:
        if graph_of(layer) is not None:
            yield from _hosts(layer)


def _group(host, pattern: re.Pattern, paths: dict[int, str]) -> tuple[list[list], list[str]]:
    groups: dict[str, list] = {}
    for layer in host.layers:
        hit = pattern.search(layer.name) or pattern.search(paths[id(layer)])
        if hit:
            groups.setdefault(hit.group(0), []).append(layer)
    return list(groups.values()), list(groups)


def _holds(layer, targets: set[int]) -> bool:
    return id(layer) in targets or any(
        id(sub) in targets for sub in layer._flatten_layers(include_self=False, recursive=True))


def find_blocks(model, blocks=None, targets=()) -> BlockPlan:
    """The blocks of ``model`` (see the module docstring); ``targets`` are the layers the
    caller compresses (they choose the per-layer fallback). Bad ``blocks`` raise."""
    target_ids, paths = {id(la) for la in targets}, layer_paths(model)
    if blocks is None:
        for pattern in AUTO_PATTERNS:
            for host in _hosts(model):
                groups, names = _group(host, re.compile(pattern), paths)
                if groups:
                    return BlockPlan(host, groups, names)
        host = graph_of(model)
        if host is None:
            return BlockPlan(None)
        chosen = [la for la in host.layers if _holds(la, target_ids)]
        return BlockPlan(host, [[la] for la in chosen], [la.name for la in chosen])
    if isinstance(blocks, str):
        try:
            pattern = re.compile(blocks)
        except re.error as err:
            raise TfcompressError(f"blocks={blocks!r} is not a valid regular expression: "
                                  f"{err}") from err
        for host in _hosts(model):
            groups, names = _group(host, pattern, paths)
            if groups:
                return BlockPlan(host, groups, names)
    elif isinstance(blocks, list | tuple) and blocks and all(isinstance(b, str) for b in blocks):
        for host in _hosts(model):
            by_name = {la.name: la for la in host.layers} | {
                paths[id(la)]: la for la in host.layers}
            if all(b in by_name for b in blocks):
                order = {id(la): i for i, la in enumerate(host.layers)}
                chosen = sorted({id(by_name[b]): by_name[b] for b in blocks}.values(),
                                key=lambda la: order[id(la)])
                return BlockPlan(host, [[la] for la in chosen], [la.name for la in chosen])
    else:
        raise TfcompressError(f"blocks must be a regex string or a list of layer names, "
                              f"got {blocks!r}")
    hosts = list(_hosts(model))
    if not hosts:
        raise TfcompressError(f"blocks={blocks!r} needs a functional or Sequential model (or "
                              f"one nesting them); {type(model).__name__} has no layer graph: "
                              "leave blocks=None to calibrate it in one pass")
    shown = ", ".join(la.name for host in hosts[:2] for la in host.layers[:12])
    raise TfcompressError(f"blocks={blocks!r} matched no layer of {model.name!r}; its layers "
                          f"include: {shown}")


@contextlib.contextmanager
def unchanged_graph(model) -> Iterator[None]:
    """Drop the graph nodes added to ``model``'s layers inside the block: a functional model
    built on intermediate tensors (`cut_graph`'s per-block models) calls its layers on copies
    of them, adding nodes, and then Dense->Dense pairs no longer look like pairs."""
    ops = {id(op): op for op in model._flatten_layers(include_self=True, recursive=True)}
    ops |= {id(op): op for host in _hosts(model) for op in host.operations}
    sizes = [(op, len(op._inbound_nodes), len(op._outbound_nodes)) for op in ops.values()]
    try:
        yield
    finally:
        for layer, n_in, n_out in sizes:
            del layer._inbound_nodes[n_in:], layer._outbound_nodes[n_out:]


@dataclass
class BlockGraph:
    """Runnable pieces of a host graph: ``prefix`` maps the host's inputs to the tensors the
    blocks read from outside the chain (``side``: the first block's input, masks...); block
    ``b``'s sub-model maps ``inputs[b]`` to ``outputs[b]``. Tensors are keyed by ``id``."""

    prefix: object
    side: list
    models: list
    inputs: list[list]
    outputs: list[list]


def cut_graph(plan: BlockPlan) -> BlockGraph:
    """One sub-model per block sharing the host's layers (no weights are copied); raises when
    the blocks do not form a chain (a block reading a block other than the previous one)."""
    import keras
    from keras.src.ops.function import make_node_key

    host, groups = plan.host, plan.groups
    member = {id(la): b for b, g in enumerate(groups) for la in g}
    consumers: dict[int, set[int]] = {}
    block_nodes = [[] for _ in groups]
    for op in host.operations:
        for i, node in enumerate(op._inbound_nodes):
            if make_node_key(op, i) not in host._nodes:
                continue
            where = member.get(id(op), -1)
            if where >= 0:
                block_nodes[where].append(node)
            for t in node.input_tensors:
                consumers.setdefault(id(t), set()).add(where)
    for t in host.outputs:
        consumers.setdefault(id(t), set()).add(-1)

    def producer(t) -> int:
        return member.get(id(t._keras_history[0]), -1)

    inputs, outputs, side = [], [], {}
    for b, nodes in enumerate(block_nodes):
        ext = {}
        for node in nodes:
            for t in node.input_tensors:
                src = producer(t)
                if src == b:
                    continue
                if src not in (-1, b - 1):
                    raise TfcompressError(
                        f"block {plan.names[b]!r} reads an output of block {plan.names[src]!r}: "
                        "blocks must form a chain; name blocks that do (blocks=...)")
                ext[id(t)] = t
                if src == -1:
                    side[id(t)] = t
        inputs.append(list(ext.values()))
        outs = {id(t): t for node in nodes for t in node.output_tensors
                if consumers.get(id(t), set()) - {b}}
        outputs.append(list(outs.values()))
    prefix = keras.Model(host.input, list(side.values()))
    inside = [op.name for op in prefix.operations if id(op) in member]
    if inside:
        raise TfcompressError(
            f"layers between blocks are not part of any block (the inputs of a block depend on "
            f"{inside[:4]}): name blocks that cover them (blocks=...)")
    models = [keras.Model(i, o) for i, o in zip(inputs, outputs, strict=True)]
    return BlockGraph(prefix, list(side.values()), models, inputs, outputs)
