"""Every tensor once: a tied output head and the token embedding read one int8 table.

TensorFlow's dynamic-range converter quantizes the two uses of a tied table apart: the
head's FULLY_CONNECTED gets int8 per output channel (per vocabulary row), the embedding's
GATHER an int8 copy with one scale for the whole table, dequantized right after. For
SmolLM2 that second copy is 28 MB of a 170 MB ``dynamic_int8`` bundle.
`share_tied_table` points every such GATHER at the head's per-row table through an
EMBEDDING_LOOKUP (LiteRT's hybrid kernel returns float rows from a per-row int8 table,
what ``mode="int4"`` already uses) and drops the copy: one table, and finer embedding
scales. ``float32``, ``float16`` and ``int4`` bundles already share one buffer.

Example:
    >>> flatbuffer, shared = share_tied_table(converter.convert())
    >>> shared   # GATHERs now reading the head's table (one per signature)
    2
"""

from __future__ import annotations

import copy

from tfcompress.export.llm_graph import HEAD_SCOPE
from tfcompress.export.llm_int4 import _op_name, _opcode_index
from tfcompress.export.shared_quant import share_tables


def _head_table(model):
    """``(tensor, buffer)`` of the int8 per-row weights of the head's FULLY_CONNECTED, or None."""
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_quantizer.utils import tfl_flatbuffer_utils as fu

    for subgraph in model.subgraphs:
        for op in subgraph.operators:
            if (_op_name(model, op) != "FULLY_CONNECTED"
                    or f"{HEAD_SCOPE}/" not in fu.get_op_scope(op, subgraph.tensors)):
                continue
            w = subgraph.tensors[op.inputs[1]]
            quant = w.quantization
            if (w.type == schema.TensorType.INT8 and quant is not None
                    and quant.scale is not None and len(quant.scale) == w.shape[0]
                    and quant.quantizedDimension == 0):
                return w, w.buffer
    return None


def _dequantized(model, tensor):
    """A constant int8 tensor's float values (scales per tensor or per row)."""
    import numpy as np

    codes = np.frombuffer(bytes(model.buffers[tensor.buffer].data), np.int8)
    codes = codes.reshape(tensor.shape).astype(np.float32)
    scale = np.asarray(tensor.quantization.scale, np.float32)
    return codes * (scale.reshape(-1, *[1] * (codes.ndim - 1)) if scale.size > 1 else scale)


def _same_values(model, own, table, theirs) -> bool:
    """Whether the GATHER's table holds the head's values ``theirs`` (each within its own
    rounding): the converter may have folded a scale into a copy of the same shape (Gemma's
    embedding times sqrt(d)), which must keep its own table."""
    import numpy as np

    if own.quantization is None or own.quantization.scale is None:
        return False
    mine = _dequantized(model, own)
    tolerance = (np.max(np.asarray(own.quantization.scale)) / 2
                 + np.asarray(table.quantization.scale).reshape(-1, 1) / 2) * 1.001
    return bool(np.all(np.abs(mine - theirs) <= tolerance))


def _builtin(model, op) -> int:
    from ai_edge_litert.tools.flatbuffer_utils import get_builtin_code_from_operator_code

    return get_builtin_code_from_operator_code(model.operatorCodes[op.opcodeIndex])


def share_tied_table(flatbuffer: bytes, share: bool = False) -> tuple[bytes, int]:
    """Rewrite a dynamic-range flatbuffer so each GATHER(int8 table) -> DEQUANTIZE pair whose
    table has the tied head's shape becomes one EMBEDDING_LOOKUP on the head's int8 per-row
    table, and the table's own copy is dropped. ``share``: in the same rewrite, each weight's
    quantization table once for all signatures (`shared_quant.share_tables`). Returns
    ``(flatbuffer, GATHERs rewritten)``; the bytes come back unchanged when nothing changed."""
    from ai_edge_litert.tools import flatbuffer_utils as fbu

    model = fbu.read_model_from_bytearray(flatbuffer)
    count = _tie(model)
    if not count + (share_tables(model) if share else 0):
        return flatbuffer, 0
    return bytes(fbu.convert_object_to_bytearray(model)), count


def _tie(model) -> int:
    """`share_tied_table`'s rewrite, in place on a ``ModelT``: the GATHERs rewritten."""
    from ai_edge_litert import schema_py_generated as schema

    head = _head_table(model)
    if head is None:
        return 0
    table, table_buffer = head
    values = _dequantized(model, table)  # once: each signature has its own GATHER
    lookup, count = None, 0
    dropped: set[int] = set()
    for subgraph in model.subgraphs:
        readers: dict[int, list] = {}
        for op in subgraph.operators:
            for i in op.inputs:
                readers.setdefault(i, []).append(op)
        for op in list(subgraph.operators):
            if _op_name(model, op) != "GATHER" or len(op.inputs) != 2:
                continue
            own = subgraph.tensors[op.inputs[0]]
            after = readers.get(op.outputs[0], [])
            if (own.type != schema.TensorType.INT8 or list(own.shape) != list(table.shape)
                    or len(readers[op.inputs[0]]) != 1 or len(after) != 1
                    or _builtin(model, after[0]) != schema.BuiltinOperator.DEQUANTIZE
                    or (op.builtinOptions is not None and op.builtinOptions.axis)
                    or not _same_values(model, own, table, values)):
                continue
            if lookup is None:
                lookup = _opcode_index(model, schema.BuiltinOperator.EMBEDDING_LOOKUP)
            dropped.add(own.buffer)
            own.buffer, own.quantization = table_buffer, copy.deepcopy(table.quantization)
            op.opcodeIndex, op.inputs = lookup, [op.inputs[1], op.inputs[0]]
            op.builtinOptionsType, op.builtinOptions = schema.BuiltinOptions.NONE, None
            op.outputs = after[0].outputs  # the float rows the DEQUANTIZE gave
            subgraph.operators.remove(after[0])
            count += 1
    in_use = {t.buffer for subgraph in model.subgraphs for t in subgraph.tensors}
    for index in dropped - in_use:
        model.buffers[index].data = None
    return count
