"""Every quantization table once: signatures that read one weight share its scales.

A bundle's signatures (prefill lengths, decode, cache buckets) read the same weight buffers,
but the flatbuffer keeps a tensor per signature, each with its own quantization table: per
channel, a float32 scale and an int64 zero point. For SmolLM2's ``dynamic_int8`` bundle (three
signatures) that is 654,144 entries, 7.9 MB of a 143.5 MB file, two thirds of them copies.
FlatBuffers lets tables share a sub-table, so `share_quantization` packs each weight's table
once and points every tensor of that weight at it: the runtime reads the same values, and a
further signature costs its graph, not another copy of the scales.

Example:
    >>> flatbuffer, shared = share_quantization(converter.convert())
    >>> shared   # tensors now reading another signature's table
    4
"""

from __future__ import annotations

import numpy as np


def _same(a, b) -> bool:
    """Whether two ``QuantizationParametersT`` hold the same values (no block details)."""
    if a.details is not None or b.details is not None:
        return False
    fields = ("scale", "zeroPoint", "min", "max")
    return a.quantizedDimension == b.quantizedDimension and all(
        (getattr(a, f) is None) == (getattr(b, f) is None)
        and (getattr(a, f) is None or np.array_equal(getattr(a, f), getattr(b, f)))
        for f in fields)


def _packed_once(params):
    """``params`` as an object that packs into a builder once and hands out that offset."""
    from ai_edge_litert import schema_py_generated as schema

    class PackedOnce(schema.QuantizationParametersT):
        def Pack(self, builder):  # noqa: N802 (the flatbuffers object API's name)
            if self.offset is None or self.builder is not builder:
                self.builder, self.offset = builder, super().Pack(builder)
            return self.offset

    once = PackedOnce()
    once.__dict__.update(vars(params), builder=None, offset=None)
    return once


def share_tables(model) -> int:
    """In place on a flatbuffer ``ModelT`` (`flatbuffer_utils.read_model_from_bytearray`):
    each constant tensor whose weight buffer and quantization equal an earlier tensor's reads
    that tensor's table; returns how many do. For a rewrite that already holds the model
    (`quantize_int4`, `share_tied_table`), so the file is parsed and packed once."""
    first: dict[int, object] = {}
    count = 0
    for subgraph in model.subgraphs:
        for tensor in subgraph.tensors:
            params = tensor.quantization
            if (params is None or params.scale is None
                    or model.buffers[tensor.buffer].data is None):
                continue
            seen = first.get(tensor.buffer)
            if seen is None:
                tensor.quantization = first[tensor.buffer] = _packed_once(params)
            elif _same(seen, params):
                tensor.quantization = seen
                count += 1
    return count


def share_quantization(flatbuffer: bytes) -> tuple[bytes, int]:
    """``(flatbuffer, tensors sharing)``: `share_tables` on the file's bytes. The bytes come
    back unchanged when no table repeats."""
    from ai_edge_litert.tools import flatbuffer_utils as fbu

    model = fbu.read_model_from_bytearray(flatbuffer)
    count = share_tables(model)
    if not count:
        return flatbuffer, 0
    return bytes(fbu.convert_object_to_bytearray(model)), count
