"""Data: sources, tokenizers, next-token windows and their masks."""

import numpy as np
import pytest

from tfcompress.data import (
    BPETokenizer,
    ByteTokenizer,
    bundled_corpus,
    lm_dataset,
    load_corpus,
    local_text,
    make_windows,
    split_text,
    tfds_text,
    tokenizer_from_json,
)
from tfcompress.errors import TfcompressError


def test_windows_shift_targets_by_one_and_mask_padding():
    x, y, m = make_windows(np.arange(1, 11), seq_len=4)
    assert x.tolist() == [[1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 0, 0]]
    assert y.tolist() == [[2, 3, 4, 5], [6, 7, 8, 9], [10, 0, 0, 0]]
    assert m.tolist() == [[1, 1, 1, 1], [1, 1, 1, 1], [1, 0, 0, 0]]
    # every target token of the corpus is scored exactly once
    assert m.sum() == 9


def test_windows_with_stride_overlap_inputs():
    x, _, m = make_windows(np.arange(20), seq_len=8, stride=4)
    # full windows every 4 tokens, then one padded window at the last stride position
    assert x[:, 0].tolist() == [0, 4, 8, 16]
    assert m[-1].sum() == 19 - 16


def test_window_longer_than_corpus_raises():
    with pytest.raises(TfcompressError, match="seq_len=16 is longer than the corpus"):
        make_windows(np.arange(10), seq_len=16)


def test_dataset_batches_have_expected_shapes_and_dtypes():
    ds = lm_dataset(np.arange(1000) % 256, seq_len=32, batch_size=4, shuffle=True, seed=1)
    x, y, m = next(iter(ds))
    assert x.shape == y.shape == m.shape == (4, 32)
    assert x.dtype.name == "int32" and m.dtype.name == "float32"
    np.testing.assert_array_equal(x.numpy()[:, 1:], y.numpy()[:, :-1])


def test_bundled_corpus_loads_split_by_novel():
    splits = bundled_corpus("austen")
    assert len(splits["train"]) > 3_000_000
    assert "Persuasion" in splits["test"][:2000]
    assert "NORTHANGER ABBEY" in splits["valid"][:2000].upper()
    assert "Persuasion" not in splits["train"][:2000]


def test_splits_of_a_local_file_do_not_overlap(tmp_path):
    lines = [f"line {i:05d} of the corpus" for i in range(2000)]
    (tmp_path / "book.txt").write_text("\n".join(lines))
    splits = local_text(tmp_path / "book.txt")
    sets = {k: set(v.splitlines()[1:-1]) for k, v in splits.items()}
    assert not sets["train"] & sets["valid"]
    assert not sets["train"] & sets["test"]
    assert not sets["valid"] & sets["test"]
    assert "".join(splits[s] for s in ("train", "valid", "test")) == "\n".join(lines)


def test_folder_with_explicit_splits_keeps_them(tmp_path):
    for s in ("train", "valid", "test"):
        (tmp_path / f"{s}.txt").write_text(f"{s} text " * 20)
    corpus = load_corpus(tmp_path)
    assert ByteTokenizer().decode(corpus.ids["valid"][:5]) == "valid"


def test_bad_sources_raise_clear_errors(tmp_path):
    with pytest.raises(TfcompressError, match="does not exist"):
        load_corpus(tmp_path / "missing.txt")
    (tmp_path / "empty.txt").write_text("   \n")
    with pytest.raises(TfcompressError, match="corpus is empty"):
        load_corpus(tmp_path / "empty.txt")
    with pytest.raises(TfcompressError, match="tokenizer must be one of"):
        load_corpus("austen", tokenizer="words")
    with pytest.raises(TfcompressError, match="name must be one of"):
        bundled_corpus("dickens")
    with pytest.raises(TfcompressError, match="valid_fraction"):
        split_text("abc" * 100, valid_fraction=0.7)


def test_tfds_source_under_mock_data(tmp_path, monkeypatch):
    import tempfile

    import tensorflow_datasets as tfds

    # TFDS makes an empty mkdtemp folder (and keeps it) for every builder of a dataset not
    # prepared in data_dir, as under mock_data: it goes to this test's folder, not /tmp
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    with tfds.testing.mock_data(num_examples=3):
        splits = tfds_text("tiny_shakespeare")
        corpus = load_corpus("tfds:tiny_shakespeare")
    assert set(splits) == {"train", "valid", "test"}
    assert len(splits["train"]) > 0
    assert corpus.ids["train"].tolist() == list(splits["train"].encode())


def test_byte_tokenizer_round_trips_unicode():
    tok = ByteTokenizer()
    text = "Miss Bennet’s café"
    assert tok.decode(tok.encode(text)) == text
    assert tok.encode("A").tolist() == [65]


def test_bpe_tokenizer_trains_round_trips_and_serializes():
    texts = ["It is a truth universally acknowledged, that a single man"] * 50
    tok = BPETokenizer.train(texts, vocab_size=300)
    ids = tok.encode("a single man")
    assert len(ids) < len("a single man")  # merges were learned
    assert tok.decode(ids) == "a single man"
    again = tokenizer_from_json(tok.to_json())
    assert again.encode("a truth").tolist() == tok.encode("a truth").tolist()
    with pytest.raises(ValueError, match="vocab_size must exceed"):
        BPETokenizer.train(texts, vocab_size=100)
