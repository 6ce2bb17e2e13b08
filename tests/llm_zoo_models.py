"""Tiny random KerasHub CausalLMs of every family `export_llm` reads (no presets: nothing is
downloaded), shared by ``tests/test_llm_zoo.py`` and ``benchmarks/llm_zoo.py``.

``zoo_model(family, vocab, d, layers, window)`` builds one with ``d`` hidden units, query
heads of ``head_dim`` (16) and half as many KV heads (Qwen3 and Gemma: heads 1.5x wider), and
each family's distinctive options switched on: sliding windows of ``window`` (Mistral, Qwen2,
Gemma 2-style, Gemma3), Gemma 2's soft caps and post norms, Gemma3's q/k norms and
local/global RoPE, Llama 3.1 frequency smoothing, Phi3's ``su`` RoPE, SmolLM3's NoPE layers,
Qwen2's q/k/v biases. `decisive` gives it random weights (varied greedy text, or decisive
logits), `steer_to_text` keeps its greedy text whole characters.

Example:
    >>> model = decisive(zoo_model("gemma3", vocab=320, d=64, layers=6, window=16))
"""

from __future__ import annotations

import numpy as np

FAMILIES = ("gpt2", "smollm", "smollm3", "llama", "llama3", "qwen2", "qwen3", "gemma",
            "gemma3", "mistral", "phi3")


def zoo_model(family: str, vocab: int, d: int = 64, layers: int = 2, window: int = 16,
              max_length: int = 512, head_dim: int = 16):
    import keras
    import keras_hub

    models = keras_hub.models
    keras.utils.set_random_seed(0)
    heads, wide = max(d // head_dim, 2), head_dim * 3 // 2  # wide: Qwen3's and Gemma's heads
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
        backbone = models.Qwen3Backbone(**llama, head_dim=wide, tie_word_embeddings=False)
        task = models.Qwen3CausalLM
    elif family == "gemma":  # Gemma 2 options: soft caps, post norms, windows, d/heads scale
        backbone = models.GemmaBackbone(**dict(llama, intermediate_dim=2 * ff), head_dim=wide,
                                        query_head_dim_normalize=False,
                                        use_post_ffw_norm=True, use_post_attention_norm=True,
                                        attention_logit_soft_cap=20.0,
                                        final_logit_soft_cap=15.0,
                                        use_sliding_window_attention=True,
                                        sliding_window_size=window)
        task = models.GemmaCausalLM
    elif family == "gemma3":  # layer i % 6 < 5 local (window, base 1e4), else global (1e6)
        backbone = models.Gemma3Backbone(**llama, head_dim=wide, image_size=16,
                                         use_sliding_window_attention=True,
                                         sliding_window_size=window,
                                         global_rope_scaling_factor=8.0, vision_encoder=None)
        task = models.Gemma3CausalLM
    elif family == "phi3":
        half = head_dim // 2
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


def decisive(model, embed_std: float = 0.05, gain: float = 1.0, seed: int = 1):
    """Random trainable weights: token embeddings N(0, ``embed_std``) (Gemma's, multiplied by
    sqrt(d) in the model, N(0, embed_std / sqrt(d))); an untied output head the transposed
    embeddings plus 30 % noise (as decisive as a tied one); other matrices
    N(0, gain / sqrt(fan)) (fan: their largest axis, the model or MLP width); vectors (norm
    scales, biases) moved by N(0, 0.1).

    Small embeddings (the default) leave the next token to the blocks: varied greedy text,
    exact in float32. Large ones (``embed_std=1``) make logits decisive, the current token's
    own embedding leading: int8 rounding then rarely flips a greedy token.
    """
    rng = np.random.default_rng(seed)
    weights = model.trainable_weights
    for v in weights:
        name = v.path.rsplit("/", 1)[-1]
        if name == "embeddings":
            std = embed_std / np.sqrt(v.shape[1]) if "Gemma" in type(model).__name__ else embed_std
            v.assign(rng.normal(0, std, v.shape).astype("float32"))
        elif len(v.shape) >= 2 and name != "reverse_embeddings":
            v.assign(rng.normal(0, gain / np.sqrt(max(v.shape)), v.shape).astype("float32"))
        elif len(v.shape) == 1:
            v.assign(np.asarray(v.numpy()) + rng.normal(0, 0.1, v.shape).astype("float32"))
    for v in weights:
        if v.path.endswith("token_embedding/reverse_embeddings"):
            table = next(w for w in weights if w.path.endswith("token_embedding/embeddings"))
            noise = rng.normal(0, 0.3 * embed_std, v.shape).astype("float32")
            v.assign(np.asarray(table.numpy()).T + noise)
    return model


def steer_to_text(model, tokenizer) -> list[int]:
    """Zero the output logits of the token ids that are no whole UTF-8 text on their own
    (bare bytes of multi-byte characters), so greedy text never holds half a character
    (whose display differs between detokenizers). Returns those ids."""
    bad = [i for i in range(tokenizer.vocab_size) if "\ufffd" in tokenizer.decode([i])]
    backbone = getattr(model, "backbone", None)
    embedding = backbone.token_embedding if backbone else model.get_layer("token_embedding")
    if getattr(embedding, "tie_weights", True):
        table = np.asarray(embedding.embeddings.numpy())
        table[bad] = 0.0
        embedding.embeddings.assign(table)
    else:
        head = np.asarray(embedding.reverse_embeddings.numpy())
        head[:, bad] = 0.0
        embedding.reverse_embeddings.assign(head)
    return bad
