"""The BOS key/value prefix of `tfcompress.models.llama_prefix` on a tiny random Llama: exact in
float, its keys checked by hand, its float islands kept float by export mode int16x8_islands
(int8_islands reads the same name scopes; tests/test_export_fullint.py covers that mode)."""

import numpy as np
import pytest

from tfcompress.errors import TfcompressError
from tfcompress.export import TFLiteRunner, export_tflite
from tfcompress.export.modes import in_scopes
from tfcompress.models.gpt_integer import FLOAT_ISLAND
from tfcompress.models.llama import LlamaConfig, build_llama
from tfcompress.models.llama_prefix import prefix_cache, prefixed_llama

CFG = LlamaConfig(vocab_size=40, d_model=16, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=24,
                  rope_base=100.0)


@pytest.fixture(scope="module")
def llama():
    model = build_llama(CFG)
    rng = np.random.default_rng(0)
    for w in model.weights:  # norm scales near 1, projections large enough to matter
        w.assign(rng.normal(1.0 if "scale" in w.path else 0.0, 0.3, w.shape).astype("float32"))
    return model


def _after(model, prefix, ids):
    full = np.concatenate([np.tile(prefix, (len(ids), 1)), ids], axis=1).astype("int32")
    return np.asarray(model(full))[:, len(prefix):]


@pytest.mark.parametrize("prefix", [[7], [7, 3]])
def test_prefixed_llama_equals_the_full_model_after_the_prefix(llama, prefix):
    ids = np.random.default_rng(1).integers(0, CFG.vocab_size, (2, 6)).astype("int32")
    expected = _after(llama, prefix, ids)
    cache = prefix_cache(llama, prefix)
    for islands in (False, True):
        tail = prefixed_llama(llama, cache, float_islands=islands)
        assert {id(w) for w in tail.weights} == {id(w) for w in llama.weights}  # shared
        np.testing.assert_allclose(np.asarray(tail(ids)), expected, atol=1e-5)


def test_prefix_keys_at_position_0_are_the_projected_normed_embedding(llama):
    # RoPE at position 0 is the identity: block 0's key is RMSNorm(embedding[7]) @ W_k
    (keys, values), _ = prefix_cache(llama, [7])
    x = llama.get_layer("token_embedding").embeddings.numpy()[7]
    h = x / np.sqrt(np.mean(x**2) + CFG.rms_eps) * llama.get_layer("block0_attn_norm").scale
    for got, dense in ((keys, "block0_attn_k"), (values, "block0_attn_v")):
        want = (h @ llama.get_layer(dense).kernel.numpy()).reshape(1, 2, 4)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_prefix_arguments_are_checked(llama):
    with pytest.raises(TfcompressError, match=r"prefix_ids must be 1 or more token ids in "
                                              r"\[0, 40\), got \[40\]"):
        prefix_cache(llama, [40])
    cache = prefix_cache(llama, [7])
    with pytest.raises(TfcompressError, match=r"cache must hold 2 \(keys, values\) pairs of "
                                              r"shape \(prefix, 2, 4\)"):
        prefixed_llama(llama, cache[:1])


def test_int16x8_islands_keeps_the_prefixed_attention_and_norms_float(llama, tmp_path):
    rng = np.random.default_rng(2)
    calibration = rng.integers(0, CFG.vocab_size, (4, 8)).astype("int32")
    tail = prefixed_llama(llama, prefix_cache(llama, [7]), float_islands=True)
    path = tmp_path / "tail.tflite"
    export_tflite(tail, path, "int16x8_islands", seq_len=8, calibration=calibration,
                  verify_output=False)
    runner = TFLiteRunner(path)
    tensors = runner.interpreter.get_tensor_details()
    kinds = set()
    for op in runner.interpreter._get_ops_details():
        out = tensors[op["outputs"][0]]
        if op["op_name"] in ("SOFTMAX", "RSQRT", "FULLY_CONNECTED"):
            kinds.add((op["op_name"], in_scopes(out["name"], (FLOAT_ISLAND,)),
                       np.dtype(out["dtype"]).name))
    # softmax and the norms (their sum of squares a matmul) float inside the islands; the
    # weight matmuls around them with int16 activations
    assert kinds == {("SOFTMAX", True, "float32"), ("RSQRT", True, "float32"),
                     ("FULLY_CONNECTED", True, "float32"), ("FULLY_CONNECTED", False, "int16")}
    # on windows inside the calibrated ranges (random ids elsewhere clip: 4 windows set them)
    got = np.concatenate([runner.predict(row[None]) for row in calibration[:4]])
    expected = _after(llama, [7], calibration[:4])
    assert (got.argmax(-1) == expected.argmax(-1)).mean() >= 0.9
