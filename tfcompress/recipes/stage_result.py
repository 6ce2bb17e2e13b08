"""What a recipe stage returns (`tfcompress.recipes.stages`, `tfcompress.recipes.bundles`).

Example:
    >>> StageResult(notes=["Bundled `base` as `base.int4/`"], files={"base.int4/": "runs/x"})
    StageResult(model=None, notes=['Bundled `base` as `base.int4/`'],
                files={'base.int4/': 'runs/x'}, reports=[], samples={})
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class StageResult:
    """What one stage made: ``model`` (None for evaluate/export), notes, exported files and
    the `Report`s of those files."""

    model: object = None
    notes: list[str] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)
    reports: list = field(default_factory=list)
    samples: dict[str, str] = field(default_factory=dict)
