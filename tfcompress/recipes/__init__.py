"""Recipes: one file that says which model, which data, which stages, where the results go.

`run` validates the whole recipe first (one error listing every problem), then runs the
stages in order, checkpointing each so a re-run resumes, and writes ``report.md``. The
stages (`STAGES`) are thin layers over the public verbs. Example recipes ship in
``tfcompress/recipes/examples`` (`example` gives their paths); ``smollm2_phone`` is
``make demo``.

Example:
    >>> import tfcompress
    >>> run = tfcompress.run({"model": {"keras": "my_lm.keras"},
    ...                       "data": {"text": "my_text.txt", "tokenizer": "byte"},
    ...                       "stages": [{"quantize": {"method": "gptq", "bits": 4,
    ...                                                "granularity": "group", "group_size": 32}},
    ...                                  {"export": {"mode": "float32"}}],
    ...                       "output": "runs/my_lm"})
"""

from __future__ import annotations

from pathlib import Path

from tfcompress.errors import TfcompressError
from tfcompress.recipes.runner import Run, load_recipe, quick_sizes, run_recipe
from tfcompress.recipes.schema import STAGE_NAMES, validate
from tfcompress.recipes.stages import STAGES, StageResult, stage

EXAMPLES_DIR = Path(__file__).parent / "examples"


def examples() -> list[str]:
    """Names of the recipes shipped with the package."""
    return sorted(p.stem for p in EXAMPLES_DIR.glob("*.yaml"))


def example(name: str) -> Path:
    """Path of the shipped recipe ``name`` (see `examples`)."""
    path = EXAMPLES_DIR / f"{name}.yaml"
    if not path.is_file():
        raise TfcompressError(f"name must be one of {examples()}, got {name!r}")
    return path


__all__ = [
    "EXAMPLES_DIR", "STAGES", "STAGE_NAMES", "Run", "StageResult", "example", "examples",
    "load_recipe", "quick_sizes", "run_recipe", "stage", "validate",
]
