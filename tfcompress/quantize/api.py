"""`quantize`: post-training weight quantization of a Keras 3 model, on a copy.

The config's class picks the method, each registered with its handler here: `RTNConfig`
(round-to-nearest with any `Quantizer`), `GPTQConfig` (error-compensating, from calibration
inputs), and Keras's own `KerasInt8Config` / `KerasInt4Config` / `KerasGPTQConfig`
(``model.quantize``) for comparison. Ours store codes compactly (see `storage`) so the saved
``.keras`` shrinks and reloads to the same outputs.

Example:
    >>> config = GPTQConfig(bits=4, granularity="group", group_size=128)
    >>> q = quantize(model, config, calibration=token_windows)
    >>> q.save("model-int4.keras")
"""

from __future__ import annotations

from tfcompress.core.calibration import calibrate, calibration_batches, run_key
from tfcompress.core.layers import (
    copy_model,
    drop_training_state,
    kernel_matrix,
    matrix_shape,
    select_layers,
)
from tfcompress.core.memory import release_freed_memory
from tfcompress.core.registry import (
    MethodConfig,
    handler_for,
    register_handler,
    resolve_config,
)
from tfcompress.core.validation import check_model
from tfcompress.errors import TfcompressError
from tfcompress.quantize.config import (
    DEFAULT_METHOD,
    METHODS,
    GPTQConfig,
    KerasGPTQConfig,
    KerasInt4Config,
    KerasInt8Config,
    QuantizeConfig,
    RTNConfig,
)
from tfcompress.quantize.gptq import GPTQCompressor
from tfcompress.quantize.storage import store_codes

__all__ = ["METHODS", "QuantizeConfig", "quantize"]


def quantize(model, config: MethodConfig | QuantizeConfig | None = None, calibration=None, *,
             inplace: bool = False, verbose: int = 1, **overrides):
    """Weight-quantize a Keras 3 model by ``config``'s method; returns a copy unless
    ``inplace`` (no copy of the weights: the layers are replaced where they are; use the
    model returned, since a functional or Sequential model's graph is rebuilt around them).

    ``config``: a quantize method's config (`RTNConfig` when None). The result is not compiled
    (the float model's optimizer state does not apply to codes): compile it again to train or
    evaluate with ``fit``/``evaluate``. ``calibration``: token windows (array) or a list of
    input batches (arrays or dicts), needed by GPTQ. Keyword ``overrides`` replace config
    fields, e.g. ``quantize(model, bits=4, granularity="group", group_size=32)``; the old
    ``method="..."`` keyword and `QuantizeConfig` work for one release with a warning.

    Example:
        >>> q4 = quantize(model, GPTQConfig(bits=4, granularity="group", group_size=32),
        ...               calibration=windows)
    """
    check_model(model, "quantize", legacy_hint="tfcompress.quantize.tfmot_quantize")
    config = resolve_config("quantize", config, overrides, DEFAULT_METHOD,
                            legacy=QuantizeConfig)
    return handler_for("quantize", config)(model, config.for_model(model), calibration,
                                           inplace=inplace, verbose=verbose)


def _selected(model, config, layer_bits: dict | None = None) -> list[tuple[str, object]]:
    """The layers ``config`` selects, ``layer_bits`` (a grid's) checked against them."""
    layers = select_layers(model, types=config.layer_types, include=config.include,
                           exclude=config.exclude, method="quantize")
    unknown = set(layer_bits or {}) - {p for p, _ in layers}
    if unknown:
        raise TfcompressError(f"layer_bits names layers that are not selected: {sorted(unknown)}")
    return layers


def _copy(model, config, layers, inplace: bool, grid: bool = True):
    """The model to quantize (a copy unless ``inplace``), its chosen layers by path. ``grid``:
    our quantizer's group sizes are checked first (Keras's modes check their own)."""
    for path, layer in layers if grid else []:  # group sizes are checked before any work
        config.quantizer(path).group_rows(matrix_shape(layer)[0])
    target = drop_training_state(model if inplace else copy_model(model))
    paths = [p for p, _ in layers]
    return target, dict(select_layers(target, types=config.layer_types, include=paths,
                                      method="quantize"))


def _store(target, config: RTNConfig | GPTQConfig, by_path: dict, results: dict):
    """Round the layers without results to nearest; store every layer's codes."""
    for path, layer in by_path.items():
        if path not in results:
            results[path] = config.quantizer(path).quantize(kernel_matrix(layer))
    stored = store_codes(target, {path: results[path] for path in by_path})
    release_freed_memory()  # the codes' unpacked copies and the rebuilt graph's temporaries
    return stored


@register_handler(RTNConfig)
def _rtn(model, config: RTNConfig, calibration=None, *, inplace: bool = False,
         verbose: int = 1):
    target, by_path = _copy(model, config, _selected(model, config, config.layer_bits),
                            inplace)
    return _store(target, config, by_path, {})


@register_handler(GPTQConfig)
def _gptq(model, config: GPTQConfig, calibration=None, *, inplace: bool = False,
          verbose: int = 1):
    layers = _selected(model, config, config.layer_bits)
    batches = calibration_batches(calibration, model)  # checked before any work
    target, by_path = _copy(model, config, layers, inplace)
    able = [(p, la) for p, la in by_path.items() if gptq_able(la)]
    results = calibrate(target, able, batches, GPTQCompressor(config), blocks=config.blocks,
                        sequential=config.sequential, max_rows=config.max_rows,
                        folder=config.resume_dir, key=run_key(config), verbose=verbose)
    return _store(target, config, by_path, results)  # embeddings round to nearest


@register_handler(KerasInt8Config)
@register_handler(KerasInt4Config)
def _keras_mode(model, config, calibration=None, *, inplace: bool = False, verbose: int = 1):
    from tfcompress.quantize.keras_modes import keras_quantize

    layers = _selected(model, config)
    target, _ = _copy(model, config, layers, inplace, grid=False)
    return keras_quantize(target, config, [p for p, _ in layers], None)


@register_handler(KerasGPTQConfig)
def _keras_gptq(model, config: KerasGPTQConfig, calibration=None, *, inplace: bool = False,
                verbose: int = 1):
    from tfcompress.quantize.keras_modes import attention_paths, keras_quantize

    layers = _selected(model, config)
    nested = sorted(attention_paths(model) & {p for p, _ in layers})
    if nested:
        raise TfcompressError(
            f"KerasGPTQConfig cannot quantize layers inside MultiHeadAttention "
            f"({', '.join(nested[:4])}): Keras 3.15 saves them in files it cannot reload; "
            "exclude them (e.g. types=('Dense',)) or use GPTQConfig"
        )
    batches = calibration_batches(calibration, model)  # checked before any work
    target, _ = _copy(model, config, layers, inplace, grid=False)
    return keras_quantize(target, config, [p for p, _ in layers], batches)


def gptq_able(layer) -> bool:
    """Whether GPTQ applies to ``layer`` (not to embeddings)."""
    # an embedding's "input" is a token id: output error is row error, so RTN is optimal
    return not any(c.__name__ == "Embedding" for c in type(layer).__mro__)
