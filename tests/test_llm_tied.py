"""export_llm stores a tied head's table once, in every mode (issue #25, item 4)."""

import numpy as np
import pytest

from tests.test_export_llm import PROMPT, tiny_int4_llama
from tfcompress.export.llm import export_llm, keras_logits
from tfcompress.export.llm_runner import LLMRunner
from tfcompress.models import generate

pytest.importorskip("ai_edge_litert")
VOCAB, D = 96, 32


def table_readers(path) -> dict[int, set[str]]:
    """``{buffer: op names}`` of the constant buffers holding a (VOCAB, D) table, over every
    signature's subgraph of the file."""
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils as fbu
    from ai_edge_litert.tools.flatbuffer_utils import get_builtin_code_from_operator_code

    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    model = fbu.read_model_from_bytearray(path.read_bytes())
    out: dict[int, set[str]] = {}
    for subgraph in model.subgraphs:
        for op in subgraph.operators:
            code = get_builtin_code_from_operator_code(model.operatorCodes[op.opcodeIndex])
            for i in op.inputs:
                t = subgraph.tensors[i] if i >= 0 else None
                if (t is not None and sorted(t.shape) == [D, VOCAB]
                        and model.buffers[t.buffer].data is not None):
                    out.setdefault(int(t.buffer), set()).add(names[code])
    return out


@pytest.mark.parametrize("mode", ["float32", "float16", "dynamic_int8", "int4"])
def test_tied_head_and_embedding_read_one_table(tmp_path, mode):
    model = tiny_int4_llama(None, vocab=VOCAB)
    export_llm(model, tmp_path, prefill_lengths=(8,), cache_length=32, mode=mode,
               verify_output=False, verbose=False)
    readers = table_readers(tmp_path / "model.tflite")
    assert len(readers) == 1, readers  # one (vocab x d) buffer in the whole file
    (ops,) = readers.values()
    # the lookup and the head both read it (float16: through its one DEQUANTIZE)
    if mode == "float16":
        assert ops == {"DEQUANTIZE"}
    else:
        assert "FULLY_CONNECTED" in ops and ops & {"GATHER", "EMBEDDING_LOOKUP"}
    if mode != "int4":  # a float toy's int4 drifts (its GPTQ copy is tested in test_export_llm)
        runner = LLMRunner(tmp_path)
        ours = list(runner.generate_ids(PROMPT, max_new_tokens=8))
        assert ours == generate(keras_logits(model), PROMPT, 8, stop_ids=runner.stop_ids)


def test_dynamic_int8_embedding_reads_the_heads_per_row_scales(tmp_path):
    from ai_edge_litert.interpreter import Interpreter

    model = tiny_int4_llama(None, vocab=VOCAB)
    result = export_llm(model, tmp_path, prefill_lengths=(8,), cache_length=32,
                        mode="dynamic_int8", verify_output=False, verbose=False)
    assert "EMBEDDING_LOOKUP" in result.ops and "GATHER" not in result.ops
    interpreter = Interpreter(model_path=str(tmp_path / "model.tflite"))
    tables = [d for s in range(len(interpreter.get_signature_list()))
              for d in interpreter.get_tensor_details(s) if tuple(d["shape"]) == (VOCAB, D)]
    assert tables and all(d["dtype"] == np.int8 for d in tables)
    assert all(len(d["quantization_parameters"]["scales"]) == VOCAB for d in tables)
    # int8 weights and activations quantized on the fly: 5 % of the logit range on this toy
    ids = np.asarray(PROMPT)
    got, want = LLMRunner(tmp_path).logits(ids), keras_logits(model)(ids[None])[0]
    assert np.abs(got - want).max() < 0.08 * np.abs(want).max()


@pytest.mark.parametrize("mode", ["float32", "dynamic_int8", "int4"])
def test_rotated_tied_model_keeps_one_table_and_its_size(tmp_path, mode):
    from tfcompress.quantize import rotate

    model = tiny_int4_llama(None, vocab=VOCAB)
    rotated = rotate(model, online=True, verbose=0)  # final_mix, online Hadamard (16 x 4)
    sizes = {}
    for name, m in (("plain", model), ("rotated", rotated)):
        sizes[name] = export_llm(m, tmp_path / name, prefill_lengths=(8,), cache_length=32,
                                 mode=mode, verify_output=False, verbose=False).bytes
    readers = table_readers(tmp_path / "rotated" / "model.tflite")
    assert len(readers) == 1, readers
    (ops,) = readers.values()
    assert "FULLY_CONNECTED" in ops and ops & {"GATHER", "EMBEDDING_LOOKUP"}
    # all it adds: the d x d mix (at most float32) and the online factors, float32 in at
    # most 2 layers x 2 signatures (SmolLM2: < 1 %, benchmarks/rotation.py)
    assert sizes["rotated"] - sizes["plain"] <= D * D * 4 + 4 * (16 ** 2 + 4 ** 2) * 4
    if mode == "int4":  # a float toy's int4 drifts (rotated or not: ~65 % of the range)
        return
    ids = np.asarray(PROMPT)
    got, want = LLMRunner(tmp_path / "rotated").logits(ids), keras_logits(rotated)(ids[None])[0]
    tolerance = {"float32": 1e-5, "dynamic_int8": 0.08}[mode]
    assert np.abs(got - want).max() < tolerance * np.abs(want).max()
