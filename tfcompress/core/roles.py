"""Layers by role: the attention and MLP kernels of a model's repeated blocks, found from
its graph rather than from layer names, so any model a user brings works without knowing
what Keras named its layers (``dense_3``, ``multi_head_attention_1``).

A block's kernels are (1) the layers of the blocks `find_blocks` names (our GPT / Llama,
KerasHub backbones), else (2) in a functional graph, every layer on one side only of a
residual addition (``x + f(x)``: the layers of ``f``), else (3) in a subclassed model, the
kernels nested inside a composite top-level layer. The token embedding and the output head
are never on a residual branch, so they stay out.

Example:
    >>> block_kernel_paths(build_gpt("test-tiny"))[:2]
    ['block0_attn/query', 'block0_attn/key']
"""

from __future__ import annotations

import difflib
import re

from tfcompress.core.blocks import AUTO_PATTERNS, _group, _hosts, graph_of
from tfcompress.core.layers import iter_layers, kernel_of, layer_paths
from tfcompress.errors import TfcompressError

ROLES = ("blocks", "all")
ADD_OPS = ("Add", "add")  # keras.layers.Add and the op behind ``x + y`` on Keras tensors


def _kernel_paths_under(model, layers) -> list[str]:
    """Paths (from ``model``) of every kernel layer that is, or is nested in, ``layers``."""
    inside = set()
    for layer in layers:
        inside |= {id(s) for s in layer._flatten_layers(include_self=True, recursive=True)}
    return [p for p, la in iter_layers(model) if id(la) in inside and kernel_of(la) is not None]


def _ancestors(tensor, host, memo: dict) -> frozenset:
    """Ids of the operations of ``host`` that ``tensor`` depends on."""
    op = tensor._keras_history.operation
    key = (id(op), tensor._keras_history.node_index)
    if key not in memo:
        memo[key] = frozenset()  # cycles cannot occur; guards re-entry
        node = op._inbound_nodes[tensor._keras_history.node_index]
        found = {id(op)}
        for t in node.input_tensors:
            found |= _ancestors(t, host, memo)
        memo[key] = frozenset(found)
    return memo[key]


def residual_branch_layers(host) -> list:
    """Layers of a functional ``host`` that lie on one side only of an addition."""
    from keras.src.ops.function import make_node_key

    memo: dict = {}
    branch: set[int] = set()
    for op in host.operations:
        if type(op).__name__ not in ADD_OPS:
            continue
        for i, node in enumerate(op._inbound_nodes):
            if make_node_key(op, i) not in host._nodes or len(node.input_tensors) != 2:
                continue
            a, b = (_ancestors(t, host, memo) for t in node.input_tensors)
            branch |= a ^ b
    return [la for la in host.layers if id(la) in branch]


def block_kernel_paths(model) -> list[str]:
    """The attention and MLP kernels of ``model``'s repeated blocks (module docstring); empty
    when it has none (no residual additions: a plain stack of layers)."""
    paths = layer_paths(model)
    for pattern in AUTO_PATTERNS:
        for host in _hosts(model):
            groups, _ = _group(host, re.compile(pattern), paths)
            if groups:
                return _kernel_paths_under(model, [la for g in groups for la in g])
    host = graph_of(model)
    if host is not None:
        found = _kernel_paths_under(model, residual_branch_layers(host))
    else:
        composite = [la for la in model._flatten_layers(include_self=False, recursive=False)
                     if kernel_of(la) is None and _kernel_paths_under(model, [la])]
        found = _kernel_paths_under(model, composite)
    return found


def close_names(text: str, names: list[str], n: int = 5) -> list[str]:
    """The ``n`` names most like ``text`` (a mistyped include), best first."""
    return difflib.get_close_matches(text, names, n=n, cutoff=0.3)


def check_selection(model, spec, arg: str) -> None:
    """``spec`` (an include/exclude regex or list of names) selects at least one kernel layer
    of ``model``; else the error lists the closest layer paths."""
    if spec is None:
        return
    kernels = [(p, la) for p, la in iter_layers(model) if kernel_of(la) is not None]
    if isinstance(spec, str):
        try:
            pattern = re.compile(spec)
        except re.error as err:
            raise TfcompressError(f"{arg}: {spec!r} is not a valid regex: {err}") from err
        hits = [p for p, _ in kernels if pattern.search(p)]
        wanted = [spec]
    else:
        names = set(spec)
        hits = [p for p, la in kernels if p in names or la.name in names]
        wanted = sorted(names - {p for p, _ in kernels} - {la.name for _, la in kernels})
        hits = hits if not wanted else []
    if hits:
        return
    paths = [p for p, _ in kernels]
    close = sorted({c for w in wanted for c in close_names(w, paths)})
    raise TfcompressError(
        f"{arg}: {spec!r} matches no layer with a kernel in {model.name!r}"
        + (f"; close names: {', '.join(close)}" if close else "")
        + f"; its layers with kernels: {', '.join(paths[:16])}"
        + (", ..." if len(paths) > 16 else "")
        + ". Leave include out to take the attention and MLP kernels of each block")


__all__ = ["ROLES", "block_kernel_paths", "check_selection", "close_names",
           "residual_branch_layers"]
