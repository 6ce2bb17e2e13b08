"""`quantize`: post-training weight quantization of a Keras 3 model, on a copy.

Methods: ``rtn`` (round-to-nearest with any `Quantizer`), ``gptq`` (error-compensating, from
calibration inputs), and Keras's own ``keras_int8`` / ``keras_int4`` / ``keras_gptq``
(``model.quantize``) for comparison. Ours store codes compactly (see `storage`) so the saved
``.keras`` shrinks and reloads to the same outputs.

Example:
    >>> config = QuantizeConfig(method="gptq", bits=4, granularity="group", group_size=128)
    >>> q = quantize(model, config, calibration=token_windows)
    >>> q.save("model-int4.keras")
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from tfcompress.core.calibration import calibrate, calibration_batches, run_key
from tfcompress.core.layers import (
    copy_model,
    drop_training_state,
    kernel_matrix,
    matrix_shape,
    select_layers,
    set_kernel_matrix,
)
from tfcompress.core.validation import check_model
from tfcompress.errors import TfcompressError
from tfcompress.quantize.gptq import gptq
from tfcompress.quantize.quantizers import Quantizer, validate
from tfcompress.quantize.storage import attach, mark_quantized

METHODS = ("rtn", "gptq", "keras_int8", "keras_int4", "keras_gptq")
TYPES = ("Dense", "EinsumDense", "Embedding")


@dataclass(frozen=True)
class QuantizeConfig:
    """What `quantize` does; serializable with ``get_config``/``from_config``.

    ``layer_bits`` maps layer paths to bit widths that replace ``bits`` (mixed precision,
    e.g. from `allocate_bits`). ``include``/``exclude`` select layers as in
    `tfcompress.core.select_layers` (regex or list of paths/names). GPTQ options:
    ``damping`` (fraction of the mean Hessian diagonal), ``act_order``, ``sequential``
    (each block's inputs come from the model quantized so far, so later blocks compensate
    earlier errors; False: all from the float model), ``max_rows`` (calibration rows per
    layer), ``blocks`` (the repeated blocks: None finds them, or a regex / layer names, see
    `tfcompress.core.find_blocks`) and ``resume_dir`` (a folder to save progress in and
    resume from). ``ragged``
    lets a ``group_size`` that does not divide a layer's input axis end it with a shorter
    group (otherwise that raises).
    """

    method: str = "rtn"
    scheme: str = "affine"
    bits: int = 8
    granularity: str = "channel"
    group_size: int | None = None
    types: tuple[str, ...] = TYPES
    include: str | tuple[str, ...] | None = None
    exclude: str | tuple[str, ...] | None = None
    layer_bits: dict = field(default_factory=dict)
    damping: float = 0.01
    act_order: bool = False
    sequential: bool = True
    max_rows: int | None = 8192
    ragged: bool = False
    blocks: str | tuple[str, ...] | None = None
    resume_dir: str | None = None

    def __post_init__(self):
        if self.method not in METHODS:
            raise TfcompressError(f"method must be one of {METHODS}, got {self.method!r}")
        bad = [t for t in self.types if t not in TYPES]
        if bad:
            raise TfcompressError(f"types {bad} cannot be quantized: choose from {TYPES}")
        if self.method.startswith("keras_"):
            return
        for bits in {self.bits, *self.layer_bits.values()}:
            validate(self.scheme, bits, self.granularity, self.group_size)
        if not 0 <= self.damping <= 1:
            raise TfcompressError(f"damping must be in [0, 1], got {self.damping}")

    @classmethod
    def litert_int4(cls, method: str = "gptq", **fields) -> QuantizeConfig:
        """LiteRT's int4 grid: ``scheme="litert"``, 4 bits, groups of 32 input rows (the
        blockwise int4 of ``export_llm(mode="int4")``, which then copies the codes and scales
        exactly instead of re-rounding them). ``fields`` set the other options.

        Example:
            >>> config = QuantizeConfig.litert_int4("gptq", types=("Dense",))
            >>> q = quantize(model, config, calibration=windows)
            >>> export_llm(q, "bundle/", mode="int4")   # the same weights, bit for bit
        """
        return cls(method=method, **{"scheme": "litert", "bits": 4, "granularity": "group",
                                     "group_size": 32, **fields})

    def quantizer(self, path: str = "") -> Quantizer:
        """The quantizer for the layer at ``path`` (its ``layer_bits`` entry, else ``bits``)."""
        return Quantizer(self.scheme, int(self.layer_bits.get(path, self.bits)),
                         self.granularity, self.group_size, ragged=self.ragged)

    def get_config(self) -> dict:
        config = asdict(self)
        config["types"] = list(self.types)
        if isinstance(self.blocks, tuple):
            config["blocks"] = list(self.blocks)
        return config

    @classmethod
    def from_config(cls, config: dict) -> QuantizeConfig:
        config = dict(config)
        config["types"] = tuple(config.get("types", TYPES))
        for key in ("include", "exclude", "blocks"):
            if isinstance(config.get(key), list):
                config[key] = tuple(config[key])
        if config.get("resume_dir") is not None:
            config["resume_dir"] = str(config["resume_dir"])
        return cls(**config)


def quantize(model, config: QuantizeConfig | None = None, calibration=None,
             inplace: bool = False, verbose: int = 1, **overrides):
    """Weight-quantize a Keras 3 model; returns a copy unless ``inplace``.

    The result is not compiled (the float model's optimizer state does not apply to codes):
    compile it again to train or evaluate with ``fit``/``evaluate``.

    ``calibration``: token windows (array) or a list of input batches (arrays or dicts),
    needed by ``gptq`` and ``keras_gptq``. Keyword ``overrides`` replace config fields, e.g.
    ``quantize(model, bits=4, granularity="group", group_size=32)``.
    """
    check_model(model, "quantize", legacy_hint="tfcompress.quantize.tfmot_quantize")
    config = QuantizeConfig.from_config({**(config or QuantizeConfig()).get_config(),
                                         **overrides})
    layers = select_layers(model, types=config.types, include=config.include,
                           exclude=config.exclude)
    unknown = set(config.layer_bits) - {p for p, _ in layers}
    if unknown:
        raise TfcompressError(f"layer_bits names layers that are not selected: {sorted(unknown)}")
    if config.method == "keras_gptq":
        from tfcompress.quantize.keras_modes import attention_paths

        nested = sorted(attention_paths(model) & {p for p, _ in layers})
        if nested:
            raise TfcompressError(
                f"method='keras_gptq' cannot quantize layers inside MultiHeadAttention "
                f"({', '.join(nested[:4])}): Keras 3.15 saves them in files it cannot reload; "
                "exclude them (e.g. types=('Dense',)) or use method='gptq'"
            )
    if config.method in ("gptq", "keras_gptq"):
        batches = calibration_batches(calibration, model)  # checked before any work
    if not config.method.startswith("keras_"):
        for path, layer in layers:  # group sizes are checked before any work
            config.quantizer(path).group_rows(matrix_shape(layer)[0])
    target = drop_training_state(model if inplace else copy_model(model))
    paths = [p for p, _ in layers]
    if config.method.startswith("keras_"):
        from tfcompress.quantize.keras_modes import keras_quantize

        return keras_quantize(target, config, paths,
                              batches if config.method == "keras_gptq" else None)
    by_path = dict(select_layers(target, types=config.types, include=paths))
    results = {}
    if config.method == "gptq":
        able = [(p, by_path[p]) for p in paths if gptq_able(by_path[p])]
        results = calibrate(target, able, batches, gptq_compress(config), blocks=config.blocks,
                            sequential=config.sequential, max_rows=config.max_rows,
                            folder=config.resume_dir, key=run_key(config), verbose=verbose)
    for path in paths:  # the rest (embeddings; every layer for rtn) round to nearest
        if path not in results:
            results[path] = config.quantizer(path).quantize(kernel_matrix(by_path[path]))
    layout = {path: attach(by_path[path], results[path]) for path in paths}
    return mark_quantized(target, layout)


def gptq_compress(config: QuantizeConfig):
    """The calibration engine's ``compress`` for GPTQ: each layer of a block quantized from
    its input Hessian, its kernel set to the dequantized codes; returns ``{path: QTensor}``.

    Example:
        >>> calibrate(model, layers, ids, gptq_compress(QuantizeConfig(method="gptq", bits=4)))
    """
    def compress(group, stats):
        out = {}
        for path, layer in group:
            qt = gptq(kernel_matrix(layer), stats[path].take_hessian(), config.quantizer(path),
                      config.damping, config.act_order, layer=path)
            set_kernel_matrix(layer, qt.dequantize())  # later blocks see this error
            out[path] = qt
        return out

    return compress


def gptq_able(layer) -> bool:
    """Whether GPTQ applies to ``layer`` (not to embeddings)."""
    # an embedding's "input" is a token id: output error is row error, so RTN is optimal
    return not any(c.__name__ == "Embedding" for c in type(layer).__mro__)
