"""What is inside a ``.tflite`` file: operators, tensor types, and which operators the
XNNPACK delegate (LiteRT's default CPU accelerator) actually took.

`delegated` is pure graph logic over the interpreter's node list: after XNNPACK is applied,
the interpreter keeps every original node and appends one ``DELEGATE`` node per partition
whose inputs and outputs are the tensors that cross the partition's border.

Example:
    >>> info = inspect_tflite("model.tflite")
    >>> info["ops"], info["not_delegated"]
    ({'FULLY_CONNECTED': 9, 'GATHER': 1, ...}, {'GATHER': 1})
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path


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
    """Operator counts, tensor dtype counts, XNNPACK partitions and non-delegated operators."""
    from ai_edge_litert.interpreter import Interpreter

    content = model if isinstance(model, bytes) else Path(model).read_bytes()
    interpreter = Interpreter(model_content=content)
    interpreter.allocate_tensors()
    nodes = interpreter._get_ops_details()  # the public API has no node list
    outputs = {int(d["index"]) for d in interpreter.get_output_details()}
    originals = [n for n in nodes if n["op_name"] != "DELEGATE"]
    flags = delegated(nodes, outputs)
    return {
        "ops": dict(sorted(Counter(n["op_name"] for n in originals).items())),
        "tensor_dtypes": dict(sorted(Counter(
            d["dtype"].__name__ for d in interpreter.get_tensor_details()).items())),
        "xnnpack_partitions": sum(n["op_name"] == "DELEGATE" for n in nodes),
        "not_delegated": dict(sorted(Counter(
            n["op_name"] for n, f in zip(originals, flags, strict=True) if not f).items())),
    }


def describe_ops(counts: dict[str, int]) -> str:
    """``{"GATHER": 1, "SELECT": 2}`` -> ``"GATHER x1, SELECT x2"``."""
    return ", ".join(f"{k} x{v}" for k, v in counts.items()) or "none"
