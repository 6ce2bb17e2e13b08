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


class Chain(Compressor):
    """Several compressors fed from one pass: each layer is compressed by each of
    ``compressors`` in turn (the later ones see the earlier ones' weights, e.g. SparseGPT then
    GPTQ), from one set of statistics holding what any of them needs; the result of a layer
    is the tuple of theirs.

    Example:
        >>> masks_and_codes = calibrate(model, layers, ids,
        ...                             Chain([SparseGPTPruner(sparse), GPTQCompressor(gptq)]))
    """

    def __init__(self, compressors: Sequence[Compressor]):
        self.compressors = list(compressors)
        self.needs = tuple(dict.fromkeys(n for c in self.compressors for n in c.needs))

    def compress_block(self, layers: Sequence[tuple[str, object]],
                       stats: dict[str, InputStats]) -> dict[str, Any]:
        # a Hessian is taken once per layer reading it by each compressor that needs one
        takers = sum("xtx" in c.needs for c in self.compressors)
        for shared in {id(s): s for s in stats.values()}.values():
            shared.readers *= max(takers, 1)
        return super().compress_block(layers, stats)

    def compress_layer(self, path: str, layer, stats: InputStats) -> tuple:
        return tuple(c.compress_layer(path, layer, stats) for c in self.compressors)

    def save(self, result: tuple) -> dict[str, np.ndarray]:
        return {f"c{i}_{name}": value for i, (c, r) in enumerate(zip(self.compressors, result,
                                                                     strict=True))
                for name, value in c.save(r).items()}

    def load(self, arrays: dict[str, np.ndarray]) -> tuple:
        return tuple(c.load({name.split("_", 1)[1]: value for name, value in arrays.items()
                             if name.split("_", 1)[0] == f"c{i}"})
                     for i, c in enumerate(self.compressors))
