"""Latency and throughput: the functions live in `tfcompress.core.latency` (export and distill
time and run models with them too); re-exported here, where users import them from.

Example:
    >>> from tfcompress.evaluate.latency import time_callable
    >>> time_callable(lambda: None, warmup=0, repeats=3)["repeats"]
    3
"""

from tfcompress.core.latency import interleaved_latency, keras_forward, keras_latency, time_callable

__all__ = ["interleaved_latency", "keras_forward", "keras_latency", "time_callable"]
