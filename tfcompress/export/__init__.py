"""TFLite/LiteRT conversion, built-in verification and an interpreter runner."""

from tfcompress.export.runner import TFLiteRunner
from tfcompress.export.tflite import MODES, ExportResult, convert, export_tflite

__all__ = ["MODES", "ExportResult", "TFLiteRunner", "convert", "export_tflite"]
