"""tfcompress: make Keras language models smaller and faster, measured honestly.

One verb per method: ``Distiller``, ``prune``, ``quantize``, ``factorize``, ``export_tflite``
and ``evaluate``. The subpackages of the same name are also reachable as ``distill``,
``pruning``, ``quantization``, ``lowrank``, ``export`` and ``evaluation``.

Example:
    >>> import tfcompress
    >>> corpus = tfcompress.data.load_corpus("austen")
    >>> model = tfcompress.models.build_gpt("student", vocab_size=corpus.vocab_size)
    >>> report = tfcompress.evaluate(model, corpus.dataset("test", 128, 32), seq_len=128)
"""

from tfcompress import (
    _backend,  # noqa: F401  (sets KERAS_BACKEND before keras loads)
    data,
    distill,
    export,
    models,
)
from tfcompress import evaluate as evaluation
from tfcompress import prune as pruning
from tfcompress import quantize as quantization
from tfcompress.distill import Distiller
from tfcompress.errors import TfcompressError, VerificationError
from tfcompress.evaluate import Report, compare, evaluate
from tfcompress.export import TFLiteRunner, export_tflite, generate_text
from tfcompress.lowrank import FactorizeConfig, factorize
from tfcompress.prune import PruneConfig, prune
from tfcompress.quantize import QuantizeConfig, qat, quantize

__version__ = "0.1.0"

__all__ = [
    "Distiller",
    "FactorizeConfig",
    "PruneConfig",
    "QuantizeConfig",
    "Report",
    "TFLiteRunner",
    "TfcompressError",
    "VerificationError",
    "compare",
    "data",
    "distill",
    "evaluate",
    "evaluation",
    "export",
    "export_tflite",
    "factorize",
    "generate_text",
    "lowrank",
    "models",
    "prune",
    "pruning",
    "qat",
    "quantization",
    "quantize",
]
