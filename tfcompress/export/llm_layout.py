"""The layout of a bundle `export_llm` writes: its file names and signature and cache-tensor names,
what the exporter writes and `LLMRunner` and `write_litertlm` read (its own module so the
runner does not import the exporter, which verifies with the runner).

Example:
    >>> prefill_signature_names((128, 32))
    {'prefill_32': 32, 'prefill_128': 128}
    >>> cache_names(2)
    ['kv_cache_k_0', 'kv_cache_v_0', 'kv_cache_k_1', 'kv_cache_v_1']
"""

from __future__ import annotations

MODEL_FILE, TOKENIZER_FILE, CONFIG_FILE = "model.tflite", "tokenizer.json", "llm.json"


def prefill_signature_names(prefill_lengths) -> dict[str, int]:
    """LiteRT-Torch's names: ``prefill`` for one length, else ``prefill_{n}`` per length."""
    lengths = sorted(prefill_lengths)
    if len(lengths) == 1:
        return {"prefill": lengths[0]}
    return {f"prefill_{n}": n for n in lengths}


def cache_names(n_layers: int) -> list[str]:
    """The KV-cache inputs and outputs of every signature, keys and values per layer."""
    return [f"kv_cache_{kv}_{i}" for i in range(n_layers) for kv in "kv"]


def bucket_signature_names(prefill_lengths, buckets) -> dict[str, dict]:
    """Per bucket ``B``: ``{"decode": "decode_{B}", "prefill": {"cache{B}_prefill_{n}": n}}``
    for the prefill lengths that fit ``B`` (no name starts with ``prefill``: LiteRT-LM would
    take it for a full-length prefill runner).

    Example:
        >>> bucket_signature_names((32, 128), (64,))
        {64: {'decode': 'decode_64', 'prefill': {'cache64_prefill_32': 32}}}
    """
    return {b: {"decode": f"decode_{b}",
                "prefill": {f"cache{b}_prefill_{n}": n for n in sorted(prefill_lengths)
                            if n <= b}}
            for b in sorted(buckets)}
