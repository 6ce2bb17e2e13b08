"""The notebooks' stored outputs are the outputs of their current code (no execution here:
`make test` runs them through nbmake, `make notebooks` stores what they print and draw)."""

import re
from pathlib import Path

import nbformat
import pytest

from tests.run_notebooks import NOTEBOOKS, _as_shown, _clean, code_hash

RERUN = "run `make notebooks` and commit the notebooks"
# a folder of the machine that ran it (temporary folders aside)
_LOCAL_FOLDER = re.compile(r"(?<![\w.])/(?:home|Users|root|work)/\S+")
# generated text that ends in a run of spaces: what an LM that learned only how often each
# byte occurs decodes greedily
_BLANK_SAMPLE = re.compile(r"\w {8,}(?=['\"\n]|$)")


def _shown_text(out) -> str:
    return out.get("text", "") + "".join(
        out.get("data", {}).get(kind, "") for kind in ("text/plain", "text/markdown"))


def problems(nb) -> list[str]:
    """Why the stored outputs of ``nb`` do not show its current code run top to bottom."""
    found = []
    stored = nb.metadata.get("tfcompress", {}).get("code_sha256")
    if stored != code_hash(nb):
        found.append("code cells changed since their outputs were made" if stored
                     else "outputs were never stored")
    code = [c for c in nb.cells if c.cell_type == "code"]
    counts = [c.execution_count for c in code]
    if counts != list(range(1, len(code) + 1)):
        found.append(f"cells were not run once each, top to bottom (execution counts {counts})")
    for i, cell in enumerate(nb.cells):
        for out in cell.get("outputs", []):
            if out.output_type == "error":
                found.append(f"cell {i} stored an error: {out.ename}: {out.evalue}")
            text = _shown_text(out)
            if folder := _LOCAL_FOLDER.search(text):
                found.append(f"cell {i} shows a folder of this machine: {folder.group()}")
            if blank := _BLANK_SAMPLE.search(text):
                found.append(f"cell {i} shows text ending in blanks: {blank.group()!r}")
    if not any("image/png" in out.get("data", {}) for c in code for out in c.outputs):
        found.append("no plot (image/png output)")
    return found


@pytest.mark.parametrize("path", sorted(NOTEBOOKS.glob("*.ipynb")), ids=lambda p: p.stem)
def test_stored_outputs_match_the_code(path: Path):
    nb = nbformat.read(path, as_version=4)
    found = problems(nb)
    assert not found, f"{path.name}: " + "; ".join(found) + f": {RERUN}"
    assert path.stat().st_size < 600_000, f"{path.name} is over 600 kB: plot at a lower dpi"


def test_the_check_catches_an_edit_an_error_and_a_notebook_without_a_plot():
    cells = [nbformat.v4.new_code_cell("x = 1"), nbformat.v4.new_code_cell("plot()")]
    nb = nbformat.v4.new_notebook(cells=cells)
    assert problems(nb)[0] == "outputs were never stored"
    for count, cell in enumerate(cells, 1):
        cell.execution_count = count
    cells[1].outputs = [nbformat.v4.new_output("display_data", {"image/png": "iVBOR"})]
    _clean(nb)
    assert problems(nb) == []
    cells[0].source = "x = 2"
    assert problems(nb) == ["code cells changed since their outputs were made"]
    _clean(nb)
    cells[1].outputs = [nbformat.v4.new_output("error", ename="ValueError", evalue="bad",
                                                traceback=[])]
    assert problems(nb) == ["cell 1 stored an error: ValueError: bad",
                            "no plot (image/png output)"]
    cells[1].execution_count = 3
    assert "execution counts [1, 3]" in problems(nb)[0]
    cells[1].execution_count = 2
    cells[1].outputs = [nbformat.v4.new_output("display_data", {"image/png": "iVBOR"}),
                        nbformat.v4.new_output("stream", name="stdout", text=(
                            "'It is a truth                              '\n"
                            "no tokenizer.json beside it (/work/wt/results/tokenizer.json)\n"))]
    assert problems(nb) == [
        "cell 1 shows a folder of this machine: /work/wt/results/tokenizer.json)",
        "cell 1 shows text ending in blanks: 'h                              '"]


def test_clean_keeps_what_a_terminal_shows_without_machine_specific_noise():
    cell = nbformat.v4.new_code_cell("fit()")
    cell.outputs = [
        nbformat.v4.new_output("stream", name="stderr", text=(
            "I0000 00:00:1796078341.546434   14349 port.cc:153] oneDNN custom operations\n"
            "WARNING: [plugin.cc:77] Could not load a plugin\n"
            "└ Could not load shared library /work/x/lib.so: no such file\n"
            "/home/me/venv/keras/trainer.py:74: UserWarning: shuffle ignored\n")),
        nbformat.v4.new_output("stream", name="stdout", text="\r1/2 [==  ] loss: 5.1"),
        nbformat.v4.new_output("stream", name="stdout", text="\b\b\b\r2/2 [====] loss: 4.9\n"),
    ]
    cell.metadata["execution"] = {"iopub.status.busy": "2026-11-30T22:00:00"}
    nb = nbformat.v4.new_notebook(cells=[cell])
    _clean(nb)
    assert [o.text for o in cell.outputs] == ["trainer.py:74: UserWarning: shuffle ignored\n",
                                              "2/2 [====] loss: 4.9\n"]
    assert "execution" not in cell.metadata
    assert _as_shown("a\rb\nc") == "b\nc"


@pytest.mark.parametrize("path", sorted(NOTEBOOKS.glob("*.ipynb")), ids=lambda p: p.stem)
def test_notebooks_write_only_into_folders_they_remove(path: Path):
    """A notebook runs from notebooks/: files go to a ``tempfile.TemporaryDirectory`` (deleted
    when the kernel stops), never a ``mkdtemp`` left behind or ``runs/`` inside notebooks/
    (a recipe's ``output`` is relative to its file, in such a folder)."""
    code = "\n".join(c.source for c in nbformat.read(path, as_version=4).cells
                     if c.cell_type == "code")
    for leak in ("mkdtemp(", '("runs/', '="runs/', "('runs/", "='runs/"):
        assert leak not in code, f"{path.name} writes through {leak!r}"
