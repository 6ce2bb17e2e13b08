"""Stream text from a bundle written by `export_llm`: prefill the prompt, then decode one
token at a time against the KV cache.

Example:
    >>> runner = LLMRunner("bundle/", num_threads=2)
    >>> for piece in runner.generate("It is a truth", max_new_tokens=40):
    ...     print(piece, end="", flush=True)
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from tfcompress.errors import TfcompressError
from tfcompress.export.generate import next_token
from tfcompress.export.llm_layout import CONFIG_FILE, cache_names


class LLMRunner:
    """The bundle's ``.tflite`` in LiteRT's ``CompiledModel``, its tokenizer and its KV cache.

    ``position`` is the number of tokens in the cache; `reset` empties it. A prompt is cut
    into the largest prefill chunks that fit the cache (the last chunk padded), and its last
    token goes through ``decode``, whose logits pick the first new token. Each call runs on
    the smallest cache-length bucket of the bundle that holds its tokens (``bucket``: the
    cache length in use; ``buckets=False`` runs every call on the full-length signatures,
    as LiteRT-LM does). ``interpreter`` is the ``CompiledModel``
    (``get_signature_list()`` names the signatures and their tensors). A full-integer bundle
    (``sink_prefix`` in its ``llm.json``) holds BOS's keys and values as float constants at
    position 0: it must be fed BOS there (`encode` does), anything else is refused.
    """

    def __init__(self, bundle: str | Path, num_threads: int | None = None,
                 buckets: bool = True):
        from ai_edge_litert.compiled_model import (
            CompiledModel,
            CpuOptions,
            HardwareAccelerator,
            Options,
        )

        folder = Path(bundle)
        if not (folder / CONFIG_FILE).is_file():
            raise TfcompressError(f"bundle must be a folder written by export_llm (with "
                                  f"{CONFIG_FILE}), got {str(folder)!r}")
        self.config = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
        # XNNPACK packs each signature's weights apart unless they share a weight cache file
        # (SmolLM2 int8, 3 signatures: 524 -> 224 MB); a fresh file per runner, since a cache
        # packed from another model is used without a check and gives wrong logits
        self._weight_dir = tempfile.TemporaryDirectory(prefix="tfcompress-xnnpack-")
        cpu = CpuOptions(num_threads=num_threads or 0, xnnpack_weight_cache_path=str(
            Path(self._weight_dir.name) / "weights.xnnpack_cache"))
        options = Options(HardwareAccelerator.CPU, cpu_options=cpu)
        self.interpreter = CompiledModel.from_file(
            str(folder / self.config["model_file"]), options=options)
        self.cache_length = int(self.config["cache_length"])
        self.vocab_size = int(self.config["vocab_size"])
        self.stop_ids = set(self.config.get("stop_ids", []))
        # an integer bundle's float sink prefix: the ids it must be fed at positions 0..
        self.sink_prefix = [int(t) for t in self.config.get("sink_prefix", [])]
        self.prefill_names = {n: name for name, n in self.config["signatures"]["prefill"].items()}
        # per cache length: (its decode signature, {prefill length: its prefill signature})
        self._plans = {self.cache_length: ("decode", self.prefill_names)}
        for b, names in (self.config["signatures"].get("buckets", {}) if buckets else {}).items():
            self._plans[int(b)] = (names["decode"],
                                   {n: name for name, n in names["prefill"].items()})
        self._plans = dict(sorted(self._plans.items()))
        self._names = cache_names(int(self.config["architecture"]["n_layers"]))
        self._dtype = np.dtype(self.config.get("kv_cache_dtype", "float32"))
        # One buffer per cache and bucket, bound as input and output of every signature of
        # that bucket: the runtime writes the new keys/values into it in place
        # (DYNAMIC_UPDATE_SLICE), so no step copies the cache (SmolLM2 at 1,024 positions:
        # 94 MB each way). A bucket's buffers are made when the tokens first reach it.
        self._caches: dict[int, dict] = {}
        self._feeds: dict[str, dict] = {}
        self._logits: dict[str, object] = {}
        self.tokenizer = None
        if self.config.get("tokenizer_file"):
            from tfcompress.data.tokenizers import tokenizer_from_json

            self.tokenizer = tokenizer_from_json(
                (folder / self.config["tokenizer_file"]).read_text(encoding="utf-8"))
        self.reset()

    def _shape(self, bucket: int) -> list[int]:
        shape = list(self.config["kv_cache_shape"])
        shape[2] = bucket
        return shape

    def _bucket_caches(self, bucket: int) -> dict:
        if bucket not in self._caches:
            decode = self._plans[bucket][0]
            self._caches[bucket] = {name: self.interpreter.create_input_buffer_by_name(
                decode, name) for name in self._names}
        return self._caches[bucket]

    def reset(self) -> None:
        """Empty the KV cache (back to the smallest bucket)."""
        self.bucket = next(iter(self._plans))
        zeros = np.zeros(self._shape(self.bucket), self._dtype)
        for buffer in self._bucket_caches(self.bucket).values():
            buffer.write(zeros)
        self.position = 0

    def _grow(self, bucket: int) -> None:
        """Move the cache into the longer ``bucket``: its filled positions copied, once."""
        old, shape = self._caches[self.bucket], self._shape(self.bucket)
        grown = np.zeros(self._shape(bucket), self._dtype)
        for name, buffer in self._bucket_caches(bucket).items():
            grown[:, :, :self.bucket] = old[name].read(int(np.prod(shape)),
                                                       self._dtype).reshape(shape)
            buffer.write(grown)
        self.bucket = bucket

    def _check_prefix(self, ids: np.ndarray) -> None:
        """Refuse ids at positions ``0 ..`` other than the bundle's sink prefix."""
        head = ids[:max(len(self.sink_prefix) - self.position, 0)].tolist()
        if head != self.sink_prefix[self.position:self.position + len(head)]:
            raise TfcompressError(
                f"this bundle keeps the float keys and values of {self.sink_prefix} at "
                f"positions 0..{len(self.sink_prefix) - 1} (mode {self.config['mode']!r}): "
                f"start with those ids (encode() does), got {head} at position {self.position}")

    def _run(self, name: str, bucket: int, tokens: np.ndarray) -> None:
        if bucket > self.bucket:
            self._grow(bucket)
        if name not in self._feeds:
            self._feeds[name] = {key: self.interpreter.create_input_buffer_by_name(name, key)
                                 for key in ("tokens", "input_pos")}
        feeds, caches = self._feeds[name], self._caches[self.bucket]
        feeds["tokens"].write(tokens[None].astype(np.int32))
        feeds["input_pos"].write(np.arange(self.position, self.position + tokens.shape[0],
                                           dtype=np.int32))
        outputs = caches
        if name in self._logits:
            outputs = dict(caches, logits=self._logits[name])
        self.interpreter.run_by_name(name, {**feeds, **caches}, outputs)

    def _smallest(self, end: int, prefill: int | None = None) -> tuple[str, int]:
        """``(signature, bucket)`` of the smallest bucket (at least the one in use) holding
        positions up to ``end``: its decode, or its prefill of length ``prefill``."""
        for bucket, (decode, prefills) in self._plans.items():
            if bucket >= max(end, self.bucket) and (prefill is None or prefill in prefills):
                return (decode if prefill is None else prefills[prefill]), bucket
        raise AssertionError("the full-length cache holds every call _check_room lets in")

    def _check_room(self, n: int) -> None:
        if self.position + n > self.cache_length:
            raise TfcompressError(f"{n} more tokens after {self.position} exceed the cache of "
                                  f"{self.cache_length}; call reset() or export a longer "
                                  "cache_length")

    def prefill(self, ids: Sequence[int]) -> None:
        """Write ``ids`` into the cache (no logits), in chunks of the exported lengths."""
        ids = np.asarray(ids, np.int32).reshape(-1)
        self._check_room(len(ids))
        self._check_prefix(ids)
        while len(ids):
            room = self.cache_length - self.position
            fits = [n for n in sorted(self.prefill_names) if n <= room]
            whole = [n for n in fits if n <= len(ids)]
            cover = [n for n in fits if n >= len(ids)]
            if cover:
                n = cover[0]  # pad: later decode steps overwrite the padded positions
            elif whole:
                n = whole[-1]
            else:
                self.decode(int(ids[0]))
                ids = ids[1:]
                continue
            take = min(n, len(ids))
            chunk = np.zeros(n, np.int32)
            chunk[:take] = ids[:take]
            self._run(*self._smallest(self.position + n, n), chunk)
            self.position += take
            ids = ids[take:]

    def decode(self, token: int) -> np.ndarray:
        """Feed one token; returns the next-token logits ``(vocab,)``."""
        self._check_room(1)
        self._check_prefix(np.asarray([token]))
        name, bucket = self._smallest(self.position + 1)
        if name not in self._logits:
            self._logits[name] = self.interpreter.create_output_buffer_by_name(name, "logits")
        self._run(name, bucket, np.asarray([token], np.int32))
        self.position += 1
        return self._logits[name].read(self.vocab_size, np.float32)

    def logits(self, ids: Sequence[int]) -> np.ndarray:
        """Next-token logits ``(len(ids), vocab)`` after each of ``ids``, from an empty cache
        (one decode step per token: what a perplexity needs)."""
        self.reset()
        return np.stack([self.decode(int(t)) for t in np.asarray(ids).reshape(-1)])

    def generate_ids(self, prompt_ids: Sequence[int], max_new_tokens: int = 64,
                     top_k: int = 1, temperature: float = 1.0,
                     seed: int = 0) -> Iterator[int]:
        """Yield new token ids one at a time (greedy with ``top_k=1``); stops after a stop id.

        The cache starts empty; the prompt plus ``max_new_tokens`` must fit it.
        """
        prompt = np.asarray(prompt_ids).reshape(-1)
        if prompt.size == 0 or not np.issubdtype(prompt.dtype, np.integer) or (
                prompt.min() < 0 or prompt.max() >= self.vocab_size):
            raise TfcompressError(f"prompt_ids must be 1+ token ids in [0, {self.vocab_size}), "
                                  f"got {prompt}")
        if max_new_tokens < 0 or top_k < 1 or temperature <= 0:
            raise TfcompressError("max_new_tokens must be >= 0, top_k >= 1 and temperature > 0;"
                                  f" got {max_new_tokens}, {top_k}, {temperature}")
        if prompt.size + max_new_tokens > self.cache_length:
            raise TfcompressError(f"prompt ({prompt.size} tokens) + max_new_tokens "
                                  f"({max_new_tokens}) exceed cache_length {self.cache_length}")
        return self._stream(prompt, max_new_tokens, top_k, temperature, seed)

    def _stream(self, prompt: np.ndarray, max_new_tokens: int, top_k: int, temperature: float,
                seed: int) -> Iterator[int]:
        rng = np.random.default_rng(seed)
        self.reset()
        self.prefill(prompt[:-1])
        token = int(prompt[-1])
        for _ in range(max_new_tokens):
            token = next_token(self.decode(token), top_k, temperature, rng)
            yield token
            if token in self.stop_ids:
                return

    def generate(self, prompt: str, max_new_tokens: int = 64, top_k: int = 1,
                 temperature: float = 1.0, seed: int = 0) -> Iterator[str]:
        """Yield the text of each new token as it is decoded (joined, they are the reply).

        The prompt is encoded by `encode` (with the start token if the bundle has one); the
        stop token ends the reply without its own text, as in LiteRT-LM's engine."""
        if self.tokenizer is None:
            raise TfcompressError("this bundle has no tokenizer: use generate_ids, or export "
                                  "with tokenizer=")
        ids = self.generate_ids(self.encode(prompt), max_new_tokens, top_k, temperature, seed)
        return self._text(t for t in ids if t not in self.stop_ids)

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``, after the start token when the bundle has one (``bos``),
        as LiteRT-LM's engine feeds a prompt."""
        bos = self.config.get("special_tokens", {}).get("bos")
        return ([] if bos is None else [int(bos)]) + [int(t) for t in self.tokenizer.encode(text)]

    def _text(self, tokens: Iterator[int]) -> Iterator[str]:
        ids: list[int] = []
        text = full = ""
        for token in tokens:
            ids.append(token)
            full = self.tokenizer.decode(ids)
            # a multi-byte character split over tokens shows once it is complete
            if not full.endswith("\ufffd"):
                yield full[len(text):]
                text = full
        if full != text:
            yield full[len(text):]


def measure_speed(runner: LLMRunner, prompt_ids: Sequence[int], new_tokens: int = 32,
                  rounds: int = 2) -> dict:
    """Prefill and decode tokens/s of a bundle: all of ``prompt_ids`` but the last token
    prefilled, then ``new_tokens`` greedy decode steps; the figures of the last of ``rounds``
    (the first packs XNNPACK's weights).

    Example:
        >>> measure_speed(LLMRunner("bundle/"), ids[:128], new_tokens=32)
        {'prefill_tokens': 127, 'prefill_tokens_per_s': 806.1, 'decode_tokens': 32, ...}
    """
    import time

    prompt = np.asarray(prompt_ids, np.int32).reshape(-1)
    if prompt.size < 2 or new_tokens < 1:
        raise TfcompressError(f"measure_speed needs 2+ prompt ids and new_tokens >= 1, got "
                              f"{prompt.size} ids and {new_tokens}")
    runner.reset()
    runner._check_room(prompt.size + new_tokens - 1)  # an early, clear error
    for _ in range(rounds):
        runner.reset()
        start = time.perf_counter()
        runner.prefill(prompt[:-1])
        prefill = time.perf_counter() - start
        token = int(prompt[-1])
        start = time.perf_counter()
        for _ in range(new_tokens):
            token = int(np.argmax(runner.decode(token)))
        decode = time.perf_counter() - start
    return {"prefill_tokens": int(prompt.size - 1),
            "prefill_tokens_per_s": (prompt.size - 1) / prefill,
            "decode_tokens": int(new_tokens), "decode_tokens_per_s": new_tokens / decode}
