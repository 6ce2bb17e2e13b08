"""Students for the ``distill`` stage: a fresh built-in preset, or fewer blocks of the teacher.

``{"preset": "student"}`` builds a new `build_gpt` model with the teacher's vocabulary;
``{"depth": 0.5}`` or ``{"layers": [0, 2]}`` keeps those transformer blocks of the teacher
(embeddings, norms and head copied: the usual start of a distilled student). The shallow form
works on `build_gpt` and `build_llama` models and on KerasHub ``CausalLM``s.

Example:
    >>> student = make_student(teacher, {"depth": 0.5}, seq_len=128)
"""

from __future__ import annotations

import re

from tfcompress.errors import TfcompressError

BLOCK = re.compile(r"^block(\d+)_")
HUB_BLOCK = re.compile(r"^transformer_layer_(\d+)$")


def kept_blocks(n_layers: int, spec: dict) -> list[int]:
    """Block indices a ``layers`` / ``depth`` spec keeps: ``depth`` takes evenly spaced blocks
    (every other one for 0.5), always at least one."""
    if "layers" in spec:
        keep = [int(i) for i in spec["layers"]]
        if not keep or any(not 0 <= i < n_layers for i in keep):
            raise TfcompressError(f"student.layers must list block indices in [0, {n_layers}), "
                                  f"got {spec['layers']}")
        return keep
    n = max(1, round(n_layers * spec["depth"]))
    return sorted({int(i * n_layers / n) for i in range(n)})


def make_student(teacher, spec: dict, seq_len: int, name: str = "student"):
    """A new student model for ``teacher`` from a validated student spec."""
    from tfcompress.distill.distiller import vocab_size_of

    if "preset" in spec:
        from tfcompress.models import build_gpt

        overrides = {k: v for k, v in spec.items() if k != "preset"}
        return build_gpt(spec["preset"], vocab_size=vocab_size_of(teacher, "teacher"),
                         seq_len=seq_len, name=name, **overrides)
    hub = [la for la in teacher.layers if hasattr(la, "backbone")]
    if hub:
        return _shallow_kerashub(hub[0], spec, name)
    blocks = sorted({int(m.group(1)) for la in teacher.layers if (m := BLOCK.match(la.name))})
    if not blocks:
        raise TfcompressError(
            f"student: cannot find transformer blocks in {teacher.name!r} (layers named "
            "block<i>_..., or a KerasHub CausalLM); use student: {preset: ...} instead")
    from tfcompress.distill import take_blocks

    return take_blocks(teacher, kept_blocks(len(blocks), spec), name=name)


def _shallow_kerashub(causal_lm, spec: dict, name: str):
    from tfcompress.recipes.sources import ids_to_logits

    backbone = causal_lm.backbone
    config = backbone.get_config()
    keep = kept_blocks(config["num_layers"], spec)
    small = type(backbone).from_config({**config, "num_layers": len(keep)})
    for layer in small.layers:
        match = HUB_BLOCK.match(layer.name)
        source = f"transformer_layer_{keep[int(match.group(1))]}" if match else layer.name
        if layer.weights:
            layer.set_weights(backbone.get_layer(source).get_weights())
    student = type(causal_lm)(backbone=small, preprocessor=None, name=name)
    return ids_to_logits(student)
