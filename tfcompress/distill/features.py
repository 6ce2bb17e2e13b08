"""Which hidden states a `Distiller` matches: student layer -> teacher layer pairs.

A depth-pruned student (`take_blocks`, a recipe's ``depth`` / ``layers`` student) matches each
of its blocks to the teacher block it was copied from, found by equal weights when the
Distiller is made; any other student spreads its blocks evenly over the teacher's. Blocks are
the ``blockN_add2`` layers of `build_gpt` / `build_llama` models, or the ``transformer_layer_N``
layers of the backbone of a KerasHub ``CausalLM`` wrapped to map token ids to logits (the
recipes' `tfcompress.recipes.sources.ids_to_logits`).

Example:
    >>> student = take_blocks(teacher, [1])    # the doctest teacher has 2 blocks
    >>> feature_pairs(teacher, student, True)
    [('block0_add2', 'block1_add2')]
"""

from __future__ import annotations

import re

import keras
import numpy as np

from tfcompress.distill.losses import uniform_layer_map
from tfcompress.errors import TfcompressError

BLOCK_OUTPUTS = r"^block\d+_add2$"
HUB_BLOCK_OUTPUTS = r"^transformer_layer_\d+$"
BLOCK_LAYER = re.compile(r"^block(\d+)_")


def hub_causal_lm(model):
    """The KerasHub ``CausalLM`` that ``model`` wraps (its layer with a ``backbone``), or None."""
    return next((la for la in getattr(model, "layers", ()) if hasattr(la, "backbone")), None)


def hidden_layer_names(model, pattern: str | None = None) -> list[str]:
    """Names of the block-output layers of ``model``: its top-level layers matching
    ``pattern`` (default ``blockN_add2``), or for a wrapped KerasHub ``CausalLM`` its
    backbone's (default ``transformer_layer_N``).

    Example:
        >>> hidden_layer_names(teacher)
        ['block0_add2', 'block1_add2']
    """
    lm = hub_causal_lm(model)
    layers = getattr(model, "layers", ()) if lm is None else lm.backbone.layers
    pattern = pattern or (BLOCK_OUTPUTS if lm is None else HUB_BLOCK_OUTPUTS)
    return [layer.name for layer in layers if re.search(pattern, layer.name)]


def feature_extractor(model, names: list[str], arg: str):
    """A model sharing ``model``'s layers that returns ``[logits, *hidden states]``."""
    if not hasattr(model, "inputs") or not model.inputs:
        raise TfcompressError(f"{arg} must be a functional Keras model to match hidden layers")
    if hub_causal_lm(model) is not None:
        return _hub_extractor(model, hub_causal_lm(model), names, arg)
    missing = [n for n in names if n not in {la.name for la in model.layers}]
    if missing:
        raise TfcompressError(f"{arg} has no layers named {missing}; "
                              f"its layers: {[la.name for la in model.layers][:20]}")
    outputs = [model.outputs[0]] + [model.get_layer(n).output for n in names]
    return keras.Model(model.inputs, outputs, name=f"{model.name}_features")


def _hub_extractor(model, lm, names: list[str], arg: str):
    """``[logits, *hidden states]`` of a wrapped KerasHub ``CausalLM``: its backbone's
    sequence output and the ``names`` layers' outputs, then the logits as the CausalLM makes
    them (the backbone's token embedding, reversed), on an all-ones padding mask."""
    backbone = lm.backbone
    if _made_by(model) is not lm or _made_by(lm) is not getattr(backbone, "token_embedding",
                                                                 None):
        raise TfcompressError(
            f"{arg} {model.name!r} holds a KerasHub CausalLM but not as token ids -> "
            "CausalLM -> logits (tfcompress.recipes.sources.ids_to_logits) over backbone -> "
            "token embedding, reversed; pass features=[(student_layer, teacher_layer), ...] "
            "of a functional model instead")
    have = [la.name for la in backbone.layers]
    missing = [n for n in names if n not in have]
    if missing:
        raise TfcompressError(f"{arg}'s backbone has no layers named {missing}; its blocks: "
                              f"{hidden_layer_names(model)}")
    hidden = keras.Model(backbone.input, [backbone.outputs[0]] + [
        backbone.get_layer(n).output for n in names])
    ids = model.inputs[0]
    sequence, *states = hidden({"token_ids": ids, "padding_mask": keras.ops.ones_like(ids)})
    logits = backbone.token_embedding(sequence, reverse=True)
    return keras.Model(model.inputs, [logits, *states], name=f"{model.name}_features")


def _made_by(model):
    """The layer or op whose call gives ``model``'s (first) output."""
    return getattr(model.outputs[0], "_keras_history", (None,))[0]


def block_weights(model) -> list[list[np.ndarray]]:
    """The weights of each block of ``model`` (``block{i}_*`` layers, or a KerasHub
    backbone's ``transformer_layer_{i}``), in block order."""
    lm = hub_causal_lm(model)
    if lm is not None:
        return [[np.asarray(w) for w in lm.backbone.get_layer(n).weights]
                for n in hidden_layer_names(model)]
    blocks: dict[int, list] = {}
    for layer in model.layers:
        found = BLOCK_LAYER.match(layer.name)
        if found:
            blocks.setdefault(int(found.group(1)), []).extend(
                np.asarray(w) for w in layer.weights)
    return [blocks[i] for i in sorted(blocks)]


def copied_blocks(teacher, student) -> list[int] | None:
    """The teacher block each student block holds the weights of (`take_blocks`, depth
    pruning), or None when a student block equals no teacher block.

    Example:
        >>> copied_blocks(teacher, take_blocks(teacher, [1]))
        [1]
    """
    ours, theirs = block_weights(student), block_weights(teacher)
    found = []
    for weights in ours:
        same = [j for j, other in enumerate(theirs)
                if len(other) == len(weights) and all(
                    a.shape == b.shape and np.array_equal(a, b)
                    for a, b in zip(weights, other, strict=True))]
        if not same or not weights:
            return None
        found.append(same[0])
    return found or None


def feature_pairs(teacher, student, features) -> list[tuple[str, str]]:
    """``(student_layer, teacher_layer)`` names for ``features``: True (block outputs,
    copied blocks or an even spread), teacher block indices (one per student block) or
    name pairs."""
    if not features:
        return []
    if teacher is None:
        raise TfcompressError("features need an online teacher: teacher=None (a cached "
                              "teacher) only carries logits")
    if features is True or all(isinstance(j, int) and not isinstance(j, bool)
                               for j in features):
        return _block_pairs(teacher, student, features)
    if not all(isinstance(p, tuple | list) and len(p) == 2 for p in features):
        raise TfcompressError("features must be True, teacher block indices or a list of "
                              f"(student_layer, teacher_layer) name pairs, got {features!r}")
    return [(str(s), str(t)) for s, t in features]


def _block_pairs(teacher, student, features) -> list[tuple[str, str]]:
    s_names, t_names = hidden_layer_names(student), hidden_layer_names(teacher)
    if not s_names or not t_names:
        raise TfcompressError(
            f"features={features!r} matches block outputs (layers named blockN_add2, or a "
            "KerasHub CausalLM's transformer_layer_N), found "
            f"{len(s_names)} in the student and {len(t_names)} in the teacher; pass "
            "features=[(student_layer, teacher_layer), ...] instead")
    if features is True:
        features = copied_blocks(teacher, student) or uniform_layer_map(len(s_names),
                                                                        len(t_names))
    if len(features) != len(s_names) or any(not 0 <= j < len(t_names) for j in features):
        raise TfcompressError(f"features must list one teacher block in [0, {len(t_names)}) "
                              f"for each of the student's {len(s_names)} blocks, got "
                              f"{list(features)}")
    return [(s_names[i], t_names[j]) for i, j in enumerate(features)]


__all__ = ["copied_blocks", "feature_extractor", "feature_pairs", "hidden_layer_names",
           "hub_causal_lm"]
