"""Keras (3 or tf.keras) model -> verified, inspected ``.tflite`` file.

Example:
    >>> result = export_tflite(model, "runs/model.tflite", mode="int8", seq_len=128,
    ...                        calibration=corpus_windows, eval_data=test_batches)
    >>> result.agreement, result.perplexity, result.not_delegated
"""

from __future__ import annotations

import time
import warnings
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from tfcompress._extras import require
from tfcompress.core.deprecation import renamed_argument
from tfcompress.core.files import file_sizes, write_atomic
from tfcompress.core.latency import keras_forward
from tfcompress.core.layers import (
    is_keras3_model,
    is_keras_model,
    iter_layers,
    layer_type,
    matrix_shape,
)
from tfcompress.core.progress import print_msg
from tfcompress.core.quality import lm_quality
from tfcompress.core.signature import (
    check_auxiliary_inputs,
    input_view,
    model_seq_len,  # noqa: F401  (moved to core.signature; still importable from here)
)
from tfcompress.core.validation import check_output_path, check_seq_len
from tfcompress.errors import TfcompressError, VerificationError
from tfcompress.export.converter import (
    convert,
    has_fake_quant,  # noqa: F401  (moved to export.converter; still importable from here)
    input_spec,
    to_saved_model,  # noqa: F401  (likewise)
)
from tfcompress.export.diagnose import diagnose
from tfcompress.export.modes import INT4_BLOCK, MODES, ExportMode, check_int4_blocks
from tfcompress.export.ops import describe_ops, inspect_tflite
from tfcompress.export.representative import InputSpec, representative_samples
from tfcompress.export.runner import TFLiteRunner
from tfcompress.export.verification import (
    Tolerances,
    agreement_stats,  # noqa: F401  (moved to export.verification; still importable from here)
    discard,
    verify,
)
from tfcompress.quantize.smooth import check_strength
from tfcompress.quantize.smooth import smooth as smooth_model


class XNNPACKFallbackWarning(UserWarning):
    """Matmuls of an exported model run outside the XNNPACK delegate (the lookups and mask
    ops a language model always leaves out are listed in ``not_delegated`` only)."""


# where the time goes: these outside XNNPACK are worth a warning
MATMUL_OPS = ("FULLY_CONNECTED", "BATCH_MATMUL", "CONV_2D", "DEPTHWISE_CONV_2D")


class ExportSizeWarning(UserWarning):
    """An exported file is larger than the weights of the model it came from."""


# a .tflite file holds its graph next to the weights: that much more is not worth a warning
SIZE_SLACK_BYTES = 64 * 1024
SIZE_SLACK_RATIO = 1.1
# modes whose converter / quantizer quantizes the weights itself: a quantize()d model's
# layers go in as their decoded float weights (no unpacking ops in the graph)
FLOAT_WEIGHT_MODES = ("float32", "float16")


def weight_bytes(model) -> int:
    """Bytes the model's weights hold as stored (codes and scales of quantized layers)."""
    return int(sum(np.asarray(w.numpy()).nbytes for w in model.weights))


@contextmanager
def decoded_weights(model, enabled: bool = True):
    """Inside the block, ``model``'s quantized layers (`tfcompress.quantize` codes) compute
    with their decoded float weights, so a converter sees plain float kernels to quantize in
    its own format instead of the ops that unpack codes."""
    from tfcompress.quantize.storage import cache_decoded

    cached = any("_tfc_cached" in la.__dict__ for _, la in iter_layers(model))
    if not enabled or cached:
        yield
        return
    cache_decoded(model)
    try:
        yield
    finally:
        cache_decoded(model, enabled=False)


@dataclass
class ExportResult:
    """Where the file went, its size, what is inside and how well it agrees with Keras."""

    path: str
    mode: str
    bytes: int
    gzip_bytes: int
    max_abs_error: float | None = None
    agreement: float | None = None
    relative_error: float | None = None
    perplexity: float | None = None
    keras_perplexity: float | None = None
    input_dtype: str = ""
    output_dtype: str = ""
    inputs: dict = field(default_factory=dict)
    qat: bool = False
    quantizer: str = "tflite-converter"
    # mode="int4": which quantized layers kept their codes exactly, which LiteRT re-rounded,
    # how the embedding is stored (as export_llm's)
    int4: dict | None = None
    ops: dict = field(default_factory=dict)
    tensor_dtypes: dict = field(default_factory=dict)
    xnnpack_partitions: int = 0
    not_delegated: dict = field(default_factory=dict)
    float_ops: dict = field(default_factory=dict)
    outside_npu: dict = field(default_factory=dict)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def keras_agreement(model, runner: TFLiteRunner, sample: np.ndarray, eval_data=None,
                    max_batches: int | None = None) -> dict:
    """TFLite vs Keras on ``sample`` (`agreement_stats`); with ``eval_data`` also both
    perplexities: the figures `verify` checks."""
    forward = keras_forward(model)
    stats = agreement_stats(forward(sample), runner.predict(sample))
    if eval_data is not None:
        stats["keras_perplexity"] = lm_quality(forward, eval_data, max_batches)["perplexity"]
        stats["perplexity"] = lm_quality(runner.predict, eval_data, max_batches)["perplexity"]
    return stats


def _where_it_breaks(model, path: Path, sample: np.ndarray, spec: InputSpec) -> str:
    """The first op of a failed fixed-range export that adds a large error, from `diagnose`
    on a few verification rows: which layer to keep float, re-calibrate or retrain."""
    try:
        report = diagnose(model, path, sample[:8].astype(spec.dtype), spec.shape[1])
    except (ValueError, RuntimeError) as err:  # the verification failure stays the news
        return f"no per-tensor diagnosis ({type(err).__name__}: {err})"
    row = report.first_broken()
    if row is None:
        worst = report.worst(1)
        return ("no single op adds more than 10 % error (tensor errors build up); the worst: "
                + worst[0].describe() if worst else "no quantized tensor to compare")
    return ("first op that breaks it (tfcompress.export.diagnose, > 10 % added error): "
            + row.describe())


def _check_litert(mode: ExportMode) -> None:
    if mode.litert_recipe is None:
        return
    try:
        require("ai_edge_quantizer", extra="litert", feature=f"mode {mode.name!r}")
    except ImportError as err:
        raise TfcompressError(str(err)) from None


def _matmul_input_sizes(model) -> dict[str, list[int]]:
    """Each dense layer's path → the input size of its matmul (two for a low-rank pair)."""
    sizes = {}
    for path, layer in iter_layers(model):
        kind = layer_type(layer)  # a QuantizedDense is a Dense
        if kind in ("Dense", "EinsumDense"):
            sizes[path] = [matrix_shape(layer)[0]]
        elif kind == "LowRankDense":
            sizes[path] = [int(np.prod(layer.u.shape[:-1])), int(layer.rank)]
    return sizes


def export_tflite(
    model,
    path: str | Path,
    mode: str = "float32",
    seq_len: int | None = None,
    *,
    calibration=None,
    int8_io: bool = False,
    batch_size: int | None = 1,
    sample: np.ndarray | None = None,
    eval_data=None,
    verify_output: bool = True,
    max_abs_error: float | None = None,
    min_agreement: float | None = None,
    max_ppl_ratio: float | None = None,
    max_samples: int = 100,
    auxiliary_inputs: str = "fixed",
    smooth: float | None = None,
    verbose: int = 1,
    representative_data=None,
) -> ExportResult:
    """Convert ``model`` to ``.tflite`` at ``path`` in ``mode`` (see `MODES`) and verify it.

    Any Keras 3 model is exported with its main input (token ids or features) first, named
    ``token_ids``; a subclassed model is traced at ``seq_len``. Auxiliary inputs such as a
    KerasHub CausalLM's ``padding_mask`` are fixed to ones inside the graph
    (``auxiliary_inputs="fixed"``) or become further inputs of the model's dtype, shape
    ``(batch, seq_len)`` (``"exposed"``; the runner and verification feed them ones).
    ``calibration`` (int8, int16x8; ``representative_data`` is its deprecated name): samples of
    the model input, as an array or a ``tf.data`` dataset (of inputs or ``(inputs, targets,
    ...)``); at most ``max_samples`` are used. ``int8_io`` (int8 only) makes float inputs and
    the outputs int8 tensors; token-id inputs stay int32. ``batch_size`` fixes the exported
    batch (None: dynamic). Verification runs the interpreter on ``sample`` (default: 4
    calibration or random inputs) and on ``eval_data`` batches ``(inputs, targets[, mask])`` if
    given, and raises `VerificationError` with the figures beyond the mode's tolerances (or
    ``max_abs_error``, ``min_agreement``, ``max_ppl_ratio``; any one figure fails, `verify`) and
    keeps no file. ``smooth`` (the fixed-range modes int8, int8_mixed, int16x8): a SmoothQuant
    migration strength in [0, 1] (0.5 usually); a copy with per-channel scales folded into its
    norms and the matmuls they feed (`tfcompress.quantize.smooth`, calibrated on
    ``calibration``) is exported, and verified against ``model`` itself. Operators that XNNPACK
    does not take are in ``not_delegated`` (printed with ``verbose``; matmuls among them warn,
    `XNNPACKFallbackWarning`). A quantized model goes into the weight-quantizing modes (all but
    float32 / float16) with its decoded weights, so the file holds that mode's own int8 / int4
    weights; ``int4`` is `export_llm`'s int4 (`tfcompress.export.llm_int4`): codes on LiteRT's
    grid are kept exactly, others rounded onto it, the token embedding int8 per row (``int4`` in
    the result says which). A file larger than the model's own weight bytes warns
    (`ExportSizeWarning`).

    Example:
        >>> export_tflite(model, "m.tflite", mode="float16", seq_len=128).agreement
        1.0
    """
    calibration = renamed_argument("representative_data", representative_data, "calibration",
                                   calibration, DeprecationWarning)
    spec_mode = _check_export(model, path, mode, seq_len, auxiliary_inputs)
    reference = model
    if is_keras3_model(model):  # subclassed or dict-input models: export a graph view
        model = input_view(model, auxiliary_inputs=auxiliary_inputs)
    spec = input_spec(model, seq_len, batch_size)
    _check_data_options(spec, mode, int8_io, calibration, smooth)
    samples = None if calibration is None else representative_samples(
        calibration, spec, max_samples)
    sample = None if sample is None else _checked_sample(sample, spec)

    start = time.perf_counter()
    if smooth is not None:
        model = _smoothed(reference, samples, smooth, auxiliary_inputs, verbose)
    if verbose:
        print_msg(f"export: converting to {mode} ({spec_mode.description})")
    path = Path(path)
    result, runner = _write(model, reference, path, spec, mode, samples, int8_io)
    if verify_output:
        _verify_or_remove(result, reference, model, runner, spec, sample, samples, eval_data,
                          (max_abs_error, min_agreement, max_ppl_ratio), verbose)
    _warn_costs(result, reference, verbose)
    result.seconds = time.perf_counter() - start
    if verbose:
        print_msg(f"export: {path} {result.bytes:,} bytes (gzip {result.gzip_bytes:,}), "
                  f"agreement {result.agreement}, max |error| {result.max_abs_error}")
    return result


def _check_export(model, path, mode: str, seq_len: int | None, auxiliary_inputs: str
                  ) -> ExportMode:
    """`export_tflite`'s checks of the model, mode and path, before any tracing; the mode."""
    if mode not in MODES:
        raise TfcompressError(f"mode must be one of {sorted(MODES)}, got {mode!r}")
    check_auxiliary_inputs(auxiliary_inputs)
    spec_mode = MODES[mode]
    if not is_keras_model(model):
        raise TfcompressError(
            "model must be a Keras model (keras.Model or tf_keras.Model), "
            f"got {type(model).__name__}"
        )
    keras_quantized = [p for p, la in iter_layers(model) if getattr(la, "quantization_mode", None)]
    if keras_quantized:
        # The converter lowers Keras's raw int8 matmuls to FULLY_CONNECTED ops that reject
        # int8 activations, so conversion fails deep inside MLIR.
        raise TfcompressError(
            f"model holds Keras-native quantized layers ({', '.join(keras_quantized[:4])}"
            f"{', ...' if len(keras_quantized) > 4 else ''}), which the TFLite converter cannot "
            "lower; export the float model with mode='dynamic_int8', 'int8' or 'int4' instead"
        )
    check_output_path(path, "path")  # before a conversion that can take minutes
    check_seq_len(model, seq_len)
    if mode == "int4":
        check_int4_blocks(_matmul_input_sizes(model),
                          f"use mode='dynamic_int8', or widths (ranks) that are multiples of "
                          f"{INT4_BLOCK}")
    return spec_mode


def _check_data_options(spec: InputSpec, mode: str, int8_io: bool, calibration,
                        smooth: float | None) -> None:
    """`export_tflite`'s checks of the options that depend on the traced input ``spec``."""
    spec_mode = MODES[mode]
    if int8_io and mode != "int8":
        raise TfcompressError(f"int8_io is only for mode 'int8', got mode {mode!r}")
    if int8_io and calibration is None:
        raise TfcompressError("int8_io needs calibration to set the I/O ranges")
    if calibration is not None and not spec_mode.needs_representative:
        raise TfcompressError(
            f"calibration is only used by modes "
            f"{sorted(k for k, m in MODES.items() if m.needs_representative)}, not {mode!r}"
        )
    if calibration is None and spec_mode.needs_representative and mode != "int8":
        raise TfcompressError(f"mode {mode!r} needs calibration (samples of the model input: "
                              f"{spec.describe()})")
    _check_litert(spec_mode)
    if smooth is not None:
        check_strength(smooth, "smooth")
        if not spec_mode.static_activations:
            raise TfcompressError(
                f"smooth is only for the modes with fixed activation ranges "
                f"{sorted(k for k, m in MODES.items() if m.static_activations)}, not {mode!r}")
        if calibration is None:
            raise TfcompressError("smooth needs calibration (the activation maxima "
                                  "come from it)")


def _checked_sample(sample, spec: InputSpec) -> np.ndarray:
    """``sample`` as an array of the exported input's shape ``(n, ...)``."""
    sample = np.asarray(sample)
    if tuple(sample.shape[1:]) != tuple(spec.shape[1:]):
        raise TfcompressError(f"sample must have shape (n, {', '.join(map(str, spec.shape[1:]))})"
                              f", got {sample.shape}")
    return sample


def _smoothed(reference, samples: list, smooth: float, auxiliary_inputs: str, verbose: int):
    """The graph to convert: a copy of ``reference`` with SmoothQuant scales folded in."""
    if verbose:
        print_msg(f"export: smoothing activations (strength {smooth}) on a copy")
    smoothed = smooth_model(reference, np.concatenate(samples), smooth, verbose=int(verbose))
    return input_view(smoothed, auxiliary_inputs=auxiliary_inputs) if is_keras3_model(
        smoothed) else smoothed


def _write(model, reference, path: Path, spec: InputSpec, mode: str, samples: list | None,
           int8_io: bool) -> tuple[ExportResult, TFLiteRunner]:
    """Convert ``model``, write ``path`` and describe the file (sizes, dtypes, operators)."""
    spec_mode = MODES[mode]
    with decoded_weights(reference, enabled=mode not in FLOAT_WEIGHT_MODES):
        flatbuffer, qat, int4 = convert(model, spec, mode, samples, int8_io)
    write_atomic(path, flatbuffer)  # a failed write leaves the old file or none, never half
    runner = TFLiteRunner(path)
    info = inspect_tflite(flatbuffer)
    result = ExportResult(
        str(path), mode, **file_sizes(path), qat=qat,
        input_dtype=np.dtype(runner.input["dtype"]).name,
        inputs={name: np.dtype(d["dtype"]).name for name, d in runner.inputs.items()},
        output_dtype=np.dtype(runner.output["dtype"]).name,
        quantizer="ai-edge-quantizer" if spec_mode.litert_recipe else "tflite-converter",
        int4=int4, **info,
    )
    return result, runner


def _verify_or_remove(result: ExportResult, reference, model, runner: TFLiteRunner,
                      spec: InputSpec, sample: np.ndarray | None, samples: list | None,
                      eval_data, tolerances: tuple, verbose: int) -> None:
    """Verify the written file against ``reference``; one that fails the tolerances
    (``max_abs_error``, ``min_agreement``, ``max_ppl_ratio``) is deleted, and the error says
    where a fixed-range export breaks."""
    path, spec_mode = Path(result.path), MODES[result.mode]
    if verbose:
        print_msg(f"export: verifying {path.name} against Keras")
    if sample is None:
        sample = (np.concatenate(samples[:4]) if samples
                  else runner.sample_input(4 * (spec.shape[0] or 1)))
    stats = keras_agreement(reference, runner, sample.astype(spec.dtype), eval_data)
    for key, value in stats.items():
        setattr(result, key, value)
    try:
        verify(result, Tolerances.of(spec_mode, *tolerances))
    except VerificationError as err:
        where = (f"; {_where_it_breaks(model, path, sample, spec)}"
                 if spec_mode.static_activations else "")
        raise discard(path, err, where) from None


def _warn_costs(result: ExportResult, reference, verbose: int) -> None:
    """Warn when the file is larger than the model's own weights, or matmuls run outside
    XNNPACK (other operators outside it are printed with ``verbose``)."""
    path, mode = Path(result.path), result.mode
    spec_mode = MODES[mode]
    own = weight_bytes(reference)
    if result.bytes > own * SIZE_SLACK_RATIO + SIZE_SLACK_BYTES:
        warnings.warn(
            f"{path.name} is {result.bytes:,} bytes, more than the {own:,} bytes of the "
            f"model's own weights: mode {mode!r} stores {spec_mode.description.split(',')[0]}"
            "; a mode with fewer bits per weight (int4, dynamic_int8) makes it smaller",
            ExportSizeWarning, stacklevel=3)
    slow = {op: n for op, n in result.not_delegated.items() if op in MATMUL_OPS}
    if slow:
        warnings.warn(f"{path.name}: matmuls outside XNNPACK (run on reference CPU kernels, "
                      f"slowly): {describe_ops(slow)}; another mode may keep them in XNNPACK",
                      XNNPACKFallbackWarning, stacklevel=3)
    elif result.not_delegated and verbose:
        print_msg(f"export: operators outside XNNPACK (reference CPU kernels): "
                  f"{describe_ops(result.not_delegated)}")
