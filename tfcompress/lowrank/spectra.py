"""The calibration step of the SVD methods: each kernel's SVD after its input-side transform
(plain SVD, ASVD's activation scaling, SVD-LLM's whitening), as a `Compressor`.

Example:
    >>> spectra = calibrate(model, layers, ids, Spectra("svd-llm"), sequential=False)
    >>> transform, svd = spectra["block0_mlp_in"]            # (U, s, Vt) of T @ W
    >>> u, v, s = factor_matrix(kernel_matrix(layer), 16, transform, svd=svd)
"""

from __future__ import annotations

from tfcompress.core.compressor import Compressor
from tfcompress.core.layers import kernel_matrix
from tfcompress.core.stats import InputStats
from tfcompress.errors import TfcompressError
from tfcompress.lowrank.svd import InputTransform, input_transform, transformed_spectrum

# the input statistics each transform reads (plain SVD reads none)
NEEDS = {"svd": (), "asvd": ("abs",), "svd-llm": ("xtx",)}


class Spectra(Compressor):
    """``(transform, (U, s, Vt))`` of each layer: `input_transform`'s ``method`` from the
    layer's input statistics (``damping`` for SVD-LLM's whitening, ``alpha`` ASVD's
    exponent) and the SVD of the transformed kernel; the weights are left as they are."""

    def __init__(self, method: str = "svd", damping: float = 1e-3, alpha: float = 0.5):
        if method not in NEEDS:
            raise TfcompressError(f"method must be one of {list(NEEDS)}, got {method!r}")
        self.method, self.damping, self.alpha = method, damping, alpha
        self.needs = NEEDS[method]

    @property
    def aware(self) -> bool:
        """Whether the transform reads calibration inputs."""
        return bool(self.needs)

    def compress_layer(self, path: str, layer,
                       stats: InputStats | None) -> tuple[InputTransform, tuple]:
        transform = input_transform(self.method, stats, self.damping, self.alpha, path)
        return transform, transformed_spectrum(kernel_matrix(layer), transform)
