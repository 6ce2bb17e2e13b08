"""Subpackages that are also their verb: ``tfcompress.prune`` is the package and
``tfcompress.prune(model, ...)`` calls ``tfcompress.prune.prune``, so one name serves both
and neither shadows the other. Every method package is (``distill``, ``prune``, ``quantize``,
``lowrank`` as ``factorize``) and ``evaluate``: README.md says why all rather than none.

Example:
    >>> import tfcompress
    >>> pruned = tfcompress.prune(model, sparsity=0.5)              # the verb
    >>> config = tfcompress.prune.WandaConfig(sparsity=0.5)         # the package
"""

from __future__ import annotations

import inspect
import sys
import types
from collections.abc import Callable


class VerbModule(types.ModuleType):
    """A module whose call runs its verb (``__verb__``)."""

    def __call__(self, *args, **kwargs):
        return self.__verb__(*args, **kwargs)


def make_callable(module_name: str, verb: Callable) -> None:
    """Make the module ``module_name`` callable as ``verb`` (its signature included)."""
    module = sys.modules[module_name]
    module.__class__ = VerbModule
    module.__verb__ = verb
    module.__signature__ = inspect.signature(verb)
