"""Shallower copies of a model, blocks ``keep`` of it with their weights: each model family
registers how to build one (`register_shallow_copy`), so the methods below the model builders
(distill's `take_blocks`) reach every family, a user's own included, without importing them.

Example:
    >>> student = shallow_copy(model, [1])     # a build_gpt model: its block 1 only
    >>> [la.name for la in student.layers if la.name.endswith("_attn")]
    ['block0_attn']
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import keras

from tfcompress.errors import TfcompressError

# family -> (does this model belong to it, build its shallower copy); in registration order
_FAMILIES: dict[str, tuple[Callable[[keras.Model], bool], Callable[..., keras.Model]]] = {}


def register_shallow_copy(family: str, matches: Callable[[keras.Model], bool],
                          build: Callable[..., keras.Model]) -> None:
    """Let `shallow_copy` build ``build(model, keep, name=name)`` for a model that ``matches``
    (registering a family again replaces it)."""
    _FAMILIES[family] = (matches, build)


def shallow_copy(model: keras.Model, keep: Sequence[int], name: str = "student") -> keras.Model:
    """A copy of ``model`` holding its blocks ``keep`` (in that order), embeddings, final norm
    and head, built by the first registered family it matches; ``model`` is not changed."""
    for matches, build in _FAMILIES.values():
        if matches(model):
            return build(model, keep, name=name)
    raise TfcompressError(
        f"model {model.name!r} belongs to no family with a shallower copy; registered: "
        f"{sorted(_FAMILIES)} (register yours with "
        "tfcompress.core.shallow.register_shallow_copy)")
