"""Tokenizers: a byte-level one that always works and a trainable byte-level BPE.

Example:
    >>> tok = ByteTokenizer()
    >>> tok.decode(tok.encode("Emma"))
    'Emma'
"""

from __future__ import annotations

import json
from collections.abc import Iterable

import numpy as np

from tfcompress.core.validation import reading
from tfcompress.errors import TfcompressError


class ByteTokenizer:
    """UTF-8 bytes as tokens: vocabulary of 256, nothing to train."""

    name = "byte"
    vocab_size = 256

    def encode(self, text: str) -> np.ndarray:
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int32)

    def decode(self, ids: Iterable[int]) -> str:
        return bytes(int(i) % 256 for i in ids).decode("utf-8", errors="replace")

    def to_json(self) -> str:
        return json.dumps({"type": "byte"})


class BPETokenizer:
    """Byte-level BPE trained with the `tokenizers` package.

    Example:
        >>> tok = BPETokenizer.train(["It is a truth universally acknowledged"], vocab_size=300)
        >>> tok.decode(tok.encode("a truth"))
        'a truth'
    """

    name = "bpe"

    def __init__(self, tokenizer):
        self._tok = tokenizer

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int = 2048) -> BPETokenizer:
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        if vocab_size <= 256:
            raise ValueError(f"vocab_size must exceed the 256 byte symbols, got {vocab_size}")
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tok.train_from_iterator(texts, trainer=trainer)
        return cls(tok)

    @classmethod
    def from_json(cls, text: str) -> BPETokenizer:
        from tokenizers import Tokenizer

        return cls(Tokenizer.from_str(text))

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size()

    def encode(self, text: str) -> np.ndarray:
        return np.asarray(self._tok.encode(text).ids, dtype=np.int32)

    def decode(self, ids: Iterable[int]) -> str:
        return self._tok.decode([int(i) for i in ids])

    def to_json(self) -> str:
        return self._tok.to_str()


def tokenizer_from_json(text: str) -> ByteTokenizer | BPETokenizer:
    """Rebuild a tokenizer saved with `to_json`."""
    if not isinstance(text, str):
        raise TfcompressError(f"text must be a tokenizer's JSON string, got {type(text).__name__}")
    with reading("<text>", "a tokenizer's JSON"):
        spec = json.loads(text)
        if isinstance(spec, dict) and spec.get("type") == "byte":
            return ByteTokenizer()
        return BPETokenizer.from_json(text)
