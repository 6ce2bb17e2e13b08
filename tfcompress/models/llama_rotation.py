"""How `tfcompress.quantize.rotate` reaches a `build_llama` model: its residual stream, and a
copy with the layers a rotated model needs (``final_mix`` to keep a tied head tied,
``mlp_hadamard`` for the online rotation before each down projection).

Registered with `register_rotation_family` on import, so the quantize layer below reaches our
port without importing it; a user's own decoder family registers the same way.

Example:
    >>> from tfcompress.quantize.rotate import residual_stream
    >>> llama = build_llama(LlamaConfig(vocab_size=64, d_model=16, n_layers=2, n_heads=2,
    ...                                 n_kv_heads=1, d_ff=32))
    >>> len(residual_stream(llama).writers)   # attention out and MLP down, per block
    4
"""

from __future__ import annotations

from tfcompress.core.hadamard import hadamard_factors, kron_matrix
from tfcompress.core.layers import kernel_matrix, set_kernel_matrix
from tfcompress.errors import TfcompressError
from tfcompress.models.llama import LlamaConfig, build_llama, llama_config_of
from tfcompress.quantize.rotate import ResidualStream, RotationFamily, register_rotation_family
from tfcompress.quantize.smooth import smoothing_groups

FAMILY = "llama (tfcompress.models.build_llama, load_gguf)"


def port_stream(model) -> ResidualStream:
    """The `ResidualStream` of a `build_llama` model (`TfcompressError` / `ValueError` for
    any other)."""
    cfg = llama_config_of(model)
    final = model.get_layer("final_norm")
    groups = [g for g in smoothing_groups(model) if g.norm is not final]
    writers = [model.get_layer(f"block{i}_{part}") for i in range(cfg.n_layers)
               for part in ("attn_out", "mlp_down")]
    head = model.get_layer("lm_head").kernel if not cfg.tie_embeddings else None
    mix = model.get_layer("final_mix").kernel if cfg.final_mix else None
    return ResidualStream(model.get_layer("token_embedding").embeddings, groups, writers,
                          final.scale, head, mix)


def port_plan(model, tied: bool, online: bool) -> tuple[dict, list[str]]:
    """The config changes a rotated copy of ``model`` needs, and why (in words)."""
    cfg = llama_config_of(model)
    changes, why = {}, []
    if tied and not cfg.final_mix:
        changes["final_mix"] = True
        why.append("ties its head to its embedding (the copy adds final_mix)")
    if online and not cfg.mlp_hadamard:
        if hadamard_factors(cfg.d_ff) is None:
            raise TfcompressError(f"online=True needs a Hadamard matrix of order d_ff = "
                                  f"{cfg.d_ff} (2^k times 1 or q + 1, q a prime = 3 "
                                  f"mod 4), model {model.name!r} has none")
        changes["mlp_hadamard"] = True
        why.append("gets an online Hadamard before each down projection")
    return changes, why


def port_rebuilt(model, changes: dict):
    """A copy of ``model`` with its config ``changes`` (layers that are identities when
    built), every weight copied; with ``mlp_hadamard`` each down kernel absorbs ``H^T``."""
    config = {**llama_config_of(model).get_config(), **changes}
    clone = build_llama(LlamaConfig(**config), name=model.name)
    for layer in model.layers:
        for source, target in zip(layer.weights, clone.get_layer(layer.name).weights,
                                  strict=True):
            target.assign(source)
    if changes.get("mlp_hadamard"):
        absorb_online(clone)
    return clone


def absorb_online(model) -> None:
    """``W_down -> H^T W_down`` in every block, ``H`` the online rotation before it."""
    cfg = llama_config_of(model)
    h = kron_matrix(hadamard_factors(cfg.d_ff))
    for i in range(cfg.n_layers):
        down = model.get_layer(f"block{i}_mlp_down")
        set_kernel_matrix(down, h.T @ kernel_matrix(down))


register_rotation_family(RotationFamily(FAMILY, port_stream, port_plan, port_rebuilt))
