"""The one protocol every data-aware method plugs into the calibration engine with.

A `Compressor` says which statistics of a layer's inputs it needs (``needs``, see
`tfcompress.core.stats.NEEDS`: ``X^T X`` for a Hessian, ``sum x^2`` for input norms,
``sum |x|`` for activation magnitudes, ``max |x|`` for activation scales) and how it
compresses one layer given them (``compress_layer``, which may change the layer's weights in
place and returns what the method keeps: codes, a mask, a spectrum...). ``save`` / ``load``
turn that result into named arrays and back, so the resume store keeps it in an ``.npz``
file instead of a pickle. `tfcompress.core.calibrate` runs it block by block.

Example:
    >>> class Norms(Compressor):                  # a method that only reads statistics
    ...     needs = ("sq",)
    ...     def compress_layer(self, path, layer, stats):
    ...         return stats.norms()
    >>> norms = calibrate(model, layers, token_ids, Norms(), sequential=False)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from tfcompress.core.stats import InputStats


class Compressor:
    """What a method needs from a block's inputs and how it compresses one layer.

    Subclasses set ``needs`` and implement `compress_layer`; a result that is not one array
    overrides `save` and `load` (used only when a run saves progress to a folder).
    """

    needs: ClassVar[tuple[str, ...]] = ("xtx",)

    def compress_layer(self, path: str, layer, stats: InputStats) -> Any:
        """Compress ``layer`` (at ``path``) from ``stats`` of its inputs; returns the result
        kept for that layer."""
        raise NotImplementedError(f"{type(self).__name__} must define compress_layer")

    def compress_block(self, layers: Sequence[tuple[str, object]],
                       stats: dict[str, InputStats]) -> dict[str, Any]:
        """``{path: result}`` of one block's ``(path, layer)`` pairs, in call order."""
        return {path: self.compress_layer(path, layer, stats[path]) for path, layer in layers}

    def save(self, result) -> dict[str, np.ndarray]:
        """``result`` as named arrays (for an ``.npz`` file)."""
        return {"value": np.asarray(result)}

    def load(self, arrays: dict[str, np.ndarray]) -> Any:
        """The result `save` turned into ``arrays``."""
        return arrays["value"]
