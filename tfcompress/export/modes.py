"""The export modes: how each one sets up the converter (or the LiteRT quantizer) and the
tolerances its built-in verification uses.

``MODES`` is a registry: add a mode by adding an `ExportMode`.

Example:
    >>> MODES["int8"].needs_representative
    True
    >>> sorted(MODES)[:3]
    ['dynamic_int8', 'float16', 'float32']
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from tfcompress.errors import TfcompressError
from tfcompress.models.gpt_integer import FLOAT_ISLAND

# the modes `export_llm` writes a KV-cache bundle in: weights only (activations float), then
# full integer (`tfcompress.export.llm_integer`: BOS's keys and values kept float)
LLM_MODES = ("float32", "float16", "dynamic_int8", "int4", "int16x8", "int8_static")
# LiteRT's blockwise int4 recipe (dynamic_wi4b32_afp32) splits each matmul's input axis into
# blocks of this many weights
INT4_BLOCK = 32


def check_int4_blocks(input_sizes: dict[str, list[int]], hint: str) -> None:
    """Refuse, before converting, the matmuls whose input size is no multiple of `INT4_BLOCK`
    (``input_sizes``: layer → the input size of each of its matmuls); ``hint`` says what to do.

    Example:
        >>> check_int4_blocks({"mlp_in": [64], "low_rank": [64, 48]}, "use 'dynamic_int8'")
        Traceback (most recent call last):
        tfcompress.errors.TfcompressError: mode='int4' needs ... {'low_rank': [64, 48]}: ...
    """
    bad = {name: sizes for name, sizes in input_sizes.items()
           if any(n % INT4_BLOCK for n in sizes)}
    if bad:
        raise TfcompressError(
            f"mode='int4' needs every matmul's input size to be a multiple of {INT4_BLOCK} "
            f"(LiteRT's int4 blocks); got input sizes {bad}: {hint}")


@dataclass(frozen=True)
class ExportMode:
    """One way to produce a ``.tflite`` file.

    ``configure(converter, representative, int8_io)`` sets up a ``tf.lite.TFLiteConverter``;
    ``representative`` is a generator function (or None). A mode with ``float_ops`` keeps
    those operators float (selective quantization through
    ``tf.lite.experimental.QuantizationDebugger``), and one with ``float_scopes`` the operators
    traced under those name scopes (`in_scopes`; in a LiteRT recipe, as ``no_quantize``). A
    mode with ``static_activations`` gives activations fixed ranges, so the model is traced
    with bounded attention masks (`tfcompress.models.attention`). A mode with
    ``litert_recipe`` converts to float32 first and then applies that ``ai_edge_quantizer``
    recipe.
    Verification (`tfcompress.export.verification.verify`, for window files and LLM bundles
    alike) fails when the largest logit error exceeds ``max_rel_error`` times the largest
    |Keras logit|, when next-token agreement is below ``min_agreement``, or when the
    perplexity ratio (export / Keras, when measured on text) exceeds ``max_ppl_ratio``: any
    one figure is enough.
    """

    name: str
    description: str
    configure: Callable
    max_rel_error: float
    min_agreement: float
    max_ppl_ratio: float
    needs_representative: bool = False
    litert_recipe: str | None = None
    float_ops: tuple[str, ...] = ()
    float_scopes: tuple[str, ...] = ()
    static_activations: bool = False


def _float32(converter, representative, int8_io: bool) -> None:
    del converter, representative, int8_io  # the converter's default is float32


def _float16(converter, representative, int8_io: bool) -> None:
    import tensorflow as tf

    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.target_spec.supported_types = [tf.float16]


def _dynamic_int8(converter, representative, int8_io: bool) -> None:
    import tensorflow as tf

    converter.optimizations = [tf.lite.Optimize.DEFAULT]


def _int8_mixed(converter, representative, int8_io: bool) -> None:
    import tensorflow as tf

    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS,
                                           tf.lite.OpsSet.TFLITE_BUILTINS_INT8]


# Kept float by int8_mixed: the residual stream (outlier features), LayerNorm and softmax are
# where per-tensor int8 ranges lose the most on a transformer. BATCH_MATMUL (activation times
# activation: attention scores and values, and RMSNorm's sum of squares, a row's dot product
# with itself) reads the residual stream's full range there.
TRANSFORMER_FLOAT_OPS = ("ADD", "SUB", "MUL", "MEAN", "SQUARED_DIFFERENCE", "RSQRT", "SOFTMAX",
                         "SELECT", "SELECT_V2", "BATCH_MATMUL")


def scope_pattern(scope: str) -> str:
    """The regular expression of a tensor traced under name scope ``scope`` (`in_scopes`)."""
    return rf"(^|/){re.escape(scope)}(_\d+)?/"


def in_scopes(tensor_name: str, scopes: tuple[str, ...]) -> bool:
    """Whether a TFLite tensor was traced under one of ``scopes`` (TensorFlow numbers a
    repeated scope ``name_1``, ``name_2``; a fused op's name joins its ops' with ``;``).

    Example:
        >>> in_scopes("gpt/float_island_3/MatMul;gpt/transpose", ("float_island",))
        True
        >>> in_scopes("gpt/float_islands/MatMul", ("float_island",))
        False
    """
    return any(re.search(scope_pattern(scope), tensor_name) for scope in scopes)


def _int8(converter, representative, int8_io: bool) -> None:
    import tensorflow as tf

    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if representative is None:
        # A QAT model: the converter takes ranges from its fake-quant ops.
        return
    converter.representative_dataset = representative
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    if int8_io:
        # Only float tensors change type: integer token ids stay int32.
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8


MODES: dict[str, ExportMode] = {
    m.name: m
    for m in (
        # float32: 30 layers of SmolLM2 differ from Keras by up to 1e-4 of the largest logit
        ExportMode("float32", "float32 weights and activations", _float32, 1e-3, 0.99, 1.001),
        ExportMode("float16", "float16 weights, float32 compute", _float16, 2e-2, 0.97, 1.01),
        # int8 and int4 weights of a real LLM cost more than a toy's: SmolLM2-135M on 128
        # tokens of text keeps 88 % of Keras's next tokens at 1.03x its perplexity with
        # dynamic_int8 (max |error| 0.28 of the largest logit, its massive activations), and
        # 53 % at 1.6x with int4 rounded from float (0.42); a broken file scores near 0 %
        ExportMode(
            "dynamic_int8",
            "int8 weights, activations quantized on the fly (converter PTQ); on a QAT model "
            "the fake-quant ranges give real int8 ops",
            _dynamic_int8, 0.5, 0.8, 1.10,
        ),
        ExportMode(
            "int8",
            "full-integer int8 from a representative dataset (or a QAT model's ranges); "
            "attention is traced with bounded masks so every activation range stays finite",
            _int8, 0.25, 0.85, 1.10, needs_representative=True, static_activations=True,
        ),
        ExportMode(
            "int8_mixed",
            "int8 weight matmuls, embeddings and GELU from a representative dataset; residual "
            "adds, norms, attention's activation matmuls, masking and softmax stay float",
            _int8_mixed, 0.25, 0.85, 1.10, needs_representative=True,
            float_ops=TRANSFORMER_FLOAT_OPS, static_activations=True,
        ),
        ExportMode(
            "int8_islands",
            f"full-integer int8 but for the operators traced under a {FLOAT_ISLAND!r} name "
            "scope, left float (XNNPACK's float kernels where it has no int8 one, e.g. "
            "integer_gpt's attention)",
            _int8_mixed, 0.25, 0.85, 1.10, needs_representative=True,
            float_scopes=(FLOAT_ISLAND,), static_activations=True,
        ),
        # int16x8: a SmolLM2-135M bundle (BOS kept float, 2 calibration windows) keeps 84 %
        # of Keras's next tokens on 128 tokens of text, max |error| 0.35 of the largest logit
        ExportMode(
            "int16x8",
            "int16 activations, int8 weights (LiteRT quantizer, calibrated)",
            _float32, 0.5, 0.8, 1.10, needs_representative=True,
            litert_recipe="static_wi8_ai16", static_activations=True,
        ),
        ExportMode(
            "int8_static",
            "full-integer int8 activations and weights (LiteRT quantizer, calibrated; the "
            "widest range each tensor reached)",
            _float32, 0.25, 0.85, 1.10, needs_representative=True,
            litert_recipe="static_wi8_ai8", static_activations=True,
        ),
        ExportMode(
            "int16x8_islands",
            f"int16x8 but for the operators traced under a {FLOAT_ISLAND!r} name scope, left "
            "float (e.g. prefixed_llama's attention and norms)",
            _float32, 0.4, 0.85, 1.10, needs_representative=True,
            litert_recipe="static_wi8_ai16", float_scopes=(FLOAT_ISLAND,),
            static_activations=True,
        ),
        ExportMode(
            "int4",
            "blockwise int4 weights (block 32), int8 embedding rows, float activations "
            "(LiteRT quantizer; a quantized model's codes on its grid kept)",
            _float32, 0.7, 0.45, 2.0, litert_recipe="dynamic_wi4b32_afp32",
        ),
    )
}
