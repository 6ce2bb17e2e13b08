"""Text sources: the bundled Austen corpus, local files or folders, and TFDS datasets.

Each returns a dict ``{"train": str, "valid": str, "test": str}`` whose parts never overlap.

Example:
    >>> splits = bundled_corpus("austen")
    >>> sorted(splits)
    ['test', 'train', 'valid']
"""

from __future__ import annotations

import gzip
from importlib import resources
from pathlib import Path

from tfcompress._extras import require
from tfcompress.core.validation import reading
from tfcompress.errors import TfcompressError

SPLITS = ("train", "valid", "test")
BUNDLED = ("austen",)


def bundled_corpus(name: str = "austen") -> dict[str, str]:
    """A corpus shipped inside the package (gzip), split by novel: nothing is downloaded."""
    if name not in BUNDLED:
        raise TfcompressError(f"name must be one of {BUNDLED}, got {name!r}")
    root = resources.files("tfcompress.data") / "corpora" / name
    return {s: gzip.decompress((root / f"{s}.txt.gz").read_bytes()).decode("utf-8") for s in SPLITS}


def split_text(text: str, valid_fraction: float = 0.05, test_fraction: float = 0.05) -> dict:
    """Contiguous train/valid/test split of one text (train first), so no window is shared."""
    if not text.strip():
        raise TfcompressError("the corpus is empty: give text with at least one character")
    for arg, value in (("valid_fraction", valid_fraction), ("test_fraction", test_fraction)):
        if not 0.0 < value < 0.5:
            raise TfcompressError(f"{arg} must be in (0, 0.5), got {value}")
    n = len(text)
    a = int(n * (1.0 - valid_fraction - test_fraction))
    b = int(n * (1.0 - test_fraction))
    return {"train": text[:a], "valid": text[a:b], "test": text[b:]}


def local_text(path: str | Path, **split_kwargs) -> dict[str, str]:
    """A text file, or a folder of ``*.txt`` files (read in name order), split contiguously.

    A folder that holds ``train.txt``, ``valid.txt`` and ``test.txt`` keeps that split.
    """
    path = Path(path)
    if not path.exists():
        raise TfcompressError(f"path {str(path)!r} does not exist: give a .txt file or a folder")
    if path.is_dir():
        if all((path / f"{s}.txt").is_file() for s in SPLITS):
            splits = {s: _read_text(path / f"{s}.txt") for s in SPLITS}
            if not splits["train"].strip():
                raise TfcompressError(f"the corpus is empty: {path / 'train.txt'} has no text")
            return splits
        files = sorted(path.glob("*.txt"))
        if not files:
            raise TfcompressError(f"folder {str(path)!r} holds no *.txt file")
        text = "\n".join(_read_text(f) for f in files)
    else:
        text = _read_text(path)
    return split_text(text, **split_kwargs)


def _read_text(path: Path) -> str:
    with reading(path, "UTF-8 text (is it a binary file?)"):
        return path.read_text(encoding="utf-8")


def tfds_text(
    name: str,
    text_key: str = "text",
    data_dir: str | None = None,
    download: bool = False,
) -> dict[str, str]:
    """A TFDS text dataset (e.g. ``tiny_shakespeare``) joined per split.

    ``download`` is off by default: the data must already sit in ``data_dir``. TFDS's
    ``validation`` split maps to ``valid``; a dataset without one is split from ``train``.
    """
    tfds = require("tensorflow_datasets", extra="tfds", feature="a TFDS text source")

    builder = tfds.builder(name, data_dir=data_dir)
    if download:
        builder.download_and_prepare()
    available = set(builder.info.splits.keys())

    def read(split: str) -> str:
        ds = builder.as_dataset(split=split)
        parts = []
        for example in tfds.as_numpy(ds):
            if text_key not in example:
                raise TfcompressError(
                    f"text_key {text_key!r} is not a feature of {name}: "
                    f"choose one of {sorted(example)}"
                )
            value = example[text_key]
            parts.append(value.decode("utf-8") if isinstance(value, bytes) else str(value))
        return "\n".join(parts)

    if {"train", "validation", "test"} <= available:
        return {"train": read("train"), "valid": read("validation"), "test": read("test")}
    return split_text(read("train"))
