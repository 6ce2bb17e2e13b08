"""Execute the notebooks in place and store their outputs (``make notebooks``).

Each notebook runs in a fresh kernel from ``notebooks/`` (as nbmake runs it), then keeps its
outputs with the volatile parts removed (no timings, no local paths in warnings), and records the
hash of its code cells in ``metadata["tfcompress"]["code_sha256"]``. ``tests/test_notebooks.py``
compares that hash with the cells' current source, so an edited notebook whose outputs were not
re-made fails CI.

Example:
    $ python -m tests.run_notebooks                      # every notebook
    $ python -m tests.run_notebooks notebooks/02_pruning.ipynb
"""

import hashlib
import re
import sys
import time
from pathlib import Path

import nbformat

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
# a warning's "path/to/file.py:123: " prefix names a folder of this machine
_WARNING_PATH = re.compile(r"^\S*/(?=[\w.]+\.py:\d+: )", re.MULTILINE)
# TensorFlow's C++ log lines carry a timestamp and a process id; LiteRT's ("INFO:
# [gpu_registry.cc:130] ...", continued by "└ ..." lines) pointers and the paths of the
# libraries it tries to load
_NATIVE_LOG = re.compile(r"^(WARNING: All log messages before absl::InitializeLog\(\).*"
                         r"|[IWE]\d{4} [\d:.]+ +\d+ \S+:\d+\] .*"
                         r"|(?:INFO|WARNING|ERROR): \[[\w.]+:\d+\] .*|└ .*)\n?", re.MULTILINE)


def code_hash(nb) -> str:
    """SHA-256 of the notebook's code cells, in order (markdown cells do not change outputs)."""
    digest = hashlib.sha256()
    for cell in nb.cells:
        if cell.cell_type == "code":
            digest.update(cell.source.encode() + b"\0")
    return digest.hexdigest()


def _as_shown(text: str) -> str:
    """What a terminal leaves on screen: each line after its last carriage return (progress
    bars redraw themselves with \\r and backspaces)."""
    return "\n".join(line.rsplit("\r", 1)[-1].replace("\b", "") for line in text.split("\n"))


def _clean(nb) -> None:
    for i, cell in enumerate(nb.cells):
        cell.setdefault("id", f"cell-{i}")
        cell.metadata.pop("execution", None)
        outputs = []
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream":
                if outputs and outputs[-1].get("name") == out["name"]:
                    outputs[-1]["text"] += out["text"]  # one block per stream, as displayed
                    continue
            outputs.append(out)
        for out in outputs:
            if out.get("output_type") == "stream":
                text = _NATIVE_LOG.sub("", _WARNING_PATH.sub("", out["text"]))
                out["text"] = _as_shown(text)
        if cell.cell_type == "code":
            cell.outputs = [o for o in outputs if o.get("output_type") != "stream" or o["text"]]
    nb.metadata.setdefault("tfcompress", {})["code_sha256"] = code_hash(nb)


def execute(path: Path, timeout: int = 900) -> float:
    """Run ``path`` top to bottom in a fresh kernel and write it back with its outputs;
    returns the seconds it took."""
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    start = time.perf_counter()
    NotebookClient(nb, timeout=timeout, kernel_name="python3", record_timing=False,
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    seconds = time.perf_counter() - start
    _clean(nb)
    nbformat.write(nb, path)
    return seconds


def main(argv: list[str]) -> None:
    paths = [Path(a) for a in argv] or sorted(NOTEBOOKS.glob("*.ipynb"))
    total = 0.0
    for path in paths:
        seconds = execute(path.resolve())
        total += seconds
        print(f"{path.name}: {seconds:.0f} s, {path.stat().st_size / 1e3:.0f} kB", flush=True)
    print(f"{len(paths)} notebooks in {total:.0f} s")


if __name__ == "__main__":
    main(sys.argv[1:])
