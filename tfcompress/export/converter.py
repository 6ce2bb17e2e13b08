"""Keras (3 or tf.keras) model -> ``.tflite`` flatbuffer bytes in one of `MODES`: the traced
input, the inference SavedModel, the TFLite converter and, for LiteRT's modes, the
``ai_edge_quantizer`` recipe. `export_tflite` adds checks, writing and verification.

Example:
    >>> spec = input_spec(model, seq_len=128)           # (1, 128) int32 token ids
    >>> flatbuffer, qat, int4 = convert(model, spec, "dynamic_int8")
"""

from __future__ import annotations

import tempfile
from contextlib import nullcontext
from pathlib import Path

import numpy as np

from tfcompress.core.layers import is_keras3_model
from tfcompress.core.progress import progress_bar, quiet
from tfcompress.core.signature import model_seq_len
from tfcompress.errors import TfcompressError
from tfcompress.export.llm_int4 import quantize_keras_int4
from tfcompress.export.modes import MODES, ExportMode, in_scopes, scope_pattern
from tfcompress.export.representative import MAIN_NAME, InputSpec
from tfcompress.export.runner import TFLiteRunner
from tfcompress.models.attention import bounded_attention_masks


def input_spec(model, seq_len: int | None, batch_size: int | None = 1) -> InputSpec:
    """The exported input of a one-input model (or an `input_view` exposing masks):
    ``(batch_size, seq_len, ...)``, its dtype and the ``(name, dtype)`` of each mask."""
    if batch_size is not None and batch_size < 1:
        raise TfcompressError(f"batch_size must be a positive integer or None, got {batch_size}")
    inputs = getattr(model, "inputs", None) or ()
    masks = inputs[1:] if is_keras3_model(model) else ()
    if len(inputs) != 1 + len(masks) or not all(t.name.endswith("mask") for t in masks):
        raise TfcompressError("model must have exactly one input (token ids or features)")
    tensor = inputs[0]
    rest = tuple(tensor.shape[2:])
    if any(d is None for d in rest):
        raise TfcompressError(f"model input dimensions after the sequence must be fixed: "
                              f"{tuple(tensor.shape)}")
    dtype = np.dtype(getattr(tensor.dtype, "name", tensor.dtype)).name
    vocab = int(model.outputs[0].shape[-1]) if np.issubdtype(np.dtype(dtype), np.integer) else None
    length = model_seq_len(model, seq_len)
    return InputSpec((batch_size, length, *rest), dtype, vocab,
                     tuple((t.name, np.dtype(getattr(t.dtype, "name", t.dtype)).name)
                           for t in masks))


def to_saved_model(model, directory: str | Path, spec: InputSpec) -> None:
    """Write an inference SavedModel with one signature ``token_ids[, masks] -> logits``."""
    import keras
    import tensorflow as tf

    tf_spec = tf.TensorSpec(spec.shape, tf.as_dtype(spec.dtype), name=MAIN_NAME)
    if isinstance(model, keras.Model):
        masks = [tf.TensorSpec(spec.shape[:2], tf.as_dtype(dtype), name=name)
                 for name, dtype in spec.auxiliary]
        # Keras 3 variables are only tracked by Keras's own export archive.
        model.export(str(directory), format="tf_saved_model",
                     input_signature=[[tf_spec, *masks]] if masks else [tf_spec], verbose=False)
        return
    fn = tf.function(lambda token_ids: model(token_ids, training=False),
                     input_signature=[tf_spec])
    # a bare module holding the variables: saving the tf.keras model itself would also trace
    # every layer's call for Keras's own SavedModel format, which the converter never reads
    module = tf.Module()
    module.variables_ = list(model.variables)
    tf.saved_model.save(module, str(directory), signatures={"serving_default": fn})


def has_fake_quant(directory: str | Path) -> bool:
    """Whether a SavedModel holds fake-quantization ops (a quantization-aware-trained model)."""
    from tensorflow.core.protobuf import saved_model_pb2

    saved = saved_model_pb2.SavedModel()
    saved.ParseFromString((Path(directory) / "saved_model.pb").read_bytes())
    for graph in saved.meta_graphs:
        nodes = [*graph.graph_def.node,
                 *(n for f in graph.graph_def.library.function for n in f.node_def)]
        if any(n.op.startswith("FakeQuant") for n in nodes):
            return True
    return False


def widest_ranges(results) -> dict:
    """Per tensor, the smallest ``min`` and largest ``max`` of several ``ai_edge_quantizer``
    calibration results (``{tensor: {"min": array, "max": array}}``).

    The quantizer's own calibration keeps a moving average (0.95 old, 0.05 new) of each
    sample's range, which clips the extremes of every sample after the first: SmolLM2's
    int16 norm statistics lost 3 % of their values to that, a tiny Llama's 9 %.

    Example:
        >>> r = widest_ranges([{"t": {"min": np.array([-1.0]), "max": np.array([2.0])}},
        ...                    {"t": {"min": np.array([-3.0]), "max": np.array([1.0])}}])
        >>> float(r["t"]["min"][0]), float(r["t"]["max"][0])
        (-3.0, 2.0)
    """
    merged: dict = {}
    for result in results:
        for name, qsv in result.items():
            old = merged.get(name)
            if not old or not qsv:
                merged[name] = dict(qsv) if qsv else old
                continue
            merged[name] = {**qsv, "min": np.minimum(old["min"], qsv["min"]),
                            "max": np.maximum(old["max"], qsv["max"])}
    return merged


def litert_quantize(flatbuffer: bytes, recipe_name: str, samples=None,
                    float_scopes: tuple[str, ...] = (), float_io: bool = False,
                    widen=None) -> bytes:
    """Apply an ``ai_edge_quantizer`` recipe to a float flatbuffer, calibrating if needed on
    ``samples``, a sequence of ``(signature key, named inputs)``; the operators traced under
    ``float_scopes`` stay float. ``float_io`` keeps every signature's inputs and outputs
    float (quantized inside): a bundle's KV cache is one buffer for all its signatures,
    whose int16 scales would each be their own. ``widen`` maps the calibrated ranges
    (`widest_ranges`) to those quantized with."""
    from ai_edge_quantizer import quantizer, recipe

    qt = quantizer.Quantizer(flatbuffer)
    qt.load_quantization_recipe(getattr(recipe, recipe_name)())
    for io in ("INPUT", "OUTPUT") if float_io else ():
        qt.update_quantization_recipe(".*", io, algorithm_key="no_quantize")
    for scope in float_scopes:  # the recipe's last matching entry wins
        qt.update_quantization_recipe(scope_pattern(scope), "*", algorithm_key="no_quantize")
    calibration = None
    if qt.need_calibration:
        bar = progress_bar(len(samples), unit_name="calibration sample")

        def each(sample):
            key, inputs = sample
            with quiet():
                result = qt.calibrate({key: [inputs]})
            bar.add(1)
            return result
        # one sample at a time: each range the widest any sample reached (widest_ranges)
        calibration = widest_ranges(each(s) for s in samples)
        if widen is not None:
            calibration = widen(calibration)
    with quiet():
        return bytes(qt.quantize(calibration).quantized_model)


def convert(model, spec: InputSpec, mode: str = "float32", samples: list | None = None,
            int8_io: bool = False, bounded_masks: bool | None = None
            ) -> tuple[bytes, bool, dict | None]:
    """Flatbuffer bytes of ``model`` in ``mode``, whether it was a QAT (fake-quant) model,
    and for ``int4`` the report of `quantize_keras_int4` (the int4 path of `export_llm`: a
    `tfcompress.quantize`d layer's codes are kept, the embedding is int8 per row).

    ``samples`` are validated representative inputs (see `representative_samples`).
    ``bounded_masks`` traces attention with `bounded_attention_masks` (default: the modes
    with fixed activation ranges).
    """
    import tensorflow as tf
    from ai_edge_litert.interpreter import Interpreter

    spec_mode: ExportMode = MODES[mode]
    if bounded_masks is None:
        bounded_masks = spec_mode.static_activations
    masks = bounded_attention_masks() if bounded_masks else nullcontext()
    with tempfile.TemporaryDirectory() as tmp:
        with masks:
            to_saved_model(model, tmp, spec)
        qat = has_fake_quant(tmp)
        if samples is None and mode == "int8" and not qat:
            raise TfcompressError(
                f"mode {mode!r} needs calibration (samples of the model input: "
                f"{spec.describe()}); only a quantization-aware (fake-quant) model can skip it"
            )
        converter = tf.lite.TFLiteConverter.from_saved_model(tmp)
        # several inputs go by name: a list would follow the signature's sorted names
        representative = None if samples is None else (lambda: (
            spec.named(s) if spec.auxiliary else [s] for s in samples))
        spec_mode.configure(converter, representative, int8_io)
        if (spec_mode.float_ops or spec_mode.float_scopes) and not spec_mode.litert_recipe:
            options = tf.lite.experimental.QuantizationDebugOptions(
                denylisted_ops=list(spec_mode.float_ops))
            debugger = tf.lite.experimental.QuantizationDebugger(
                converter=converter, debug_dataset=representative, debug_options=options)
            if spec_mode.float_scopes:  # named as in the calibrated file the quantizer reads
                options.denylisted_nodes = [
                    d["name"] for d in Interpreter(
                        model_content=debugger.calibrated_model).get_tensor_details()
                    if in_scopes(d["name"], spec_mode.float_scopes)]
            flatbuffer = debugger.get_nondebug_quantized_model()
        else:
            flatbuffer = converter.convert()
    int4 = None
    if mode == "int4":
        flatbuffer, int4 = quantize_keras_int4(flatbuffer, model)
    elif spec_mode.litert_recipe:
        key = next(iter(TFLiteRunner(flatbuffer).interpreter.get_signature_list()))
        flatbuffer = litert_quantize(flatbuffer, spec_mode.litert_recipe,
                                     [(key, spec.named(s)) for s in samples or ()],
                                     spec_mode.float_scopes)
    return flatbuffer, qat, int4
