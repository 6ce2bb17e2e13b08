"""Full-integer LLM bundles (`export_llm` modes ``int16x8`` and ``int8_static``): the attention
sink kept float, and representative data drawn from the user's text.

A causal LM's first position sees only itself, so a bundle that always starts with BOS has the
same keys and values in every layer's cache slot 0 and the same logits after it. SmolLM2 parks
a "massive activation" there (about 2.4e4 in residual channel 507), which no per-tensor int8
or int16 scale holds beside the other tokens' values. `sink_prefix` computes those keys,
values and logits once, in float (`cached_forward`, the bundle's own maths: every decoder
`export_llm` reads is covered); the graph then writes them into slot 0 after every call and
returns them as the logits at position 0 (PrefixQuant's idea, as
`tfcompress.models.llama_prefix` does for a window model). What the integer graph makes of the
BOS row is discarded, and its activation ranges are calibrated on positions 1.. only
(`calibration_samples`: prefill windows after BOS and decode steps at half and full cache
fill, from float caches), so the sink sets no scale. The bundle expects BOS at position 0
(``llm.json``'s ``sink_prefix``; `LLMRunner` refuses another first token; LiteRT-LM's engine
does not put the ``.litertlm``'s start token first, so a prompt for it must begin with BOS's
text, else its first token is taken for BOS).

Example:
    >>> prefix = sink_prefix(decoder_of(model), bos=1)
    >>> prefix.keys[0].shape                       # (1, kv_heads, 1, head_dim)
    (1, 2, 1, 8)
    >>> samples = calibration_samples(dec, plan, windows, prefix)   # [(signature, inputs)]
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from tfcompress.export.llm_graph import Decoder, cached_forward
from tfcompress.export.llm_layout import cache_names

# the export_llm modes whose activations are integer: each one's LiteRT recipe is the mode's
INTEGER_LLM_MODES = ("int16x8", "int8_static")
# decode steps calibrated per window: the head and the last block's query, attention and MLP
# are in no prefill graph (a prefill returns no logits), so only these set their ranges
DECODE_STEPS = 8


@dataclass(frozen=True)
class SinkPrefix:
    """The float constants an integer bundle keeps for the tokens ``ids`` at positions
    ``0 .. len(ids) - 1``: per layer the keys (RoPE applied) and values
    ``(1, kv_heads, len(ids), head_dim)``, and the logits ``(vocab,)`` at those positions
    (one prefix token: the logits after it)."""

    ids: tuple[int, ...]
    keys: list[np.ndarray]
    values: list[np.ndarray]
    logits: np.ndarray


def _float_caches(dec: Decoder, ids, cache_length: int) -> tuple[list, list, np.ndarray]:
    """The float keys and values after ``ids`` at positions ``0 ..``, as numpy caches of
    ``cache_length`` slots, and the logits after each of ``ids``."""
    import tensorflow as tf

    zeros = [tf.zeros((1, dec.n_kv_heads, cache_length, dec.head_dim))] * dec.n_layers
    ids = np.asarray(ids, np.int32)
    logits, ks, vs = cached_forward(dec, dec.weights, ids[None], np.arange(ids.size, dtype="int32"),
                                    zeros, zeros)
    return ([np.asarray(k) for k in ks], [np.asarray(v) for v in vs], np.asarray(logits)[0])


def sink_prefix(dec: Decoder, bos: int) -> SinkPrefix:
    """BOS's float keys, values and next-token logits at position 0 (``dec``'s weights).

    Example:
        >>> sink_prefix(dec, 1).logits.shape
        (64,)
    """
    keys, values, logits = _float_caches(dec, [bos], 1)
    return SinkPrefix((int(bos),), keys, values, logits[0].astype("float32"))


def _sample(tokens, start: int, caches: dict) -> dict:
    """One signature's named inputs: ``tokens`` at ``start ..`` over the window's float
    ``caches`` (shared, not copied: the slots past each step hold later tokens, which the
    causal mask hides, as a reused cache holds old ones)."""
    return {"tokens": np.asarray(tokens, np.int32)[None],
            "input_pos": np.arange(start, start + len(tokens), dtype=np.int32), **caches}


def calibration_samples(dec: Decoder, plan: dict[str, tuple[int, int, bool]], windows,
                        prefix: SinkPrefix) -> list[tuple[str, dict]]:
    """Representative ``(signature, named inputs)`` for every signature of ``plan``
    (`signature_plan`, one cache length) from token ``windows`` ``(w, n)``, each read as
    ``prefix + window``: per window the prefills of each length tiling it from the prefix on
    and `DECODE_STEPS` decode steps spread over it, over the float keys and values of the
    window's tokens. No step covers the prefix's positions: its rows never set a range.

    Example:
        >>> [name for name, _ in calibration_samples(dec, {"prefill": (8, 64, False),
        ...     "decode": (1, 64, True)}, np.ones((1, 16), "int32"), prefix)]
        ['prefill', 'prefill', 'decode', 'decode', 'decode', 'decode', 'decode', 'decode', \
'decode', 'decode']
    """
    names = cache_names(dec.n_layers)
    cache_length = next(iter(plan.values()))[1]
    p = len(prefix.ids)
    samples = []
    for window in np.asarray(windows).reshape(len(windows), -1):
        seq = np.concatenate([prefix.ids, window])[:cache_length]
        keys, values, _ = _float_caches(dec, seq, cache_length)
        caches = dict(zip(names, (c for pair in zip(keys, values, strict=True) for c in pair),
                          strict=True))
        last = len(seq) - 1  # the last token's position
        for name, (n, _, logits) in plan.items():
            if logits:  # decode: tokens spread over the window, the cache filled up to each
                starts = np.unique(np.linspace(p, last, DECODE_STEPS).round().astype(int))
                samples += [(name, _sample(seq[s:s + 1], s, caches)) for s in starts]
                continue
            # chunks tiling the window (the last one ending at its end): every position's
            # rotary phases reach the ranges (a range is the widest any sample reached)
            for s in sorted({*range(p, len(seq) - n + 1, n), max(p, len(seq) - n)}):
                tokens = np.zeros(n, np.int32)  # padded as LLMRunner pads a short chunk
                tokens[:len(seq[s:s + n])] = seq[s:s + n]
                samples.append((name, _sample(tokens, s, caches)))
    return samples


# operators that only move values: their output's range is their input's
_MOVES = ("RESHAPE", "TRANSPOSE", "SQUEEZE", "EXPAND_DIMS")
# a constant of more elements is told apart by its buffer (the converter stores equal
# constants once for all signatures); one this small (a shape, a slice bound, a scalar) by
# its type and rank: those differ with the token count
_SHAPE_SIZE = 8


def twin_tensors(flatbuffer: bytes) -> list[list[str]]:
    """Groups of tensors across the signatures' subgraphs that hold the same values up to
    their order: equal operators over equal inputs (a signature input by name, a constant
    by its buffer, a shape-sized one by its kind), through reshapes and transposes. TFLite
    names each subgraph's tensors apart (``Cast``, ``Cast1``), so ranges calibrated on
    ``prefill`` do not reach ``decode`` without this.

    Example:
        >>> twin_tensors(flatbuffer)[:1]
        [['Cast', 'Cast1']]
    """
    from ai_edge_litert.schema_py_generated import BuiltinOperator
    from ai_edge_quantizer.utils import tfl_flatbuffer_utils

    moves = {getattr(BuiltinOperator, name) for name in _MOVES}
    model = tfl_flatbuffer_utils.read_model(flatbuffer)
    groups: dict[int, dict[int, list[str]]] = defaultdict(lambda: defaultdict(list))
    for signature in model.signatureDefs:
        subgraph = model.subgraphs[signature.subgraphIndex]
        key = {t.tensorIndex: hash(("input", t.name)) for t in signature.inputs}

        def of(i, tensors=subgraph.tensors, key=key):
            if i not in key:  # a constant
                t = tensors[i]
                key[i] = hash(("buffer", t.buffer) if np.prod(t.shape) > _SHAPE_SIZE
                              else ("constant", t.type, len(t.shape)))
            return key[i]
        for op in subgraph.operators:
            code = model.operatorCodes[op.opcodeIndex].builtinCode
            inputs = tuple(of(i) for i in op.inputs if i >= 0)
            for j, out in enumerate(op.outputs):
                key[out] = inputs[0] if code in moves else hash((code, inputs, j))
                name = subgraph.tensors[out].name.decode()
                groups[key[out]][signature.subgraphIndex].append(name)
    return [[n for names in by_graph.values() for n in names] for by_graph in groups.values()
            if len(by_graph) > 1]


def share_ranges(ranges: dict, twins: list[list[str]]) -> dict:
    """``ranges`` (``{tensor: {"min", "max"}}``) with each group of `twin_tensors` given the
    widest range any of its members reached.

    Example:
        >>> r = share_ranges({"a": {"min": np.array([-1.0]), "max": np.array([1.0])},
        ...                   "a1": {"min": np.array([0.0]), "max": np.array([3.0])}},
        ...                  [["a", "a1"]])
        >>> float(r["a"]["max"][0]), float(r["a1"]["min"][0])
        (3.0, -1.0)
    """
    shared = dict(ranges)
    for names in twins:  # per-tensor ranges (their arrays' ranks differ), each kept its shape
        members = [n for n in names if shared.get(n) and np.size(shared[n].get("min")) == 1]
        if len(members) < 2:
            continue
        low = min(float(np.min(shared[n]["min"])) for n in members)
        high = max(float(np.max(shared[n]["max"])) for n in members)
        for n in members:
            old = shared[n]
            shared[n] = {**old, "min": np.full_like(old["min"], low),
                         "max": np.full_like(old["max"], high)}
    return shared
