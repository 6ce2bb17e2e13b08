"""What is inside a ``.tflite`` file: operators, tensor types, which operators the XNNPACK
delegate (LiteRT's default CPU accelerator) actually took, which ones compute in float, and
which ones fall outside the operator set of integer-only NPUs.

`delegated` is pure graph logic over the interpreter's node list: after XNNPACK is applied,
the interpreter keeps every original node and appends one ``DELEGATE`` node per partition
whose inputs and outputs are the tensors that cross the partition's border.

Example:
    >>> info = inspect_tflite("model.tflite")
    >>> info["ops"], info["not_delegated"]
    ({'FULLY_CONNECTED': 9, 'GATHER': 1, ...}, {'GATHER': 1})
    >>> info["float_ops"], info["outside_npu"]      # for a full-integer file
    ({}, {'BATCH_MATMUL': 8, 'GATHER': 1, 'RSQRT': 9, ...})
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

# The operators of Coral's Edge TPU compiler table: the strictest widely used integer-only NPU
# set, so an op outside it is one to check against the target accelerator's own list.
NPU_OPS = frozenset({
    "ADD", "AVERAGE_POOL_2D", "CONCATENATION", "CONV_2D", "DEPTHWISE_CONV_2D",
    "FULLY_CONNECTED", "L2_NORMALIZATION", "LOGISTIC", "MAXIMUM", "MAX_POOL_2D", "MEAN",
    "MINIMUM", "MUL", "PACK", "PAD", "QUANTIZE", "RELU", "RELU6", "RELU_N1_TO_1", "RESHAPE",
    "RESIZE_BILINEAR", "RESIZE_NEAREST_NEIGHBOR", "SLICE", "SOFTMAX", "SPACE_TO_DEPTH",
    "SPLIT", "SQUEEZE", "STRIDED_SLICE", "SUB", "TANH", "TRANSPOSE", "TRANSPOSE_CONV",
})


def float_nodes(nodes: list[dict], dtypes: dict[int, type]) -> list[bool]:
    """For each node, whether it reads or writes a float tensor (not integer end to end)."""
    floating = {i for i, d in dtypes.items() if np.issubdtype(d, np.floating)}
    return [bool({int(t) for t in (*n["inputs"], *n["outputs"]) if int(t) >= 0} & floating)
            for n in nodes]


def delegated(nodes: list[dict], graph_outputs: set[int]) -> list[bool]:
    """For each non-``DELEGATE`` node (in order), whether a delegate partition runs it.

    ``nodes`` are dicts with ``op_name``, ``inputs``, ``outputs`` (tensor indices) in the
    interpreter's topological order, delegate nodes last. A node is delegated when one of its
    outputs leaves a partition; it runs on the CPU kernels when an output is a graph output or
    feeds a partition; otherwise it shares the fate of the nodes that consume its outputs.
    """
    originals = [n for n in nodes if n["op_name"] != "DELEGATE"]
    partitions = [n for n in nodes if n["op_name"] == "DELEGATE"]
    leaves = {t for p in partitions for t in p["outputs"]}
    feeds = {t for p in partitions for t in p["inputs"]}
    consumers: dict[int, list[int]] = {}
    for i, node in enumerate(originals):
        for t in node["inputs"]:
            consumers.setdefault(int(t), []).append(i)
    status: list[bool] = [False] * len(originals)
    for i in range(len(originals) - 1, -1, -1):
        outs = {int(t) for t in originals[i]["outputs"]}
        if outs & leaves:
            status[i] = True
        elif outs & (feeds | graph_outputs):
            status[i] = False
        else:
            users = [j for t in outs for j in consumers.get(t, ()) if j > i]
            status[i] = bool(users) and status[users[0]]
    return status


def inspect_tflite(model: str | Path | bytes) -> dict:
    """Operator counts, tensor dtype counts, XNNPACK partitions and non-delegated operators;
    ``float_ops`` (operators touching a float tensor) and ``outside_npu`` (operators not in
    `NPU_OPS`) say what keeps a quantized file off an integer-only accelerator."""
    from ai_edge_litert.interpreter import Interpreter

    content = model if isinstance(model, bytes) else Path(model).read_bytes()
    interpreter = Interpreter(model_content=content)
    interpreter.allocate_tensors()
    nodes = interpreter._get_ops_details()  # the public API has no node list
    outputs = {int(d["index"]) for d in interpreter.get_output_details()}
    originals = [n for n in nodes if n["op_name"] != "DELEGATE"]
    flags = delegated(nodes, outputs)
    details = interpreter.get_tensor_details()
    floats = float_nodes(originals, {int(d["index"]): d["dtype"] for d in details})
    return {
        "ops": dict(sorted(Counter(n["op_name"] for n in originals).items())),
        "tensor_dtypes": dict(sorted(Counter(
            d["dtype"].__name__ for d in details).items())),
        "xnnpack_partitions": sum(n["op_name"] == "DELEGATE" for n in nodes),
        "not_delegated": dict(sorted(Counter(
            n["op_name"] for n, f in zip(originals, flags, strict=True) if not f).items())),
        "float_ops": dict(sorted(Counter(
            n["op_name"] for n, f in zip(originals, floats, strict=True) if f).items())),
        "outside_npu": dict(sorted(Counter(
            n["op_name"] for n in originals if n["op_name"] not in NPU_OPS).items())),
    }


def describe_ops(counts: dict[str, int]) -> str:
    """``{"GATHER": 1, "SELECT": 2}`` -> ``"GATHER x1, SELECT x2"``."""
    return ", ".join(f"{k} x{v}" for k, v in counts.items()) or "none"
