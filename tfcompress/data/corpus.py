"""One call from a text source to tokenized train/valid/test ``tf.data`` pipelines.

Example:
    >>> corpus = load_corpus("austen", tokenizer="byte")
    >>> train = corpus.dataset("train", seq_len=128, batch_size=32)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tfcompress.data.sources import SPLITS, bundled_corpus, local_text, tfds_text
from tfcompress.data.tokenizers import BPETokenizer, ByteTokenizer
from tfcompress.data.windows import lm_dataset, make_windows
from tfcompress.errors import TfcompressError

TOKENIZERS = ("byte", "bpe")


@dataclass
class LMCorpus:
    """Tokenized splits of one corpus, with the tokenizer that made them."""

    tokenizer: ByteTokenizer | BPETokenizer
    ids: dict[str, np.ndarray]

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size

    def _split(self, split: str) -> np.ndarray:
        if split not in self.ids:
            raise TfcompressError(f"split must be one of {SPLITS}, got {split!r}")
        return self.ids[split]

    def dataset(self, split: str, seq_len: int, batch_size: int, **kwargs):
        """Batched ``(inputs, targets, mask)``; see `lm_dataset` for keyword arguments."""
        kwargs.setdefault("shuffle", split == "train")
        return lm_dataset(self._split(split), seq_len, batch_size, **kwargs)

    def windows(self, split: str, seq_len: int, max_windows: int | None = None):
        """Numpy ``(inputs, targets, mask)`` of one split, the first ``max_windows`` of them."""
        x, y, m = make_windows(self._split(split), seq_len)
        return x[:max_windows], y[:max_windows], m[:max_windows]


def _read_source(source: str | Path, text_key: str, data_dir: str | None) -> dict[str, str]:
    source = str(source)
    if source in ("austen",):
        return bundled_corpus(source)
    if source.startswith("tfds:"):
        return tfds_text(source[len("tfds:") :], text_key=text_key, data_dir=data_dir)
    return local_text(source)


def load_corpus(
    source: str | Path = "austen",
    tokenizer: str | ByteTokenizer | BPETokenizer = "byte",
    vocab_size: int = 2048,
    text_key: str = "text",
    data_dir: str | None = None,
) -> LMCorpus:
    """Read ``source`` and tokenize its splits.

    ``source`` is ``"austen"`` (bundled, split by novel), ``"tfds:NAME"`` (a TFDS text dataset
    already on disk) or a path to a text file or folder. ``tokenizer`` is ``"byte"``, ``"bpe"``
    (trained on the train split only, with ``vocab_size``) or a tokenizer object.
    """
    if isinstance(tokenizer, str) and tokenizer not in TOKENIZERS:
        raise TfcompressError(f"tokenizer must be one of {TOKENIZERS} or a tokenizer object, "
                              f"got {tokenizer!r}")
    texts = _read_source(source, text_key, data_dir)
    if not texts["train"].strip():
        raise TfcompressError(f"the corpus {str(source)!r} is empty: its train split has no text")
    if tokenizer == "byte":
        tokenizer = ByteTokenizer()
    elif tokenizer == "bpe":
        tokenizer = BPETokenizer.train(texts["train"].splitlines(), vocab_size=vocab_size)
    return LMCorpus(tokenizer, {s: tokenizer.encode(texts[s]) for s in SPLITS})
