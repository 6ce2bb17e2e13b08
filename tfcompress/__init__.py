"""tfcompress: make Keras language models smaller and faster, measured honestly.

One verb per method, each package callable as it: ``tfcompress.prune``,
``tfcompress.quantize``, ``tfcompress.lowrank`` (``factorize``), ``tfcompress.distill`` and
``tfcompress.evaluate`` (``tfcompress.prune(model, ...)`` runs the verb,
``tfcompress.prune.WandaConfig`` is in the package); ``export_tflite`` and ``export_llm``
(package ``export``) complete the set. `run` runs a recipe (package ``recipes``).

Example:
    >>> import tfcompress
    >>> corpus = tfcompress.data.load_corpus("austen")
    >>> model = tfcompress.models.build_gpt("test-tiny", vocab_size=corpus.vocab_size)
    >>> test = corpus.dataset("test", 32, 32).take(2)       # two batches of 32 windows
    >>> report = tfcompress.evaluate(model, test, seq_len=32, batch_sizes=())
"""

from __future__ import annotations

import importlib
import sys
import warnings
from pathlib import Path

from tfcompress import _backend  # noqa: F401  (sets KERAS_BACKEND before keras loads)
from tfcompress.errors import TfcompressError, VerificationError

__version__ = "0.1.0"

SUBPACKAGES = ("core", "data", "distill", "evaluate", "export", "lowrank", "models", "prune",
               "quantize", "recipes")
# public name -> the module that defines it
NAMES = {
    "Distiller": "tfcompress.distill",
    "FactorizeConfig": "tfcompress.lowrank",
    "factorize": "tfcompress.lowrank",
    "PruneConfig": "tfcompress.prune",
    "QuantizeConfig": "tfcompress.quantize",
    # one config class per method (`tfcompress.core.registry`)
    **dict.fromkeys(("RTNConfig", "GPTQConfig", "KerasInt8Config", "KerasInt4Config",
                     "KerasGPTQConfig"), "tfcompress.quantize"),
    **dict.fromkeys(("MagnitudeConfig", "TaylorConfig", "WandaConfig", "SparseGPTConfig"),
                    "tfcompress.prune"),
    **dict.fromkeys(("SVDConfig", "ASVDConfig", "SVDLLMConfig", "CPConfig"),
                    "tfcompress.lowrank"),
    "qat": "tfcompress.quantize",
    "Report": "tfcompress.evaluate",
    "compare": "tfcompress.evaluate",
    "TFLiteRunner": "tfcompress.export",
    "export_tflite": "tfcompress.export",
    "generate": "tfcompress.export",
    "generate_text": "tfcompress.export",
}
# old aliases -> their subpackage (they warn for one release)
DEPRECATED = {"pruning": "prune", "quantization": "quantize", "evaluation": "evaluate"}


def __getattr__(name: str):
    if name in SUBPACKAGES:
        return importlib.import_module(f"tfcompress.{name}")
    if name in NAMES:
        return getattr(importlib.import_module(NAMES[name]), name)
    if name == "run":
        return importlib.import_module("tfcompress.recipes").run_recipe
    if name in DEPRECATED:
        new = DEPRECATED[name]
        warnings.warn(f"tfcompress.{name} is deprecated and will be removed in the next "
                      f"release: use tfcompress.{new} (the package, also callable as the verb)",
                      FutureWarning, stacklevel=2)
        return importlib.import_module(f"tfcompress.{new}")
    raise AttributeError(f"module 'tfcompress' has no attribute {name!r}")


def import_all() -> None:
    """Import every subpackage, so the Keras layers they register load from ``.keras`` files."""
    for name in SUBPACKAGES:
        importlib.import_module(f"tfcompress.{name}")


def _is_command_line() -> bool:
    # `python -m tfcompress ...` / the `tfcompress` script: parse arguments before TensorFlow
    # loads (fast --help); the command imports what it needs
    argv = sys.orig_argv
    module = argv[argv.index("-m") + 1:argv.index("-m") + 2] if "-m" in argv else []
    return module == ["tfcompress"] or Path(sys.argv[0]).name == "tfcompress"


if not _is_command_line():
    import_all()
    # bound eagerly too, so tools that read __dict__ (pdoc, IDEs) see them
    globals().update({n: getattr(importlib.import_module(m), n) for n, m in NAMES.items()})
    run = importlib.import_module("tfcompress.recipes").run_recipe


def __dir__() -> list[str]:
    return sorted({*globals(), *SUBPACKAGES, *NAMES, "run"})


__all__ = [
    "ASVDConfig", "CPConfig", "GPTQConfig", "KerasGPTQConfig", "KerasInt4Config",
    "KerasInt8Config", "MagnitudeConfig", "RTNConfig", "SVDConfig", "SVDLLMConfig",
    "SparseGPTConfig", "TaylorConfig", "WandaConfig",
    "Distiller", "FactorizeConfig", "PruneConfig", "QuantizeConfig", "Report", "TFLiteRunner",
    "TfcompressError", "VerificationError", "compare", "data", "distill", "evaluate",
    "export", "export_tflite", "factorize", "generate", "generate_text", "import_all",
    "lowrank", "models", "prune", "qat", "quantize", "recipes", "run",
]
