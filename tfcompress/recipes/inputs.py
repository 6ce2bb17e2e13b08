"""The files a recipe reads, and a content digest of each, so a resumed run notices when a
user changed one (a model retrained in place, new text, another tokenizer).

Example:
    >>> digests = input_digests(recipe)          # {"/data/my_lm.keras": "9f2c...", ...}
    >>> changed_inputs(old_digests, digests)
    ['/data/my_lm.keras']
"""

from __future__ import annotations

import hashlib
from pathlib import Path

CHUNK = 1 << 20


def input_files(recipe: dict) -> list[Path]:
    """The user's files a validated recipe reads: the model (file or folder), the tokenizer
    beside a ``.keras`` model or named in ``data.tokenizer``, and ``data.text``."""
    model, data = recipe["model"], recipe["data"]
    paths = [Path(model[k]) for k in ("keras", "gguf", "safetensors", "kerashub") if k in model]
    if "keras" in model and data["tokenizer"] == "model":
        paths.append(Path(model["keras"]).parent / "tokenizer.json")
    if str(data["tokenizer"]).endswith(".json"):
        paths.append(Path(data["tokenizer"]))
    if "text" in data:
        paths.append(Path(data["text"]))
    return [p for p in paths if p.exists()]


def file_digest(path: str | Path) -> str:
    """SHA-256 of a file's bytes, or of a folder's files (relative names and bytes, in name
    order); read in chunks, so a large checkpoint is not held in memory."""
    path = Path(path)
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        digest.update(str(file.relative_to(path) if path.is_dir() else "").encode())
        with open(file, "rb") as stream:
            while block := stream.read(CHUNK):
                digest.update(block)
    return digest.hexdigest()[:16]


def input_digests(recipe: dict) -> dict[str, str]:
    """``{path: file_digest}`` of every `input_files` entry."""
    return {str(p): file_digest(p) for p in input_files(recipe)}


def changed_inputs(old: dict[str, str] | None, new: dict[str, str]) -> list[str]:
    """The paths whose digest differs between two `input_digests` (added or dropped too)."""
    old = old or {}
    return sorted(p for p in old.keys() | new.keys() if old.get(p) != new.get(p))


__all__ = ["changed_inputs", "file_digest", "input_digests", "input_files"]
