"""Tiny random KerasHub CausalLMs of every family `export_llm` reads (no presets: nothing is
downloaded), shared by ``tests/test_llm_zoo.py`` and ``benchmarks/llm_zoo.py``.

``zoo_model(family, vocab, d, layers, window)`` builds one with ``d`` hidden units, ``d // 16``
query heads of 16 and half as many KV heads (Qwen3 and Gemma take another head size), and
each family's distinctive options switched on: sliding windows of ``window`` (Mistral, Qwen2,
Gemma 2-style, Gemma3), Gemma 2's soft caps and post norms, Gemma3's q/k norms and
local/global RoPE, Llama 3.1 frequency smoothing, Phi3's ``su`` RoPE, SmolLM3's NoPE layers,
Qwen2's q/k/v biases. `decisive` then gives it random weights large enough that greedy
decoding does not hinge on rounding.

Example:
    >>> model = decisive(zoo_model("gemma3", vocab=320, d=64, layers=6, window=16))
"""

from __future__ import annotations

import numpy as np

FAMILIES = ("gpt2", "smollm", "smollm3", "llama", "llama3", "qwen2", "qwen3", "gemma",
            "gemma3", "mistral", "phi3")


def zoo_model(family: str, vocab: int, d: int = 64, layers: int = 2, window: int = 16,
              max_length: int = 512):
    import keras
    import keras_hub

    models = keras_hub.models
    keras.utils.set_random_seed(0)
    heads = max(d // 16, 2)
    kv, ff = max(heads // 2, 1), 2 * d
    common = dict(vocabulary_size=vocab, num_layers=layers, hidden_dim=d, intermediate_dim=ff)
    llama = dict(common, num_query_heads=heads, num_key_value_heads=kv)
    if family == "gpt2":
        backbone = models.GPT2Backbone(vocabulary_size=vocab, num_layers=layers, num_heads=heads,
                                       hidden_dim=d, intermediate_dim=ff,
                                       max_sequence_length=max_length)
        task = models.GPT2CausalLM
    elif family == "smollm":  # SmolLM/SmolLM2: Llama with tied embeddings, 1e5 RoPE base
        backbone = models.LlamaBackbone(**llama, tie_word_embeddings=True,
                                        rope_max_wavelength=100000)
        task = models.LlamaCausalLM
    elif family == "llama":
        backbone = models.LlamaBackbone(**llama)
        task = models.LlamaCausalLM
    elif family == "llama3":  # Llama 3.1 frequency smoothing at a short pretraining length
        backbone = models.Llama3Backbone(**llama, rope_max_wavelength=500000,
                                         rope_frequency_adjustment_factor=8.0,
                                         rope_low_freq_factor=1.0, rope_high_freq_factor=4.0,
                                         rope_pretraining_sequence_length=32)
        task = models.Llama3CausalLM
    elif family == "mistral":
        backbone = models.MistralBackbone(**llama, sliding_window=window)
        task = models.MistralCausalLM
    elif family == "qwen2":
        backbone = models.QwenBackbone(**llama, use_sliding_window_attention=True,
                                       sliding_window_size=window)
        task = models.QwenCausalLM
    elif family == "qwen3":
        backbone = models.Qwen3Backbone(**llama, head_dim=24, tie_word_embeddings=False)
        task = models.Qwen3CausalLM
    elif family == "gemma":  # Gemma 2 options: soft caps, post norms, windows, d/heads scale
        backbone = models.GemmaBackbone(**dict(llama, intermediate_dim=2 * ff), head_dim=24,
                                        query_head_dim_normalize=False,
                                        use_post_ffw_norm=True, use_post_attention_norm=True,
                                        attention_logit_soft_cap=20.0,
                                        final_logit_soft_cap=15.0,
                                        use_sliding_window_attention=True,
                                        sliding_window_size=window)
        task = models.GemmaCausalLM
    elif family == "gemma3":  # layer i % 6 < 5 local (window, base 1e4), else global (1e6)
        backbone = models.Gemma3Backbone(**llama, head_dim=24, image_size=16,
                                         use_sliding_window_attention=True,
                                         sliding_window_size=window,
                                         global_rope_scaling_factor=8.0, vision_encoder=None)
        task = models.Gemma3CausalLM
    elif family == "phi3":
        half = d // heads // 2
        backbone = models.Phi3Backbone(**llama, max_sequence_length=2 * max_length,
                                       pretraining_sequence_length=max_length,
                                       rope_scaling_type="su",
                                       rope_scaling_short_factor=list(np.linspace(1, 2, half)),
                                       rope_scaling_long_factor=list(np.linspace(1, 8, half)))
        task = models.Phi3CausalLM
    elif family == "smollm3":  # every other layer without RoPE
        backbone = models.SmolLM3Backbone(
            **{k: v for k, v in common.items() if k != "intermediate_dim"},
            intermediate_dim=ff, num_attention_heads=heads, num_key_value_heads=kv,
            attention_bias=False, attention_dropout=0.0,
            rope_layer_enabled_list=[i % 2 == 0 for i in range(layers)],
            layer_types=["full_attention"] * layers, mlp_bias=False, layer_norm_epsilon=1e-6,
            max_position_embeddings=max_length, rope_theta=10000.0, partial_rotary_factor=1.0)
        task = models.SmolLM3CausalLM
    else:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
    return task(backbone=backbone, preprocessor=None)


def decisive(model, scale: float = 0.3, seed: int = 1):
    """Random trainable weights: matrices N(0, scale), vectors (norm scales, biases) moved by
    N(0, 0.1), so logits are decisive and every parameter matters."""
    rng = np.random.default_rng(seed)
    for v in model.trainable_weights:
        if len(v.shape) >= 2:
            v.assign(rng.normal(0, scale, v.shape).astype("float32"))
        else:
            v.assign(np.asarray(v.numpy()) + rng.normal(0, 0.1, v.shape).astype("float32"))
    return model
