"""TFLite/LiteRT export: conversion in several modes, built-in verification, an interpreter
runner, text generation from the ``.tflite`` file, phone-style measurement, and on-device LLM
bundles (`export_llm`: prefill/decode signatures over a KV cache, streamed by `LLMRunner`);
both verified by one rule (`verify`, `Tolerances`)."""

from tfcompress.export.converter import convert
from tfcompress.export.generate import generate, generate_text, next_token
from tfcompress.export.llm import LLMExportResult, export_llm
from tfcompress.export.llm_runner import LLMRunner
from tfcompress.export.measure import interleaved_latency, measure_tflite, peak_memory
from tfcompress.export.modes import MODES, ExportMode
from tfcompress.export.ops import inspect_tflite
from tfcompress.export.representative import InputSpec, representative_samples
from tfcompress.export.runner import TFLiteRunner
from tfcompress.export.tflite import (
    ExportResult,
    ExportSizeWarning,
    XNNPACKFallbackWarning,
    export_tflite,
)
from tfcompress.export.verification import Tolerances, verify

__all__ = [
    "MODES",
    "ExportMode",
    "ExportResult",
    "ExportSizeWarning",
    "InputSpec",
    "LLMExportResult",
    "LLMRunner",
    "TFLiteRunner",
    "Tolerances",
    "XNNPACKFallbackWarning",
    "convert",
    "export_llm",
    "export_tflite",
    "generate",
    "generate_text",
    "inspect_tflite",
    "interleaved_latency",
    "measure_tflite",
    "next_token",
    "peak_memory",
    "representative_samples",
    "verify",
]
