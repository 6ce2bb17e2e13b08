"""Independent NumPy forward passes of decoder LMs from Hugging Face-named weights, the
reference the loader tests compare Keras models against."""

import numpy as np
from llm_checkpoints import CFG, GEMMAS


def np_rmsnorm(x, w, eps):
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w


def np_softmax(s):
    e = np.exp(s - s.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def np_attend(q, k, v):
    """q (H, T, hd), k/v (H, T, hd) -> (T, H*hd), causal."""
    t = q.shape[1]
    s = q @ k.transpose(0, 2, 1) / np.sqrt(q.shape[-1])
    s = np.where(np.tril(np.ones((t, t), bool)), s, -np.inf)
    return (np_softmax(s) @ v).transpose(1, 0, 2).reshape(t, -1)


def np_rope(x, base):
    """x (H, T, hd): rotate pairs (i, i + hd/2) by angle pos * base^(-2i/hd)."""
    hd = x.shape[-1]
    half = hd // 2
    ang = np.arange(x.shape[1])[:, None] * base ** (-2.0 * np.arange(half) / hd)
    c, s = np.cos(ang), np.sin(ang)
    a, b = x[..., :half], x[..., half:]
    return np.concatenate([a * c - b * s, a * s + b * c], -1)


def np_gelu_tanh(x):
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))


def np_llama(w, ids, c=CFG, tied=True, family="llama"):
    """Logits of a ``family`` decoder (see `llm_checkpoints.random_llama`) for ``ids``.

    Llama: pre-RMSNorm, half-split RoPE, grouped-query attention, SwiGLU. Qwen2 adds q/k/v
    biases; Qwen3 RMS-normalises each q/k head before RoPE. Gemma scales the embeddings by
    sqrt(d), multiplies by ``1 + w`` in every RMSNorm and gates with tanh-GELU; Gemma3 adds
    its q/k norms, norms on the attention and MLP outputs, and RoPE base 10,000 on the five
    local layers of every six.
    """
    hd = c.get("head_dim", c["d"] // c["heads"])
    gemma = family in GEMMAS

    def norm(x, name):
        return np_rmsnorm(x, w[name] + (1.0 if gemma else 0.0), c["eps"])

    x = w["model.embed_tokens.weight"][ids] * (np.sqrt(c["d"]) if gemma else 1.0)
    for i in range(c["layers"]):
        p = f"model.layers.{i}."
        base = 10_000.0 if family == "gemma3" and i % 6 < 5 else c["base"]
        h = norm(x, p + "input_layernorm.weight")

        def heads(x_, n, h=h, p=p):
            out = h @ w[f"{p}self_attn.{x_}_proj.weight"].T
            out = out + w.get(f"{p}self_attn.{x_}_proj.bias", 0.0)
            out = out.reshape(len(ids), n, hd).transpose(1, 0, 2)
            if f"{p}self_attn.{x_}_norm.weight" in w:
                out = norm(out, f"{p}self_attn.{x_}_norm.weight")
            return out

        q = np_rope(heads("q", c["heads"]), base)
        k = np_rope(heads("k", c["kv"]), base)
        v = heads("v", c["kv"])
        group = c["heads"] // c["kv"]
        k, v = k[np.arange(c["heads"]) // group], v[np.arange(c["heads"]) // group]
        a = np_attend(q, k, v) @ w[p + "self_attn.o_proj.weight"].T
        if family == "gemma3":
            x = x + norm(a, p + "post_attention_layernorm.weight")
            h = norm(x, p + "pre_feedforward_layernorm.weight")
        else:
            x = x + a
            h = norm(x, p + "post_attention_layernorm.weight")
        gate = h @ w[p + "mlp.gate_proj.weight"].T
        gate = np_gelu_tanh(gate) if gemma else gate / (1 + np.exp(-gate))
        m = (gate * (h @ w[p + "mlp.up_proj.weight"].T)) @ w[p + "mlp.down_proj.weight"].T
        if family == "gemma3":
            m = norm(m, p + "post_feedforward_layernorm.weight")
        x = x + m
    x = norm(x, "model.norm.weight")
    head = w["model.embed_tokens.weight"] if tied else w["lm_head.weight"]
    return x @ head.T
