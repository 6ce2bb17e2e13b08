"""What a model takes and gives, for any Keras model: one input or named inputs (a KerasHub
CausalLM's ``token_ids`` + ``padding_mask``), graph models or subclassed ones.

Verbs that feed a model token ids or features (calibration, evaluation, export, generation)
go through `model_inputs`, which fills auxiliary inputs: ``padding_mask`` gets ones (every
position is real), other ``*_mask`` inputs ones, anything else is refused by name.

Example:
    >>> model_inputs(gpt2_causal_lm, ids)          # {"token_ids": ids, "padding_mask": ones}
    >>> input_view(gpt2_causal_lm, seq_len=128)(ids)   # logits; one int32 input
    >>> input_view(gpt2_causal_lm, 128, "exposed")([ids, mask])   # the mask as an input
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tfcompress.core.layers import is_keras3_model
from tfcompress.errors import TfcompressError

MAIN_INPUTS = ("token_ids", "input_ids", "inputs", "images", "pixel_values")
# What becomes of auxiliary inputs (``padding_mask``) in a graph view of a model: fixed to
# ones inside the graph, or exposed as inputs after the main one.
AUXILIARY_INPUTS = ("fixed", "exposed")


@dataclass(frozen=True)
class Signature:
    """The main input's shape (batch axis first, None where free) and dtype, the names of
    the auxiliary inputs (empty for one-input models), and the main input's name when the
    model takes a dict."""

    shape: tuple
    dtype: str
    name: str | None = None
    auxiliary: tuple[str, ...] = ()


def signature(model) -> Signature:
    """The inputs of ``model``: from its graph inputs, else (subclassed) from the shape it
    was built with: token ids of any length when its first layer is an Embedding, else
    float features of the built shape.

    Example:
        >>> signature(gpt2_causal_lm)
        Signature(shape=(None, None), dtype='int32', name='token_ids', auxiliary=('padding_mask',))
    """
    inputs = getattr(model, "_inputs_struct", None) if _has_graph(model) else None
    if isinstance(inputs, dict):
        names = list(inputs)
        main = next((n for n in MAIN_INPUTS if n in inputs), names[0])
        others = tuple(n for n in names if n != main)
        bad = [n for n in others if not n.endswith("mask")]
        if bad:
            raise TfcompressError(
                f"model {model.name!r} ({type(model).__name__}) takes inputs {names}; "
                f"tfcompress feeds {main!r} and fills *_mask inputs with ones, but cannot "
                f"fill {bad}: wrap the model in a one-input keras.Model that supplies them")
        return Signature(_shape(inputs[main]), _dtype(inputs[main]), main, others)
    if _has_graph(model):
        if len(model.inputs) != 1:
            raise TfcompressError(
                f"model {model.name!r} ({type(model).__name__}) has {len(model.inputs)} "
                "unnamed inputs: give it dict inputs (token_ids, padding_mask) or wrap it in "
                "a one-input keras.Model")
        return Signature(_shape(model.inputs[0]), _dtype(model.inputs[0]))
    build = (model.get_build_config() or {}).get("input_shape") if model.built else None
    if build is None or not isinstance(build[0], int | type(None)):
        raise TfcompressError(
            f"model {model.name!r} ({type(model).__name__}) is not built with one array "
            "input: call it once on a batch (model(x)) before compressing it")
    first = next(iter(model._flatten_layers(include_self=False, recursive=True)), None)
    if type(first).__name__.endswith("Embedding"):  # token ids: any sequence length
        return Signature((None, None, *build[2:]), "int32")
    return Signature((None, *build[1:]), "float32")


def _has_graph(model) -> bool:
    try:
        return bool(model.inputs)
    except AttributeError:  # subclassed models have no graph inputs
        return False


def _shape(tensor) -> tuple:
    return (None, *tuple(tensor.shape)[1:])


def _dtype(tensor) -> str:
    return np.dtype(getattr(tensor.dtype, "name", tensor.dtype)).name


def model_seq_len(model, seq_len: int | None) -> int:
    """The fixed sequence length to export with: given, or the model's own input length."""
    if seq_len is not None:
        if seq_len < 1:
            raise TfcompressError(f"seq_len must be a positive integer, got {seq_len}")
        return int(seq_len)
    if is_keras3_model(model):
        shape = signature(model).shape
    else:
        shape = model.inputs[0].shape if getattr(model, "inputs", None) else None
    if shape is None or len(shape) < 2 or shape[1] is None:
        raise TfcompressError(
            "seq_len is needed: the model's input length is not fixed; pass seq_len=<int>"
        )
    return int(shape[1])


def model_inputs(model, x, sig: Signature | None = None):
    """``x`` (token ids or features) as ``model`` takes it: the array itself, or a dict
    with ``x`` under the main input and ones under each auxiliary mask. A dict passes as is.
    """
    if isinstance(x, dict):
        return x
    sig = sig or signature(model)
    if sig.name is None:
        return x
    if isinstance(x, np.ndarray):
        ones = np.ones(x.shape[:2], dtype="int32")
        return {sig.name: x, **{name: ones for name in sig.auxiliary}}
    import keras

    positions = x
    while len(positions.shape) > 2:  # features (batch, seq, d): one mask entry per position
        positions = positions[..., 0]
    ones = keras.ops.ones_like(positions, dtype="int32")
    return {sig.name: x, **{name: ones for name in sig.auxiliary}}


def check_auxiliary_inputs(auxiliary_inputs: str) -> None:
    """`TfcompressError` unless ``auxiliary_inputs`` is one of `AUXILIARY_INPUTS`."""
    if auxiliary_inputs not in AUXILIARY_INPUTS:
        raise TfcompressError(f"auxiliary_inputs must be one of {AUXILIARY_INPUTS} (fixed: "
                              "padding masks are ones inside the graph; exposed: they are "
                              f"inputs), got {auxiliary_inputs!r}")


def input_view(model, seq_len: int | None = None, auxiliary_inputs: str = "fixed"):
    """``model`` itself when it is a one-input graph model, else a functional view of it
    (same weights) whose first input is the main one (token ids or features). Auxiliary masks
    are ones inside the graph (``"fixed"``) or further inputs of the model's own dtype, in the
    model's order (``"exposed"``); a model without them gets the same view either way.

    Example:
        >>> [t.name for t in input_view(gpt2_causal_lm, 64, "exposed").inputs]
        ['token_ids', 'padding_mask']
    """
    import keras

    check_auxiliary_inputs(auxiliary_inputs)
    sig = signature(model)
    if sig.name is None and _has_graph(model):
        return model
    shape = (seq_len, *sig.shape[2:]) if seq_len else sig.shape[1:]
    x = keras.Input(shape=shape, dtype=sig.dtype, name=sig.name or "inputs")
    if auxiliary_inputs == "fixed" or not sig.auxiliary:
        return keras.Model(x, model(model_inputs(model, x, sig)),
                           name=f"{model.name}_single_input")
    struct = model._inputs_struct
    masks = {name: keras.Input(shape=shape[:1], dtype=_dtype(struct[name]), name=name)
             for name in sig.auxiliary}
    return keras.Model([x, *masks.values()], model({sig.name: x, **masks}),
                       name=f"{model.name}_exposed_inputs")


def output_width(model) -> int:
    """The size of the output's last axis (the vocabulary of a language model)."""
    if _has_graph(model):
        outputs = model.outputs[0] if isinstance(model.outputs, list) else model.outputs
        return int(outputs.shape[-1])
    sig = signature(model)
    x = np.zeros((1, *(d or 1 for d in sig.shape[1:])), dtype=sig.dtype)
    return int(np.shape(model(model_inputs(model, x, sig), training=False))[-1])
