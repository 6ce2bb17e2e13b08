"""Row names of ``benchmarks.export``: a mode, optionally smoothed, optionally its integer graph."""

import pytest

from benchmarks.export import parse_format


def test_row_names_give_the_mode_and_the_smoothing():
    assert parse_format("int8") == ("int8", None)
    assert parse_format("int8_smooth", 0.3) == ("int8", 0.3)
    assert parse_format("int8_integer") == ("int8", None)  # integer_gpt of the plain model
    assert parse_format("int8_smooth_integer", 0.5) == ("int8", 0.5)
    assert parse_format("int8_islands_integer") == ("int8_islands", None)  # its float islands
    with pytest.raises(SystemExit, match="unknown format 'int9_integer'.*_smooth or _integer"):
        parse_format("int9_integer")
