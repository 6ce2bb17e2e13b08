"""What a user installs: wheel and sdist contents, metadata, and the optional extras' errors."""

import importlib
import re
import shutil
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def dists(tmp_path_factory):
    """A wheel and an sdist built by the project's own build backend from a copy of the tree
    (tests/ and benchmarks/ included in the copy, so leaving them out is checked)."""
    src = tmp_path_factory.mktemp("src")
    for name in ("tfcompress", "tests", "benchmarks"):
        shutil.copytree(ROOT / name, src / name,
                        ignore=shutil.ignore_patterns("__pycache__", "quick"))
    for name in ("pyproject.toml", "README.md", "MANIFEST.in"):
        shutil.copy(ROOT / name, src / name)
    code = ("from setuptools import build_meta as b; "
            "b.build_sdist('dist'); b.build_wheel('dist')")
    subprocess.run([sys.executable, "-c", code], cwd=src, check=True, capture_output=True)
    wheel = next((src / "dist").glob("*.whl"))
    sdist = next((src / "dist").glob("*.tar.gz"))
    return (zipfile.ZipFile(wheel).namelist(),
            [n.split("/", 1)[1] for n in tarfile.open(sdist).getnames() if "/" in n])


def test_wheel_holds_the_package_corpus_and_py_typed_but_no_tests_or_results(dists):
    wheel, _ = dists
    assert "tfcompress/py.typed" in wheel
    for split in ("train", "valid", "test"):
        assert f"tfcompress/data/corpora/austen/{split}.txt.gz" in wheel
    assert "tfcompress/data/corpora/austen/PROVENANCE.md" in wheel
    assert "tfcompress/recipes/examples/smollm2_phone.yaml" in wheel  # recipes read their examples
    sources = {p.relative_to(ROOT).as_posix() for p in (ROOT / "tfcompress").rglob("*.py")}
    assert sources <= set(wheel)  # every module, subpackages included
    assert not [n for n in wheel if n.startswith(("tests/", "benchmarks/", "notebooks/"))]
    entry = next(n for n in wheel if n.endswith("entry_points.txt"))
    assert entry.startswith("tfcompress-0.1.0.dist-info/")


def test_sdist_holds_sources_and_metadata_but_no_tests_or_results(dists):
    _, sdist = dists
    assert {"pyproject.toml", "README.md", "tfcompress/py.typed",
            "tfcompress/data/corpora/austen/test.txt.gz"} <= set(sdist)
    assert not [n for n in sdist if n.startswith(("tests/", "benchmarks/", "setup.py"))]


def test_metadata_ranges_and_extras():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    deps = project["dependencies"]
    assert project["requires-python"] == ">=3.11,<3.14"
    assert any(d.startswith("tensorflow>=") for d in deps)
    assert not [d for d in deps if "==" in d or d.startswith(("tensorflow-cpu", "tqdm"))]
    optional = {d.split(">")[0] for d in deps}
    assert not optional & {"tensorflow-datasets", "ai-edge-quantizer", "gguf", "safetensors"}
    assert {"llm", "tfds", "litert", "bench", "test"} <= set(project["optional-dependencies"])
    pins = (ROOT / "constraints.txt").read_text().splitlines()
    pinned = {line.split("==")[0].lower() for line in pins if "==" in line}
    assert {"tensorflow", "keras", "numpy", "ai-edge-litert"} <= pinned
    assert "tensorflow-cpu" not in pinned  # one TensorFlow


def _name(requirement: str) -> str:
    return re.split(r"[<>=!\[; ]", requirement, maxsplit=1)[0].lower()


def test_readme_extras_and_constraints_say_what_pyproject_holds():
    """Each extra's README row names every package and extra it adds; everything `make install`
    (the `test` extra) and the `bench` extra install is pinned in constraints.txt."""
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("| extra | adds | for |"):].split("\n\n")[0]
    rows = {m[1]: m[2] for m in re.finditer(r"^\| `(\w+)` \| ([^|]+) \|", table, re.M)}
    pinned = {_name(line) for line in (ROOT / "constraints.txt").read_text().splitlines()
              if "==" in line}

    def packages(extra: str) -> set[str]:
        found = set()
        for req in extras[extra]:
            if req.startswith("tfcompress["):
                for inner in req[len("tfcompress["):req.index("]")].split(","):
                    found |= packages(inner)
            else:
                found.add(_name(req))
        return found

    for extra, reqs in extras.items():
        assert extra in rows, f"README's extras table has no row for `{extra}`"
        for req in reqs:
            names = (req[len("tfcompress["):req.index("]")].split(",")
                     if req.startswith("tfcompress[") else [_name(req)])
            for name in names:
                assert name in rows[extra], f"README's `{extra}` row does not name {name}"
    assert packages("test") | packages("bench") <= pinned, "not in constraints.txt: " + str(
        (packages("test") | packages("bench")) - pinned)


def _call(module: str, name: str, *args):
    return lambda: getattr(importlib.import_module(module), name)(*args)


@pytest.mark.parametrize("module, extra, call", [
    ("gguf", "llm", _call("tfcompress.models.loaders", "load_gguf", "missing.gguf")),
    ("safetensors", "llm", _call("tfcompress.models.loaders.safetensors", "TensorIndex", ROOT)),
    ("tensorflow_datasets", "tfds", _call("tfcompress.data.sources", "tfds_text", "x")),
])
def test_a_missing_extra_names_the_extra(module, extra, call, monkeypatch):
    monkeypatch.setitem(sys.modules, module, None)  # what `import` sees when not installed
    with pytest.raises(ImportError, match=rf"pip install 'tfcompress\[{extra}\]'"):
        call()


def test_export_mode_needing_the_litert_extra_fails_before_any_work(monkeypatch):
    from tfcompress.errors import TfcompressError
    from tfcompress.export.modes import MODES
    from tfcompress.export.tflite import _check_litert

    monkeypatch.setitem(sys.modules, "ai_edge_quantizer", None)
    with pytest.raises(TfcompressError, match=r"mode 'int4'.*tfcompress\[litert\]"):
        _check_litert(MODES["int4"])
    _check_litert(MODES["float16"])  # no LiteRT recipe: nothing needed
