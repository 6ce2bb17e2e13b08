"""Corpora -> tokenized next-token ``tf.data`` windows (bundled Austen, local files, TFDS)."""

from tfcompress.data.corpus import LMCorpus, load_corpus
from tfcompress.data.sources import bundled_corpus, local_text, split_text, tfds_text
from tfcompress.data.tokenizers import BPETokenizer, ByteTokenizer, tokenizer_from_json
from tfcompress.data.windows import lm_dataset, make_windows

__all__ = [
    "BPETokenizer",
    "ByteTokenizer",
    "LMCorpus",
    "bundled_corpus",
    "lm_dataset",
    "load_corpus",
    "local_text",
    "make_windows",
    "split_text",
    "tfds_text",
    "tokenizer_from_json",
]
