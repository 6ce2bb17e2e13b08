"""``export_llm(mode="int4")``: blockwise int4 weights that keep a quantized model's codes.

LiteRT's int4 (``ai_edge_quantizer``'s ``dynamic_wi4b32_afp32``) is symmetric, in blocks of
`INT4_BLOCK` input rows, with float16 scales rounded to bfloat16's significand. A layer that
`tfcompress.quantize` put on exactly that grid (``QuantizeConfig.litert_int4()``, scheme
``"litert"``) decodes to floats that are code x scale; such a layer is quantized by
ai_edge_quantizer's own ``dequantized_weight_recovery`` algorithm (made for QAT checkpoints),
which reads the scale and codes back from those floats, so the file holds the same weights
bit for bit. Where that algorithm cannot read a layer back (it takes the smallest gap between
a block's values as the scale: a block coded only 0, 3 and 7 defeats it), the layer's own
codes and scales are written into its int4 tensors after quantization. Every other matmul
(quantized on another grid: affine groups of 128, NF4, k-means...; or float) is rounded to
nearest onto LiteRT's grid as before, and the report says which is which.

The converter emits a GATHER for the token embedding, which the quantizer leaves float32;
`gather_to_embedding_lookup` turns it into the equivalent EMBEDDING_LOOKUP, which it
quantizes int8 per row (a tied output head, int8 per row too, reads the same table). Not int4:
LiteRT 2.3's EMBEDDING_LOOKUP kernel returns wrong rows from int4 tables.

Example:
    >>> flatbuffer, report = quantize_int4(float_flatbuffer, linear_names, quantized_names,
    ...                                    tied_head=True)
    >>> report["copied"]       # layers whose codes and scales the file keeps exactly
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np

from tfcompress.core.progress import quiet
from tfcompress.export.llm_graph import HADAMARD_SCOPE, HEAD_SCOPE, linear_scope
from tfcompress.export.modes import INT4_BLOCK


def litert_recovers(w: np.ndarray, block: int = INT4_BLOCK, bits: int = 4) -> bool:
    """Whether ai_edge_quantizer's ``dequantized_weight_recovery`` gives back ``w`` exactly:
    ``w`` is a FULLY_CONNECTED weight ``(d_out, d_in)``, blocks of ``block`` along ``d_in``.

    True when every block is ``code * scale`` with int codes in ``[-2**(bits-1), 2**(bits-1))``
    and a scale that survives LiteRT's bfloat16/float16 storage (what `Quantizer("litert", 4,
    "group", group_size=32)` makes); the recovered scale is the smallest gap between the
    block's absolute values, so this replays the algorithm rather than trusting a flag.

    Example:
        >>> litert_recovers(Quantizer("litert", 4, "group", group_size=32).roundtrip(w).T)
        True
    """
    import ml_dtypes
    from ai_edge_quantizer import qtyping
    from ai_edge_quantizer.algorithms.uniform_quantize import dequantized_weight_recovery as rec
    from ai_edge_quantizer.algorithms.uniform_quantize import uniform_quantize_tensor as uqt

    w = np.asarray(w, np.float32)
    if w.ndim != 2 or w.shape[1] % block or not np.all(np.isfinite(w)):
        return False
    zero_point, scale = rec.get_zp_scale_from_dequantized_symmetric_weights(w, 1, block)
    params = qtyping.UniformQuantParams(num_bits=bits, quantized_dimension=1, scale=scale,
                                        zero_point=zero_point, symmetric=True, block_size=block)
    codes = uqt.uniform_quantize(w, params, is_blockwise_quant=True)
    stored = scale.astype(ml_dtypes.bfloat16).astype(np.float16).astype(np.float32)
    back = uqt.uniform_dequantize(codes, dataclasses.replace(params, scale=stored))
    return bool(np.array_equal(back.astype(np.float32), w))


def _op_name(model, op) -> str:
    from ai_edge_litert.tools.flatbuffer_utils import get_builtin_code_from_operator_code
    from ai_edge_quantizer.utils import tfl_flatbuffer_utils as fu

    code = get_builtin_code_from_operator_code(model.operatorCodes[op.opcodeIndex])
    return str(fu.TFL_OP_CODE_TO_NAME.get(code, code)).rsplit(".", 1)[-1]


def gather_to_embedding_lookup(model) -> int:
    """Rewrite (in place, a flatbuffer ``ModelT``) every GATHER of a constant 2-D float table
    along axis 0 by 1-D int32 ids as EMBEDDING_LOOKUP(ids, table): the same rows, in the op
    LiteRT's quantizer and kernels handle with an int8/int4 table. Returns how many."""
    from ai_edge_litert import schema_py_generated as schema

    lookup_index = None
    count = 0
    for subgraph in model.subgraphs:
        for op in subgraph.operators:
            if _op_name(model, op) != "GATHER" or len(op.inputs) != 2:
                continue
            table, ids = (subgraph.tensors[i] for i in op.inputs)
            options = op.builtinOptions
            if (table.type != schema.TensorType.FLOAT32 or len(table.shape) != 2
                    or model.buffers[table.buffer].data is None
                    or ids.type != schema.TensorType.INT32 or len(ids.shape) != 1
                    or (options is not None and (options.axis or options.batchDims))):
                continue
            if lookup_index is None:
                lookup_index = _opcode_index(model, schema.BuiltinOperator.EMBEDDING_LOOKUP)
            op.opcodeIndex = lookup_index
            op.inputs = [op.inputs[1], op.inputs[0]]
            op.builtinOptionsType, op.builtinOptions = schema.BuiltinOptions.NONE, None
            count += 1
    return count


def _opcode_index(model, builtin: int) -> int:
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools.flatbuffer_utils import get_builtin_code_from_operator_code

    for i, code in enumerate(model.operatorCodes):
        if get_builtin_code_from_operator_code(code) == builtin:
            return i
    code = schema.OperatorCodeT()
    code.builtinCode = builtin
    code.deprecatedBuiltinCode = min(builtin, 127)
    code.version = 1
    model.operatorCodes.append(code)
    return len(model.operatorCodes) - 1


def _weights_by_layer(model, names) -> dict[str, list[np.ndarray]]:
    """The FULLY_CONNECTED weights of each linear map in ``names`` (found by its scope),
    over every signature's subgraph."""
    from ai_edge_quantizer.utils import tfl_flatbuffer_utils as fu

    scopes = {f"{linear_scope(name)}/": name for name in names}
    found: dict[str, list[np.ndarray]] = {}
    for subgraph in model.subgraphs:
        for op in subgraph.operators:
            if _op_name(model, op) != "FULLY_CONNECTED":
                continue
            scope = fu.get_op_scope(op, subgraph.tensors)
            for prefix, name in scopes.items():
                if prefix in scope:
                    data = fu.get_tensor_data(subgraph.tensors[op.inputs[1]], model.buffers)
                    found.setdefault(name, []).append(data)
    return found


def _writable(grid, weights: list[np.ndarray]) -> bool:
    """Whether a layer's ``(codes, scale, group_rows)`` can be written into LiteRT's blockwise
    int4 tensors as they are: groups of `INT4_BLOCK`, codes in int4's range, scales that
    float16 holds exactly, and FULLY_CONNECTED weights (``(d_out, d_in)``) equal to
    ``codes * scale`` (the converter did not change them)."""
    codes, scale, group = grid
    if group != INT4_BLOCK or codes.min() < -8 or codes.max() > 7 or not weights:
        return False
    if not np.array_equal(scale.astype(np.float16).astype(np.float32), scale):
        return False
    w = (codes.astype(np.float32) * np.repeat(scale, group, axis=0)[: len(codes)]).T
    return all(x.shape == w.shape and np.array_equal(x, w) for x in weights)


def _write_codes(flatbuffer: bytes, grids: dict) -> bytes:
    """Overwrite the blockwise int4 weights (packed two's-complement nibbles, low first) and
    float16 block scales of the layers in ``grids`` with their own codes and scales."""
    from ai_edge_litert.tools import flatbuffer_utils as fbu
    from ai_edge_quantizer.utils import tfl_flatbuffer_utils as fu

    model = fbu.read_model_from_bytearray(flatbuffer)
    done: set[int] = set()
    for subgraph in model.subgraphs:
        for op in subgraph.operators:
            if _op_name(model, op) != "FULLY_CONNECTED":
                continue
            tensor = subgraph.tensors[op.inputs[1]]
            name = _decoder_name(fu.get_tensor_name(tensor))
            if name not in grids:
                continue
            codes, scale, _ = grids[name]
            if tensor.buffer not in done:
                flat = codes.T.reshape(-1).astype(np.uint8) & 15
                model.buffers[tensor.buffer].data = (flat[0::2] | (flat[1::2] << 4)).astype(
                    np.uint8)
                done.add(tensor.buffer)
            scales = subgraph.tensors[tensor.quantization.details.scales]
            model.buffers[scales.buffer].data = np.ascontiguousarray(
                scale.T.astype(np.float16)).view(np.uint8).reshape(-1)
    return bytes(fbu.convert_object_to_bytearray(model))


def quantize_int4(flatbuffer: bytes, linear: list[str], quantized: list[str],
                  tied_head: bool, codes: dict | None = None,
                  int8: tuple[str, ...] = ()) -> tuple[bytes, dict]:
    """Quantize a float ``flatbuffer`` of `export_llm` to blockwise int4 (block 32), an int8
    per-channel output head and an int8 per-row embedding table.

    ``linear``: the `Decoder` linear maps; ``quantized``: those whose Keras layer held codes;
    ``codes``: their ``(codes, scale, group_rows)`` where they are signed integer codes
    (`tfcompress.quantize.storage.signed_codes`). A quantized map whose weights LiteRT
    recovers exactly (`litert_recovers`) is quantized by ``dequantized_weight_recovery``; one
    it cannot read back (a block whose codes have no gap of one, e.g. only 0, 3 and 7) but
    whose own codes fit (`_writable`) has them written into the file after quantization. Both
    keep their weights exactly, the head included (then blockwise int4 too). Returns the
    flatbuffer and a report: ``copied`` (kept exactly), ``rerounded`` (quantized layers on
    another grid, rounded again by LiteRT), ``embedding`` (how the token table is stored).
    The maps in ``int8`` (`tfcompress.export.llm_budget`'s choice) are int8 per channel
    instead, like the head.
    """
    from ai_edge_litert.tools import flatbuffer_utils as fbu
    from ai_edge_quantizer import quantizer, recipe
    from ai_edge_quantizer.algorithm_manager import AlgorithmName

    codes = codes or {}
    model = fbu.read_model_from_bytearray(flatbuffer)
    lookups = gather_to_embedding_lookup(model)
    weights = _weights_by_layer(model, linear)
    # every FULLY_CONNECTED of the layer (one per signature that uses it: prefill drops the
    # last block's unused matmuls) must come back exactly
    quantized = [name for name in quantized if name not in int8]
    recovered = [name for name in quantized if weights.get(name)
                 and len({w.shape for w in weights[name]}) == 1
                 and all(litert_recovers(w) for w in weights[name])]
    written = {name: codes[name] for name in quantized if name not in recovered
               and name in codes and _writable(codes[name], weights.get(name, []))}
    if lookups:
        flatbuffer = fbu.convert_object_to_bytearray(model)
    del model, weights
    head = {**recipe.dynamic_wi8_afp32()[0], "regex": f".*{HEAD_SCOPE}.*",
            "operation": "FULLY_CONNECTED"}
    entries = recipe.dynamic_wi4b32_afp32() + [head]
    # int8 per row: with a tied head both ops read one table; LiteRT 2.3's EMBEDDING_LOOKUP
    # kernel returns wrong rows from int4 tables (blockwise and per row alike: logits of a
    # tiny Llama off by 80% of their range), so the table is not int4
    entries.append({**head, "regex": ".*", "operation": "EMBEDDING_LOOKUP"})
    exact = recipe.dynamic_wi4b32_afp32(algorithm_key=AlgorithmName.DEQUANTIZED_WEIGHT_RECOVERY)
    entries += [{**exact[0], "regex": f".*{linear_scope(name)}/.*",
                 "operation": "FULLY_CONNECTED"} for name in recovered]
    # written layers (the head too) take the plain int4 entry, then get their own codes
    plain = recipe.dynamic_wi4b32_afp32()[0]
    entries += [{**plain, "regex": f".*{linear_scope(name)}/.*",
                 "operation": "FULLY_CONNECTED"} for name in written]
    entries += [{**head, "regex": f".*{linear_scope(name)}/.*"} for name in int8]
    # the online Hadamard's factors (at most 16 x 16: no int4 block fits) stay float (its
    # scope is suffixed _1, _2.. after the first layer)
    entries.append({"regex": f".*{HADAMARD_SCOPE}.*", "operation": "FULLY_CONNECTED",
                    "algorithm_key": AlgorithmName.NO_QUANTIZE})
    qt = quantizer.Quantizer(bytes(flatbuffer))
    qt.load_quantization_recipe(entries)
    with quiet():
        out = bytes(qt.quantize().quantized_model)
    if written:
        out = _write_codes(out, written)
    embedding = ("float32 (GATHER)" if not lookups else
                 f"int8 per row (EMBEDDING_LOOKUP){', shared with the tied head' * tied_head}")
    copied = [name for name in quantized if name in recovered or name in written]
    return out, {"copied": copied, "rerounded": [n for n in quantized if n not in copied],
                 "embedding": embedding}


def int4_weights(flatbuffer: bytes) -> dict[str, np.ndarray]:
    """The blockwise int4 matmul weights of an `export_llm` file, dequantized as LiteRT's
    kernels see them (packed two's-complement nibbles, low first, times their float16 block
    scales), by `Decoder` name as ``(d_in, d_out)`` matrices: what to compare with the
    Keras model's decoded weights.

    Example:
        >>> int4_weights(Path("bundle/model.tflite").read_bytes())["0.q"].shape
        (576, 576)
    """
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils as fbu
    from ai_edge_quantizer.utils import tfl_flatbuffer_utils as fu

    model = fbu.read_model_from_bytearray(flatbuffer)
    out: dict[str, np.ndarray] = {}
    for subgraph in model.subgraphs:
        for op in subgraph.operators:
            if _op_name(model, op) != "FULLY_CONNECTED":
                continue
            tensor = subgraph.tensors[op.inputs[1]]
            quant = tensor.quantization
            if (tensor.type != schema.TensorType.INT4 or quant is None
                    or quant.detailsType != schema.QuantizationDetails.BlockwiseQuantization):
                continue
            name = _decoder_name(fu.get_tensor_name(tensor))
            if name is None or name in out:
                continue
            packed = np.frombuffer(model.buffers[tensor.buffer].data, np.uint8)
            nibbles = np.stack([packed & 15, packed >> 4], -1).reshape(-1).astype(np.int8)
            d_out, d_in = tensor.shape
            codes = np.where(nibbles > 7, nibbles - 16, nibbles)[: d_out * d_in]
            scales = fu.get_tensor_data(subgraph.tensors[quant.details.scales], model.buffers)
            w = codes.reshape(d_out, d_in).astype(np.float32) * np.repeat(
                scales.astype(np.float32).reshape(d_out, -1), quant.details.blockSize, axis=1)
            out[name] = w.T
    return out


def _decoder_name(tensor_name: str) -> str | None:
    """The `Decoder` linear map a tensor belongs to, from its `linear_scope`:
    ``tfc_0_q/MatMul`` -> ``0.q``, ``lm_head/tfc_head/MatMul`` -> ``head``; else None."""
    match = re.search(r"tfc_(\w+?)/", tensor_name)
    if match is None:
        return None
    block, _, part = match.group(1).partition("_")
    return f"{block}.{part}" if block.isdigit() and part else match.group(1)
