"""The residual-stream search of ``benchmarks.diagnose_llm``, on arrays with known answers."""

import numpy as np

from benchmarks.diagnose_llm import largest_activation


def test_largest_activation_finds_the_sink_and_what_int8_leaves():
    h = np.full((2, 3, 4), 0.5)
    h[0, 0, 2] = -254.0  # the sink: sample 0, token 0, channel 2
    h[1, 0, 2] = 100.0   # sample 1's largest value sits at token 0 too
    h[1, 2, 3] = 1.5
    found = largest_activation(h)
    assert (found["value"], found["channel"], found["position"]) == (-254.0, 2, 0)
    assert found["median_abs"] == 0.5 and found["times_median"] == 508.0
    assert found["step"] == 2.0  # 254 / 127
    assert found["zeroed"] == 21 / 24  # every 0.5 rounds to 0; -254, 100 and 1.5 survive
    assert found["same_position"] == 1.0
    h[1, 1, 0] = 200.0  # sample 1's largest moves to token 1
    assert largest_activation(h)["same_position"] == 0.5
    assert largest_activation(h, bits=16)["zeroed"] == 0.0  # 16 bits: step 254/32767


def test_sink_prefix_scores_the_float_model_on_bos_and_each_window():
    from benchmarks.diagnose_llm import exported_model, scored
    from tfcompress.evaluate.latency import keras_forward
    from tfcompress.models.llama import LlamaConfig, build_llama
    from tfcompress.models.llama_prefix import prefix_cache

    model = build_llama(LlamaConfig(vocab_size=30, d_model=16, n_layers=2, n_heads=2,
                                    n_kv_heads=1, d_ff=16))
    rng = np.random.default_rng(0)
    for w in model.weights:
        w.assign(rng.normal(1.0 if "scale" in w.path else 0.0, 0.3, w.shape).astype("float32"))
    ids = rng.integers(1, 30, 2 * 5 + 1).astype("int32")  # two windows of 5 targets
    data = {"prefix_cache": prefix_cache(model, [0])}
    assert exported_model(model, "int8", {}) is model
    islands = exported_model(model, "int8_islands", data)
    assert sum(la.name.endswith("_island") for la in islands.layers) == 2 * 2 + 1  # norms
    ppl, picks = scored(keras_forward(exported_model(model, "int16x8", data)), ids, 5)
    nll, want = [], []
    for start in (0, 5):  # by hand: the full model on BOS + window, position 0 not scored
        x = np.concatenate([[0], ids[start:start + 5]])[None]
        logits = np.asarray(model(x), np.float64)[0, 1:]
        logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
        nll += list(-logp[np.arange(5), ids[start + 1:start + 6]])
        want += list(logits.argmax(-1))
    np.testing.assert_allclose(ppl, np.exp(np.mean(nll)), rtol=1e-5)
    np.testing.assert_array_equal(picks, want)
