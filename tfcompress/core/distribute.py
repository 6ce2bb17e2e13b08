"""Training under ``tf.distribute``: global-batch loss weights, worker shards, strategies by name.

A loss averaged per replica and then over replicas is not the mean over the global batch when
replicas hold different numbers of unmasked tokens; `global_weight` gives the denominator that
makes each replica's loss its share of the global mean (shares sum, gradients sum).

Example:
    >>> cluster = {"worker": ["host0:2222", "host1:2222"]}
    >>> worker_shard(json.dumps({"cluster": cluster, "task": {"type": "worker", "index": 1}}))
    (1, 2)
    >>> strategy = make_strategy("mirrored")     # every local GPU
"""

from __future__ import annotations

import contextlib
import json
import os

import tensorflow as tf

from tfcompress.errors import TfcompressError

STRATEGIES = ("default", "mirrored", "multi_worker", "tpu")


def replicas_in_sync() -> int:
    """Replicas the current strategy trains on (1 without one)."""
    return tf.distribute.get_strategy().num_replicas_in_sync


def global_sum(value):
    """``value`` summed over the replicas in sync (``value`` itself on one), no gradient."""
    value = tf.stop_gradient(value)
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return value
    return context.all_reduce(tf.distribute.ReduceOp.SUM, value)


def global_weight(mask, like):
    """Sum of ``mask`` (ones shaped as ``like`` when None) over the global batch, or None on
    one replica, where a masked mean's own denominator already is the global one."""
    if replicas_in_sync() == 1:
        return None
    weights = tf.ones_like(like, tf.float32) if mask is None else tf.cast(mask, tf.float32)
    return global_sum(tf.reduce_sum(weights))


def across_workers() -> bool:
    """True under a MultiWorkerMirroredStrategy spanning several workers."""
    strategy = tf.distribute.get_strategy()
    multi = getattr(strategy.extended, "_in_multi_worker_mode", None)
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) and bool(
        multi and multi())


def as_keras_logs(logs: dict) -> dict:
    """A train/test step's scalar logs shaped for Keras 3.15's reduction across workers, which
    averages them along axis 0 (a scalar has none): one-element vectors there, else as is."""
    if not across_workers():
        return logs
    return tf.nest.map_structure(lambda v: tf.reshape(v, [1]), logs)


def local_batch(strategy, batch):
    """This worker's first replica's part of a distributed ``batch`` (a nest of tensors)."""
    return tf.nest.map_structure(lambda v: strategy.experimental_local_results(v)[0], batch)


class WorkerSafeFit:
    """Mixin (before a ``keras.Model`` class) whose ``fit`` / ``evaluate`` also run across
    MultiWorkerMirroredStrategy workers, where Keras 3.15's own fail: it reduces the first
    batch's tuple in one ``strategy.reduce`` call, which that strategy refuses, and averages
    the step's scalar logs along an axis they lack. Nothing changes on one worker.

    The `Distiller` and every model tfcompress compressed (`needs_worker_safe_fit`: compressed
    layers anywhere, pruning masks) train through it; `worker_safe_fit` lends it to any other
    model.
    """

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        # only the batch's shapes and dtypes matter: build from this worker's first replica's
        # part instead of a cross-replica mean
        if iterator is not None and data_batch is None and self._distribute_strategy is not None:
            for _, _, batches in iterator:
                data_batch = local_batch(self._distribute_strategy, next(batches))
                break
            iterator = None
        return super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)

    def train_step(self, data):
        return as_keras_logs(super().train_step(data))

    def test_step(self, data):
        return as_keras_logs(super().test_step(data))


_SAFE: dict[type, type] = {}  # a model class -> itself with WorkerSafeFit, saved as it


def needs_worker_safe_fit(model) -> bool:
    """Whether tfcompress gives ``model`` `WorkerSafeFit` for good: it holds compressed layers
    (classes `tfcompress.core.layers.register_compressed` recorded: quantized codes and QAT,
    made by `tfcompress.core.replace.compressed_class`, low-rank factors) or model-level
    state (pruning masks).

    Example:
        >>> needs_worker_safe_fit(model), needs_worker_safe_fit(qat(model))
        (False, True)
    """
    from tfcompress.core.layers import is_compressed, iter_layers
    from tfcompress.core.validation import compression_state

    return bool(compression_state(model)) or any(
        is_compressed(layer) for _, layer in iter_layers(model))


def keep_worker_safe(model):
    """``model`` with `WorkerSafeFit` in its class exactly while `needs_worker_safe_fit`
    (in place; returned). The class is a same-named subclass that Keras saves as the plain one,
    so the ``.keras`` file is that of the plain class; a model loaded from it fits across
    workers inside `worker_safe_fit`."""
    plain = plain_model_class(type(model))
    if isinstance(model, WorkerSafeFit) and plain is type(model):
        return model  # its class has WorkerSafeFit of its own (the Distiller, a marked model)
    model.__class__ = worker_safe_class(plain) if needs_worker_safe_fit(model) else plain
    return model


def worker_safe_class(cls: type) -> type:
    """``cls`` with `WorkerSafeFit` in front, named, saved and loaded as ``cls``."""
    if cls not in _SAFE:
        from keras.src import api_export
        from keras.src.saving import object_registration

        sub = type(cls.__name__, (WorkerSafeFit, cls), {"__module__": cls.__module__,
                                                        "__qualname__": cls.__qualname__})
        # Keras writes a class by its public API name, else by its registered name
        public = api_export.get_name_from_symbol(cls)
        if public is not None:
            api_export.REGISTERED_OBJS_TO_NAMES[sub] = public
        object_registration.GLOBAL_CUSTOM_NAMES[sub] = object_registration.get_registered_name(
            cls)
        _SAFE[cls] = sub
    return _SAFE[cls]


def plain_model_class(cls: type) -> type:
    """The class `worker_safe_class` made ``cls`` from (``cls`` itself if it made none)."""
    return next((plain for plain, safe in _SAFE.items() if safe is cls), cls)


@contextlib.contextmanager
def worker_safe_fit(model):
    """Inside this block ``model`` fits across MultiWorkerMirroredStrategy workers too: its
    class gets `WorkerSafeFit` in front for the while (only there, and only when it lacks it).

    Example:
        >>> with worker_safe_fit(model):
        ...     model.fit(data, steps_per_epoch=100)
    """
    plain = type(model)
    if not across_workers() or isinstance(model, WorkerSafeFit):
        yield model
        return
    model.__class__ = type(plain.__name__, (WorkerSafeFit, plain),
                           {"__module__": plain.__module__})
    try:
        yield model
    finally:
        model.__class__ = plain


def worker_shard(tf_config: str | None = None) -> tuple[int, int]:
    """``(index, count)`` of this worker among ``TF_CONFIG``'s chief and workers, in
    MultiWorkerMirroredStrategy's order (chief first); ``(0, 1)`` without ``TF_CONFIG``.

    ``tf_config`` defaults to the environment variable; the result feeds
    ``cache_teacher(..., shard=worker_shard())``.
    """
    text = os.environ.get("TF_CONFIG", "") if tf_config is None else tf_config
    if not text:
        return 0, 1
    try:
        config = json.loads(text)
        cluster, task = config["cluster"], config["task"]
        workers = list(cluster.get("chief", [])) + list(cluster.get("worker", []))
        kind, index = task["type"], int(task["index"])
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise TfcompressError(
            f"TF_CONFIG must be JSON with 'cluster' (chief/worker address lists) and 'task' "
            f"({{'type': 'worker', 'index': 0}}), got {text!r}: {err}") from err
    if kind not in ("chief", "worker"):
        raise TfcompressError(f"TF_CONFIG task type must be 'chief' or 'worker' to hold a "
                              f"shard, got {kind!r}")
    position = index if kind == "chief" else len(cluster.get("chief", [])) + index
    if not 0 <= position < len(workers):
        raise TfcompressError(f"TF_CONFIG task {kind} {index} is not in its cluster of "
                              f"{len(workers)} chief/worker tasks")
    return position, len(workers)


def strategy_copy(model, strategy):
    """A copy of ``model`` whose variables live in ``strategy``; with None, a copy outside
    any strategy (plain variables again), or ``model`` itself when it was made outside one."""
    from tfcompress.core.layers import copy_model

    if strategy is None:
        return keep_worker_safe(copy_model(model)) if getattr(
            model, "_distribute_strategy", None) else model
    with strategy.scope():
        return keep_worker_safe(copy_model(model))


def strategy_scope(strategy):
    """``strategy.scope()``, or no scope for None (one device)."""
    return contextlib.nullcontext() if strategy is None else strategy.scope()


def make_strategy(name: str):
    """A ``tf.distribute`` strategy by name: ``"default"`` (one device), ``"mirrored"``
    (every local GPU), ``"multi_worker"`` (the machines in ``TF_CONFIG``) or ``"tpu"`` (the
    TPU named by ``TPU_NAME``, else the one the host finds)."""
    if name not in STRATEGIES:
        raise TfcompressError(f"strategy must be one of {list(STRATEGIES)}, got {name!r}")
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker":
        worker_shard()  # a malformed TF_CONFIG fails here, naming itself
        if not os.environ.get("TF_CONFIG"):
            raise TfcompressError("strategy 'multi_worker' needs TF_CONFIG (the cluster's "
                                  "addresses and this worker's task) set on every machine")
        return tf.distribute.MultiWorkerMirroredStrategy()
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(
            tpu=os.environ.get("TPU_NAME"))
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except (ValueError, RuntimeError, tf.errors.OpError) as err:
        raise TfcompressError(f"strategy 'tpu' found no TPU (TPU_NAME="
                              f"{os.environ.get('TPU_NAME')!r}): {err}") from err
    return tf.distribute.TPUStrategy(resolver)
