"""Distillation, pruning and QAT under tf.distribute; the sharded teacher cache.

Strategies need TensorFlow's devices (two logical CPUs) or TF_CONFIG fixed before it starts,
so those runs happen in fresh processes (tests/distributed_worker.py); this process, shared
with other tests, keeps its devices.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from tests import distributed_worker as toy
from tfcompress.core.distribute import make_strategy, worker_shard
from tfcompress.distill import cache_teacher, load_teacher_cache
from tfcompress.distill.cache import shard_name, shard_rows
from tfcompress.distill.losses import masked_mean
from tfcompress.errors import TfcompressError

WORKER = Path(toy.__file__)


def run_worker(mode: str, out: Path, env: dict | None = None):
    env = dict(os.environ if env is None else env)
    # the worker script's own folder comes first on its path: add the checkout's
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(WORKER.parents[1]),
                                                      env.get("PYTHONPATH")]))
    return subprocess.Popen([sys.executable, str(WORKER), mode, str(out)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(procs: list, timeout: float) -> list[str]:
    """Wait for every process (killing all of them on a timeout); their outputs."""
    outputs = []
    try:
        for proc in procs:
            outputs.append(proc.communicate(timeout=timeout)[0])
    except subprocess.TimeoutExpired:
        pytest.fail(f"a worker ran past {timeout} s")
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    return outputs


def close(a, b, atol=1e-5):
    for x, y in zip(a, b, strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=atol)


def test_masked_mean_over_a_global_weight_is_this_replicas_share():
    values, mask = np.array([[1.0, 3.0, 5.0]]), np.array([[1.0, 1.0, 0.0]])
    assert float(masked_mean(values, mask, total=8.0)) == pytest.approx(4.0 / 8.0)
    assert float(masked_mean(values, None, total=6.0)) == pytest.approx(9.0 / 6.0)
    assert float(masked_mean(values, mask)) == pytest.approx(2.0)


def test_shard_rows_take_every_count_th_window():
    assert shard_rows(offset=4, rows=4, index=1, count=3).tolist() == [0, 3]  # windows 4, 7
    assert shard_rows(offset=0, rows=5, index=0, count=2).tolist() == [0, 2, 4]
    assert shard_rows(offset=3, rows=2, index=2, count=4).tolist() == []  # windows 3, 4


def test_worker_shard_reads_tf_config():
    cluster = {"chief": ["h0:1"], "worker": ["h1:1", "h2:1"]}
    config = {"cluster": cluster, "task": {"type": "worker", "index": 1}}
    assert worker_shard(json.dumps(config)) == (2, 3)
    assert worker_shard(json.dumps({**config, "task": {"type": "chief", "index": 0}})) == (0, 3)
    assert worker_shard("") == (0, 1)
    with pytest.raises(TfcompressError, match="TF_CONFIG must be JSON with 'cluster'"):
        worker_shard("{not json")
    with pytest.raises(TfcompressError, match="task type must be 'chief' or 'worker'.*'ps'"):
        worker_shard(json.dumps({**config, "task": {"type": "ps", "index": 0}}))
    with pytest.raises(TfcompressError, match="task worker 2 is not in its cluster of 3"):
        worker_shard(json.dumps({**config, "task": {"type": "worker", "index": 2}}))


def test_make_strategy_refuses_unknown_names_and_a_missing_tf_config(monkeypatch):
    with pytest.raises(TfcompressError, match=r"strategy must be one of \['default', "
                                              r"'mirrored', 'multi_worker', 'tpu'\], got 'gpu'"):
        make_strategy("gpu")
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(TfcompressError, match="'multi_worker' needs TF_CONFIG"):
        make_strategy("multi_worker")
    assert make_strategy("default") is tf.distribute.get_strategy()


@pytest.fixture(scope="module")
def teacher():
    return toy.tiny("teacher", 1)


def windows(n=11):
    x, y, mask = toy.arrays()
    return tf.data.Dataset.from_tensor_slices((x[:n], y[:n], mask[:n])).batch(4)


def elements(path):
    return [tuple(t.numpy() for t in (x, v, i, y, m))
            for (x, (v, i)), y, m in load_teacher_cache(path, batch_size=1)]


def test_sharded_cache_reads_back_as_the_whole_one(teacher, tmp_path):
    whole = elements(cache_teacher(teacher, windows(), tmp_path / "whole", top_k=4,
                                   verbose=False))
    for index in (2, 0, 1):  # workers finish in any order, into one folder
        cache_teacher(teacher, windows(), tmp_path / "sharded", top_k=4, verbose=False,
                      shard=(index, 3))
    assert sorted(p.name for p in (tmp_path / "sharded").iterdir()) == [
        shard_name(i, 3) for i in range(3)]  # no temporary folder left
    sharded = elements(tmp_path / "sharded")
    assert len(sharded) == len(whole) == 11
    for got, want in zip(sharded, whole, strict=True):
        np.testing.assert_array_equal(got[0], want[0])  # same windows, same order
        np.testing.assert_allclose(got[1], want[1], atol=1e-5)
    ds = load_teacher_cache(tmp_path / "sharded", batch_size=4, shuffle=True)
    assert sum(int(b[1].shape[0]) for b in ds) == 11


def test_sharded_cache_refuses_bad_shards_and_missing_workers(teacher, tmp_path):
    with pytest.raises(TfcompressError, match=r"shard must be \(index, count\).*got \(3, 3\)"):
        cache_teacher(teacher, windows(), tmp_path / "c", shard=(3, 3), verbose=False)
    assert not (tmp_path / "c").exists()
    with pytest.raises(TfcompressError, match="shard 5 of 6 holds no window: the dataset has "
                                              "only 3"):
        cache_teacher(teacher, windows(3), tmp_path / "c", shard=(5, 6), verbose=False)
    cache_teacher(teacher, windows(), tmp_path / "c", top_k=2, shard=(1, 2), verbose=False)
    with pytest.raises(TfcompressError, match=r"holds 1 of 2 shards, missing \[0\]: every "
                                              r"worker must finish"):
        load_teacher_cache(tmp_path / "c", batch_size=2)
    cache_teacher(teacher, windows(), tmp_path / "c", top_k=2, shard=(0, 3), verbose=False)
    with pytest.raises(TfcompressError, match=r"holds shards of \[2, 3\] workers"):
        load_teacher_cache(tmp_path / "c", batch_size=2)


def test_worker_safety_is_decided_by_the_layers_not_a_record(tmp_path):
    """Compressed top-level layers of a graph model leave no model-level record, yet the model
    fits through WorkerSafeFit, and is saved as its plain class."""
    import keras

    from tests import saving_models as sm
    from tfcompress.core.distribute import WorkerSafeFit, needs_worker_safe_fit, strategy_copy
    from tfcompress.core.validation import compression_state
    from tfcompress.quantize import RTNConfig, qat, quantize, strip_qat

    ids = keras.Input((None,), dtype="int32")
    functional = keras.Model(ids, keras.layers.Dense(8)(keras.layers.Embedding(8, 4)(ids)))
    keys = ("module", "class_name", "registered_name")
    for plain in (sm.sequential(), functional):
        assert not needs_worker_safe_fit(plain) and not isinstance(plain, WorkerSafeFit)
        saved_plain = keras.saving.serialize_keras_object(plain)
        for made in (qat(plain, RTNConfig(bits=4)), quantize(plain, RTNConfig(bits=8),
                                                             verbose=0)):
            assert compression_state(made) == {}  # no record: every layer is top-level
            assert needs_worker_safe_fit(made) and isinstance(made, WorkerSafeFit)
            assert type(made).__name__ == type(plain).__name__
            saved = keras.saving.serialize_keras_object(made)
            assert [saved[k] for k in keys] == [saved_plain[k] for k in keys]
            assert isinstance(strategy_copy(made, tf.distribute.get_strategy()), WorkerSafeFit)
        stripped = strip_qat(qat(plain, RTNConfig(bits=4)))
        assert not needs_worker_safe_fit(stripped) and type(stripped) is type(plain)
    made.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(True))
    x = np.zeros((2, 3), "int32")
    assert np.isfinite(made.fit(x, x, epochs=1, verbose=0).history["loss"][0])
    made.save(tmp_path / "q.keras")  # loads as the plain class, its layers quantized
    loaded = keras.saving.load_model(tmp_path / "q.keras")
    assert type(loaded) is type(functional) and needs_worker_safe_fit(loaded)


def test_factorized_layers_count_as_compressed_through_the_registry():
    """A graph model whose top-level Dense layers became LowRankDense / CPEinsumDense (no
    record) fits through WorkerSafeFit; so does one with a class of the caller's own joined
    with register_compressed; a plain Dense or a non-class is not compressed."""
    import keras

    from tfcompress.core.distribute import WorkerSafeFit, needs_worker_safe_fit
    from tfcompress.core.layers import is_compressed, register_compressed
    from tfcompress.core.validation import compression_state
    from tfcompress.lowrank import CPConfig, SVDConfig, factorize

    keras.utils.set_random_seed(0)
    x = keras.Input((3, 4))
    hidden = keras.layers.EinsumDense("abc,cde->abde", (3, 2, 4), name="proj")(x)
    plain = keras.Model(x, keras.layers.Dense(4, name="out")(
        keras.layers.Reshape((3, 8))(hidden)))
    assert not needs_worker_safe_fit(plain)
    svd = factorize(plain, SVDConfig(rank=1, types=("Dense",)), verbose=0)
    cp = factorize(plain, CPConfig(rank=1, types=("EinsumDense",)), verbose=0)
    for made, kind in ((svd, "LowRankDense"), (cp, "CPEinsumDense")):
        assert kind in [type(la).__name__ for la in made.layers] and not compression_state(made)
        assert needs_worker_safe_fit(made) and isinstance(made, WorkerSafeFit)

    @register_compressed
    class Halved(keras.layers.Dense):
        pass

    assert is_compressed(Halved(2)) and not is_compressed(keras.layers.Dense(2))
    assert needs_worker_safe_fit(keras.Sequential([keras.Input((4,)), Halved(2)]))
    with pytest.raises(TfcompressError, match=r"register_compressed takes a layer class, got 3"):
        register_compressed(3)


# a worker is a TensorFlow start and a few tiny fits (about a minute on 2 busy cores); the
# limit leaves room for a machine loaded ten times over
WORKER_TIMEOUT = 900


def test_mirrored_strategy_matches_one_device(tmp_path):
    """Two logical CPUs under MirroredStrategy against no strategy, in one fresh process."""
    out = tmp_path / "runs.json"
    output = finish([run_worker("mirrored", out)], timeout=WORKER_TIMEOUT)[0]
    assert out.exists(), output[-4000:]
    runs = json.loads(out.read_text())
    assert runs["replicas"] == 2
    # Distiller: each replica holds a different number of unmasked tokens, so only a mean over
    # the global batch (not per replica) gives the one-device loss
    distill = runs["distill"]
    np.testing.assert_allclose(distill["mirrored"]["loss"], distill["plain"]["loss"], rtol=1e-5)
    close(distill["mirrored"]["weights"], distill["plain"]["weights"])
    # UpdatePruning: the schedule's 60 % at its last step, the same masks
    prune = runs["prune"]
    for mask in prune["mirrored"]["masks"]:
        assert np.mean(np.asarray(mask) == 0) == pytest.approx(0.6, abs=0.01)
    close(prune["mirrored"]["masks"], prune["plain"]["masks"], atol=0)
    close(prune["mirrored"]["weights"], prune["plain"]["weights"])
    # QAT: latent and on-grid weights
    qat = runs["qat"]
    close(qat["mirrored"]["weights"], qat["plain"]["weights"])
    close(qat["mirrored"]["stripped"], qat["plain"]["stripped"])


def free_ports(n: int) -> list[int]:
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def two_workers(tmp_path, attempts: int = 2) -> list[dict]:
    """Both workers' results; new ports once if another process took one meanwhile."""
    try:
        ports = free_ports(2)
    except OSError as err:
        pytest.skip(f"gRPC workers need TCP on localhost, which this platform refuses: {err}")
    cluster = {"worker": [f"localhost:{p}" for p in ports]}
    procs, outs = [], []
    for index in range(2):
        outs.append(tmp_path / f"worker{index}.json")
        outs[-1].unlink(missing_ok=True)
        config = {"cluster": cluster, "task": {"type": "worker", "index": index}}
        env = {**os.environ, "TF_CONFIG": json.dumps(config), "CUDA_VISIBLE_DEVICES": ""}
        procs.append(run_worker("worker", outs[-1], env))
    logs = finish(procs, timeout=WORKER_TIMEOUT)
    if attempts > 1 and not all(out.exists() for out in outs) and any(
            "address already in use" in log.lower() for log in logs):
        return two_workers(tmp_path, attempts - 1)
    for out, log in zip(outs, logs, strict=True):
        assert out.exists(), log[-4000:]
    return [json.loads(out.read_text()) for out in outs]


def test_two_workers_distil_prune_and_qat_as_one_worker(tmp_path):
    workers = two_workers(tmp_path)
    one = tf.distribute.get_strategy()
    single, pruned, quantized = toy.distill(one)["loss"], toy.prune_fit(one), toy.qat_fit(one)
    top = toy.qat_fit(one, toy.TOP_LEVEL)
    start = toy.tiny("dense", 5).get_weights()
    for worker in workers:
        assert worker["replicas"] == 2
        assert len(worker["loss"]) == toy.STEPS
        np.testing.assert_allclose(worker["loss"], single, rtol=1e-3)
        close(worker["prune"]["masks"], pruned["masks"], atol=0)
        close(worker["prune"]["weights"], pruned["weights"])
        close(worker["qat"]["stripped"], quantized["stripped"])
        close(worker["qat_top"]["stripped"], top["stripped"])  # no record: WorkerSafeFit too
    # a plain model fine-tuned (worker_safe_fit): it trains, in step on both workers. Not
    # compared with one worker: the recipe's AdamW (clipnorm 1) is clipped per replica by
    # Keras before the sum, and Adam magnifies float-order noise where gradients are near 0
    # (1.4 % of the weights off by more than 1e-5 after 2 steps)
    first, second = (w["finetune"]["weights"] for w in workers)
    close(first, second, atol=0)
    assert any(not np.allclose(a, b) for a, b in zip(first, start, strict=True))
