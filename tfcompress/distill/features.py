"""Which hidden states a `Distiller` matches: student layer -> teacher layer pairs.

A depth-pruned student (`take_blocks`, a recipe's ``depth`` / ``layers`` student) matches each
of its blocks to the teacher block it was copied from, found by equal weights when the
Distiller is made; any other student spreads its blocks evenly over the teacher's.

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
BLOCK_LAYER = re.compile(r"^block(\d+)_")


def hidden_layer_names(model, pattern: str = BLOCK_OUTPUTS) -> list[str]:
    """Names of the top-level layers whose name matches ``pattern`` (default: GPT blocks)."""
    return [layer.name for layer in model.layers if re.search(pattern, layer.name)]


def feature_extractor(model, names: list[str], arg: str):
    """A model sharing ``model``'s layers that returns ``[logits, *hidden states]``."""
    if not hasattr(model, "inputs") or not model.inputs:
        raise TfcompressError(f"{arg} must be a functional Keras model to match hidden layers")
    missing = [n for n in names if n not in {la.name for la in model.layers}]
    if missing:
        raise TfcompressError(f"{arg} has no layers named {missing}; "
                              f"its layers: {[la.name for la in model.layers][:20]}")
    outputs = [model.outputs[0]] + [model.get_layer(n).output for n in names]
    return keras.Model(model.inputs, outputs, name=f"{model.name}_features")


def block_weights(model) -> list[list[np.ndarray]]:
    """The weights of each ``block{i}_*`` layer group of ``model``, in block order."""
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
    """``(student_layer, teacher_layer)`` names for ``features``: True (GPT block outputs,
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
            f"features={features!r} matches GPT block outputs (layers named blockN_add2), "
            f"found {len(s_names)} in the student and {len(t_names)} in the teacher; pass "
            "features=[(student_layer, teacher_layer), ...] instead")
    if features is True:
        features = copied_blocks(teacher, student) or uniform_layer_map(len(s_names),
                                                                        len(t_names))
    if len(features) != len(s_names) or any(not 0 <= j < len(t_names) for j in features):
        raise TfcompressError(f"features must list one teacher block in [0, {len(t_names)}) "
                              f"for each of the student's {len(s_names)} blocks, got "
                              f"{list(features)}")
    return [(s_names[i], t_names[j]) for i, j in enumerate(features)]


__all__ = ["copied_blocks", "feature_extractor", "feature_pairs", "hidden_layer_names"]
