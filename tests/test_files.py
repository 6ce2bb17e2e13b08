"""Files written whole or not at all (tfcompress.core.files)."""

import os
import stat

import pytest

from tfcompress.core.files import atomic_path, write_atomic


def test_write_atomic_round_trips_text_and_bytes_and_leaves_no_temporary(tmp_path):
    assert write_atomic(tmp_path / "a.json", "é{}") == tmp_path / "a.json"
    write_atomic(tmp_path / "b.bin", b"\x00\x01")
    assert (tmp_path / "a.json").read_text(encoding="utf-8") == "é{}"
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.bin"]


def test_a_failed_write_keeps_the_old_file_and_removes_the_temporary(tmp_path):
    path = tmp_path / "model.keras"
    path.write_text("old")
    with pytest.raises(RuntimeError, match="disk full"), atomic_path(path) as tmp:
        assert tmp.parent == tmp_path and tmp.suffix == ".keras"  # writers check the suffix
        tmp.write_text("half")
        raise RuntimeError("disk full")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["model.keras"]


def test_the_file_gets_the_permissions_of_a_plain_open_not_mkstemps_0600(tmp_path):
    umask = os.umask(0o022)
    try:
        write_atomic(tmp_path / "sub" / "llm.json", "{}")
    finally:
        os.umask(umask)
    assert stat.S_IMODE((tmp_path / "sub" / "llm.json").stat().st_mode) == 0o644
