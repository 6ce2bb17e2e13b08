"""Blockwise int4 weights that keep a quantized model's codes: the one int4 path of
``export_llm(mode="int4")`` (`quantize_int4` on the `Decoder` graph, layers found by their
`linear_scope`) and ``export_tflite(mode="int4")`` (`quantize_keras_int4`, layers found by
their weights in the converted window graph).

LiteRT's int4 (``ai_edge_quantizer``'s ``dynamic_wi4b32_afp32``) is symmetric, in blocks of
`INT4_BLOCK` input rows, with float16 scales rounded to bfloat16's significand. A layer that
`tfcompress.quantize` put on exactly that grid (``GPTQConfig.litert_int4()``, scheme
``"litert"``) decodes to floats that are code x scale; such a layer is quantized by
ai_edge_quantizer's own ``dequantized_weight_recovery`` algorithm (made for QAT checkpoints),
which reads the scale and codes back from those floats, so the file holds the same weights
bit for bit. Where that algorithm cannot read a layer back (it takes the smallest gap between
a block's values as the scale: a block coded only 0, 3 and 7 defeats it), the layer's own
codes and scales are written into its int4 tensors after quantization. Every other matmul
(quantized on another grid: affine groups of 128, NF4, k-means...; or float) is rounded to
nearest onto LiteRT's grid as before, and the report says which is which.

The converter emits a GATHER for the token embedding, which the quantizer leaves float32;
`gather_to_embedding_lookup` turns it into the equivalent EMBEDDING_LOOKUP (between two
RESHAPEs for a window's ``(batch, seq)`` ids: the op takes 1-D ids), which it quantizes int8
per row (a tied output head, int8 per row too, reads the same table). Not int4: LiteRT 2.3's
EMBEDDING_LOOKUP kernel returns wrong rows from int4 tables.

Example:
    >>> flatbuffer, report = quantize_int4(float_flatbuffer, llm_scopes(linear_names),
    ...                                    quantized_names, tied_head=True)
    >>> report["copied"]       # layers whose codes and scales the file keeps exactly
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable

import numpy as np

from tfcompress.core.layers import iter_layers, kernel_matrix
from tfcompress.core.progress import quiet
from tfcompress.export.llm_graph import HADAMARD_SCOPE, HEAD_SCOPE, linear_scope
from tfcompress.export.modes import INT4_BLOCK
from tfcompress.export.shared_quant import share_tables
from tfcompress.quantize.storage import is_quantized, signed_codes


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
    along axis 0 by int32 ids as EMBEDDING_LOOKUP(ids, table): the same rows, in the op
    LiteRT's quantizer and kernels handle with an int8/int4 table. Ids of rank 2+ (a window's
    ``(batch, seq)``) of a fixed shape are flattened first and the rows shaped back (the op
    takes 1-D ids). Returns how many."""
    from ai_edge_litert import schema_py_generated as schema

    count = 0
    for subgraph in model.subgraphs:
        operators = []
        for op in subgraph.operators:
            operators.append(op)
            if _op_name(model, op) != "GATHER" or len(op.inputs) != 2:
                continue
            table, ids = (subgraph.tensors[i] for i in op.inputs)
            options = op.builtinOptions
            if (table.type != schema.TensorType.FLOAT32 or len(table.shape) != 2
                    or model.buffers[table.buffer].data is None
                    or ids.type != schema.TensorType.INT32 or not _fixed(ids)
                    or (options is not None and (options.axis or options.batchDims))):
                continue
            op.opcodeIndex = _opcode_index(model, schema.BuiltinOperator.EMBEDDING_LOOKUP)
            op.inputs = [op.inputs[1], op.inputs[0]]
            op.builtinOptionsType, op.builtinOptions = schema.BuiltinOptions.NONE, None
            if len(ids.shape) > 1:
                operators[-1:] = _flat_lookup(model, subgraph, op, int(table.shape[1]))
            count += 1
        subgraph.operators = operators
    return count


def _fixed(tensor) -> bool:
    """Whether a tensor's shape has no unknown dimension (-1 in its signature)."""
    return tensor.shapeSignature is None or all(d >= 0 for d in tensor.shapeSignature)


def _flat_lookup(model, subgraph, lookup, width: int) -> list:
    """``[RESHAPE ids to 1-D, lookup, RESHAPE rows to the GATHER's output]`` around an
    EMBEDDING_LOOKUP whose ids have rank 2+ (all shapes fixed)."""
    from ai_edge_litert import schema_py_generated as schema

    ids, out = lookup.inputs[0], lookup.outputs[0]
    n = int(np.prod(subgraph.tensors[ids].shape))
    name = subgraph.tensors[out].name
    name = name.decode() if isinstance(name, bytes) else name
    flat = _add_tensor(model, subgraph, f"{name}/ids", [n], schema.TensorType.INT32)
    rows = _add_tensor(model, subgraph, f"{name}/rows", [n, width], schema.TensorType.FLOAT32)
    lookup.inputs, lookup.outputs = [flat, lookup.inputs[1]], [rows]
    shape = [int(d) for d in subgraph.tensors[out].shape]
    return [_reshape(model, subgraph, ids, flat, [n]), lookup,
            _reshape(model, subgraph, rows, out, shape)]


def _add_tensor(model, subgraph, name: str, shape: list[int], dtype: int,
                data: np.ndarray | None = None) -> int:
    """Append a tensor (a constant with ``data``) to ``subgraph``; its index."""
    from ai_edge_litert import schema_py_generated as schema

    buffer = schema.BufferT()
    buffer.data = None if data is None else np.ascontiguousarray(data).view(np.uint8)
    model.buffers.append(buffer)
    tensor = schema.TensorT()
    tensor.name, tensor.type, tensor.buffer = name, dtype, len(model.buffers) - 1
    tensor.shape = np.asarray(shape, np.int32)
    subgraph.tensors.append(tensor)
    return len(subgraph.tensors) - 1


def _reshape(model, subgraph, source: int, target: int, shape: list[int]):
    """A RESHAPE op from tensor ``source`` to tensor ``target`` of ``shape``."""
    from ai_edge_litert import schema_py_generated as schema

    target_name = subgraph.tensors[target].name
    target_name = target_name.decode() if isinstance(target_name, bytes) else target_name
    new_shape = _add_tensor(model, subgraph, f"{target_name}/shape", [len(shape)],
                            schema.TensorType.INT32, np.asarray(shape, np.int32))
    op = schema.OperatorT()
    op.opcodeIndex = _opcode_index(model, schema.BuiltinOperator.RESHAPE)
    op.inputs, op.outputs = [source, new_shape], [target]
    op.builtinOptionsType = schema.BuiltinOptions.ReshapeOptions
    op.builtinOptions = schema.ReshapeOptionsT()
    op.builtinOptions.newShape = list(shape)
    return op


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


def llm_scopes(names: Iterable[str]) -> dict[str, str]:
    """Each `Decoder` linear map's op-scope regex in `export_llm`'s graph (`linear_scope`)."""
    return {name: f"{re.escape(linear_scope(name))}/" for name in names}


def _layer_ops(model, scopes: dict[str, str]):
    """``(layer name, subgraph, op)`` of every FULLY_CONNECTED op whose scope (its outputs'
    names) matches a regex of ``scopes`` (``re.search``, as the quantizer's recipes)."""
    from ai_edge_quantizer.utils import tfl_flatbuffer_utils as fu

    for subgraph in model.subgraphs:
        for op in subgraph.operators:
            if _op_name(model, op) != "FULLY_CONNECTED":
                continue
            scope = fu.get_op_scope(op, subgraph.tensors)
            name = next((n for n, regex in scopes.items() if re.search(regex, scope)), None)
            if name is not None:
                yield name, subgraph, op


def _weights_by_layer(model, scopes: dict[str, str]) -> dict[str, list[np.ndarray]]:
    """The FULLY_CONNECTED weights of each layer of ``scopes`` over every signature's
    subgraph."""
    from ai_edge_quantizer.utils import tfl_flatbuffer_utils as fu

    found: dict[str, list[np.ndarray]] = {}
    for name, subgraph, op in _layer_ops(model, scopes):
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


def _write_codes(model, grids: dict, scopes: dict[str, str]) -> None:
    """Overwrite, in place on a ``ModelT``, the blockwise int4 weights (packed two's-complement
    nibbles, low first) and float16 block scales of the layers in ``grids`` with their own
    codes and scales."""
    done: set[int] = set()
    for name, subgraph, op in _layer_ops(model, {n: scopes[n] for n in grids}):
        tensor = subgraph.tensors[op.inputs[1]]
        codes, scale, _ = grids[name]
        if tensor.buffer not in done:
            flat = codes.T.reshape(-1).astype(np.uint8) & 15
            model.buffers[tensor.buffer].data = (flat[0::2] | (flat[1::2] << 4)).astype(np.uint8)
            done.add(tensor.buffer)
        scales = subgraph.tensors[tensor.quantization.details.scales]
        model.buffers[scales.buffer].data = np.ascontiguousarray(
            scale.T.astype(np.float16)).view(np.uint8).reshape(-1)


def quantize_int4(flatbuffer: bytes, scopes: dict[str, str], quantized: list[str],
                  tied_head: bool, codes: dict | None = None, int8: tuple[str, ...] = (),
                  head: str | None = HEAD_SCOPE,
                  floats: dict[str, np.ndarray] | None = None,
                  share: bool = False) -> tuple[bytes, dict]:
    """Quantize a float ``flatbuffer`` (of `export_llm` or `export_tflite`) to blockwise int4
    (block 32), an int8 per-channel output head and an int8 per-row embedding table.

    ``scopes``: each linear map's op-scope regex (`llm_scopes`, `keras_scopes`);
    ``quantized``: those whose Keras layer held codes; ``codes``: their ``(codes, scale,
    group_rows)`` where they are signed integer codes
    (`tfcompress.quantize.storage.signed_codes`). A quantized map whose weights LiteRT
    recovers exactly (`litert_recovers`) is quantized by ``dequantized_weight_recovery``; one
    it cannot read back (a block whose codes have no gap of one, e.g. only 0, 3 and 7) but
    whose own codes fit (`_writable`) has them written into the file after quantization. Both
    keep their weights exactly, the head included (then blockwise int4 too). Returns the
    flatbuffer and a report: ``copied`` (kept exactly), ``rerounded`` (quantized layers on
    another grid, rounded again by LiteRT), ``embedding`` (how the token table is stored).
    The maps in ``int8`` (`tfcompress.export.llm_budget`'s choice) are int8 per channel
    instead, like the head (the ops whose scope matches the regex ``head``; None: no head
    of its own, int4 like the rest); those of ``floats`` (``{map: (d_in, d_out)}``, the
    float weights a quantized map came from) are rounded to int8 from these, not from their
    int4 values. ``share``: each weight's quantization table once for all signatures
    (`shared_quant.share_tables`), in the rewrite that writes the codes.
    """
    from ai_edge_litert.tools import flatbuffer_utils as fbu
    from ai_edge_quantizer import quantizer

    codes = codes or {}
    model = fbu.read_model_from_bytearray(flatbuffer)
    lookups = gather_to_embedding_lookup(model)
    floats = {name: w for name, w in (floats or {}).items() if name in int8}
    _replace_weights(model, {name: scopes[name] for name in floats}, floats)
    weights = _weights_by_layer(model, scopes)
    # every FULLY_CONNECTED of the layer (one per signature that uses it: prefill drops the
    # last block's unused matmuls) must come back exactly
    quantized = [name for name in quantized if name not in int8]
    recovered = [name for name in quantized if weights.get(name)
                 and len({w.shape for w in weights[name]}) == 1
                 and all(litert_recovers(w) for w in weights[name])]
    written = {name: codes[name] for name in quantized if name not in recovered
               and name in codes and _writable(codes[name], weights.get(name, []))}
    if lookups or floats:
        flatbuffer = fbu.convert_object_to_bytearray(model)
    del model, weights
    qt = quantizer.Quantizer(bytes(flatbuffer))
    qt.load_quantization_recipe(_recipe({n: scopes[n] for n in recovered},
                                        {n: scopes[n] for n in written},
                                        [scopes[n] for n in int8], head))
    with quiet():
        out = bytes(qt.quantize().quantized_model)
    if written or share:  # one parse and one pack of the quantized file for both
        model = fbu.read_model_from_bytearray(out)
        _write_codes(model, written, scopes)
        if written or (share_tables(model) if share else 0):
            out = bytes(fbu.convert_object_to_bytearray(model))
    embedding = ("float32 (GATHER)" if not lookups else
                 f"int8 per row (EMBEDDING_LOOKUP){', shared with the tied head' * tied_head}")
    copied = [name for name in quantized if name in recovered or name in written]
    return out, {"copied": copied, "rerounded": [n for n in quantized if n not in copied],
                 "embedding": embedding}


def _replace_weights(model, scopes: dict[str, str], floats: dict[str, np.ndarray]) -> None:
    """Write ``floats[name]`` (``(d_in, d_out)``) into every float FULLY_CONNECTED weight of
    the layer ``name`` of ``scopes`` (in place, a flatbuffer ``ModelT``)."""
    from ai_edge_litert import schema_py_generated as schema

    for name, subgraph, op in _layer_ops(model, scopes):
        tensor = subgraph.tensors[op.inputs[1]]
        w = np.ascontiguousarray(np.asarray(floats[name], np.float32).T)
        if tensor.type != schema.TensorType.FLOAT32 or tuple(tensor.shape) != w.shape:
            raise ValueError(f"{name}: its FULLY_CONNECTED weight is not a float32 "
                             f"{w.shape} matrix")  # the graph was not traced from this map
        model.buffers[tensor.buffer].data = w.view(np.uint8).reshape(-1)


def _recipe(recovered: dict[str, str], written: dict[str, str], int8: list[str],
            head: str | None) -> list[dict]:
    """`quantize_int4`'s ai_edge_quantizer recipe (later entries win): blockwise int4, int8
    per channel for ``head`` and the ``int8`` scopes, int8 per row for the embedding table,
    ``dequantized_weight_recovery`` for the ``recovered`` layers' scopes."""
    from ai_edge_quantizer import recipe
    from ai_edge_quantizer.algorithm_manager import AlgorithmName

    per_channel = {**recipe.dynamic_wi8_afp32()[0], "operation": "FULLY_CONNECTED"}
    entries = recipe.dynamic_wi4b32_afp32()
    if head is not None:
        entries.append({**per_channel, "regex": head})
    # int8 per row: with a tied head both ops read one table; LiteRT 2.3's EMBEDDING_LOOKUP
    # kernel returns wrong rows from int4 tables (blockwise and per row alike: logits of a
    # tiny Llama off by 80% of their range), so the table is not int4
    entries.append({**per_channel, "regex": ".*", "operation": "EMBEDDING_LOOKUP"})
    exact = recipe.dynamic_wi4b32_afp32(algorithm_key=AlgorithmName.DEQUANTIZED_WEIGHT_RECOVERY)
    entries += [{**exact[0], "regex": regex, "operation": "FULLY_CONNECTED"}
                for regex in recovered.values()]
    # written layers (the head too) take the plain int4 entry, then get their own codes
    plain = recipe.dynamic_wi4b32_afp32()[0]
    entries += [{**plain, "regex": regex, "operation": "FULLY_CONNECTED"}
                for regex in written.values()]
    entries += [{**per_channel, "regex": regex} for regex in int8]
    # the online Hadamard's factors (at most 16 x 16: no int4 block fits) stay float (its
    # scope is suffixed _1, _2.. after the first layer)
    return entries + [{"regex": f".*{HADAMARD_SCOPE}.*", "operation": "FULLY_CONNECTED",
                       "algorithm_key": AlgorithmName.NO_QUANTIZE}]


def keras_scopes(flatbuffer: bytes, model) -> dict[str, str]:
    """The op-scope regex of each `tfcompress.quantize`d layer of a Keras ``model`` in a float
    ``flatbuffer`` converted from it (with its decoded weights): the FULLY_CONNECTED ops
    whose weight is the layer's ``(d_in, d_out)`` kernel, transposed, value for value (the
    converter's own op names repeat and change with tracing, so they cannot name a layer).
    Layers no such op holds (an embedding, a matmul the converter changed) are left out."""
    from ai_edge_litert.tools import flatbuffer_utils as fbu
    from ai_edge_quantizer.utils import tfl_flatbuffer_utils as fu

    kernels = {path: kernel_matrix(layer).T for path, layer in iter_layers(model)
               if is_quantized(layer)}
    graph = fbu.read_model_from_bytearray(flatbuffer)
    found: dict[str, list[str]] = {}
    for subgraph in graph.subgraphs:
        for op in subgraph.operators:
            if _op_name(graph, op) != "FULLY_CONNECTED":
                continue
            weight = fu.get_tensor_data(subgraph.tensors[op.inputs[1]], graph.buffers)
            if weight is None:
                continue
            for path, kernel in kernels.items():
                if kernel.shape == weight.shape and np.array_equal(kernel, weight):
                    found.setdefault(path, []).append(
                        f"^{re.escape(fu.get_op_scope(op, subgraph.tensors))}$")
    return {path: "|".join(regexes) for path, regexes in found.items()}


def quantize_keras_int4(flatbuffer: bytes, model) -> tuple[bytes, dict]:
    """`quantize_int4` for `export_tflite`'s float window ``flatbuffer`` of the Keras
    ``model`` (converted with its decoded weights): the quantized layers' codes kept as
    `export_llm` keeps them, every other matmul (the head too) rounded to blockwise int4,
    the token embedding int8 per row.

    Example:
        >>> flatbuffer, report = quantize_keras_int4(float_flatbuffer, gptq_model)
        >>> report["copied"]     # layer paths whose codes the file holds exactly
    """
    scopes = keras_scopes(flatbuffer, model)
    layers = [(path, layer) for path, layer in iter_layers(model) if is_quantized(layer)]
    codes = {path: signed_codes(layer) for path, layer in layers if path in scopes}
    return quantize_int4(flatbuffer, scopes, [path for path, _ in layers], False,
                         {path: grid for path, grid in codes.items() if grid is not None},
                         head=None)


def int4_weights(flatbuffer: bytes) -> dict[str, np.ndarray]:
    """The blockwise int4 matmul weights of an `export_llm` or `export_tflite` file,
    dequantized as LiteRT's kernels see them (packed two's-complement nibbles, low first,
    times their float16 block scales), as ``(d_in, d_out)`` matrices by `Decoder` name (else
    by the op's scope): what to compare with the Keras model's decoded weights.

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
            name = (_decoder_name(fu.get_tensor_name(tensor))
                    or fu.get_op_scope(op, subgraph.tensors))
            if name in out:
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
