"""Files written whole or not at all: a crash or an error mid-write leaves the old file (or none),
never a truncated one; and a file's size as stored and gzipped (`file_sizes`).

    >>> from tfcompress.core.files import atomic_path, write_atomic
    >>> write_atomic(path, "text")                  # doctest: +SKIP
    >>> with atomic_path("runs/model.keras") as tmp:  # doctest: +SKIP
    ...     model.save(tmp)
"""

from __future__ import annotations

import gzip
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (same suffix, so writers that check it accept
    it); when the block ends without error it replaces ``path``, else it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=path.suffix)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would hide the file from other users
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_atomic(path: str | Path, data: bytes | str) -> Path:
    """Write ``data`` (text as UTF-8) to ``path`` through `atomic_path`; returns ``path``."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    return Path(path)


def file_sizes(path: str | Path) -> dict:
    """Bytes of a file as stored and after gzip (level 9), read from disk."""
    data = Path(path).read_bytes()
    return {"bytes": len(data), "gzip_bytes": len(gzip.compress(data, compresslevel=9, mtime=0))}
