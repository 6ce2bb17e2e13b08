"""tfcompress: make Keras language models smaller and faster, measured honestly.

One verb per method: ``evaluate``, ``export_tflite`` (and, as they land, ``Distiller``,
``prune``, ``quantize``, ``factorize``).

Example:
    >>> import tfcompress
    >>> corpus = tfcompress.data.load_corpus("austen")
    >>> model = tfcompress.models.build_gpt("student", vocab_size=corpus.vocab_size)
    >>> report = tfcompress.evaluate(model, corpus.dataset("test", 128, 32))
"""

from tfcompress import (
    _backend,  # noqa: F401  (sets KERAS_BACKEND before keras loads)
    data,
    export,
    models,
)
from tfcompress import evaluate as evaluation
from tfcompress.errors import TfcompressError, VerificationError
from tfcompress.evaluate import Report, compare, evaluate
from tfcompress.export import export_tflite

__version__ = "0.1.0"

__all__ = [
    "Report",
    "TfcompressError",
    "VerificationError",
    "compare",
    "data",
    "evaluate",
    "evaluation",
    "export",
    "export_tflite",
    "models",
]
