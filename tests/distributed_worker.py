"""Toy training runs for tests/test_distributed.py, each comparable with and without a strategy.

Run in a fresh process, since TensorFlow's devices are fixed when it starts:
``python tests/distributed_worker.py mirrored OUT.json`` splits the CPU into two logical devices
and writes every run with and without MirroredStrategy; ``python tests/distributed_worker.py
worker OUT.json`` (TF_CONFIG set) is one worker of MultiWorkerMirroredStrategy runs.
"""

from __future__ import annotations

import json
import sys

import numpy as np

VOCAB, SEQ, ROWS, BATCH, STEPS = 32, 8, 16, 8, 20
TOP_LEVEL = r"^(block0_mlp_in|block0_mlp_out|lm_head)$"  # no layer inside another


def arrays(uneven: bool = True):
    """Windows whose second half of every batch is mostly padding (``uneven``): replicas (and
    workers) hold different numbers of tokens, so a per-replica mean differs from the global
    one."""
    x = np.random.default_rng(0).integers(0, VOCAB, (ROWS, SEQ)).astype("int32")
    mask = np.ones((ROWS, SEQ), "float32")
    if uneven:
        mask[np.arange(ROWS) % BATCH >= BATCH // 2, 2:] = 0.0
    return x, np.roll(x, -1, axis=1), mask


def batches(uneven: bool = True):
    import tensorflow as tf

    return tf.data.Dataset.from_tensor_slices(arrays(uneven)).batch(BATCH).repeat()


def tiny(name: str, seed: int, **overrides):
    import keras

    from tfcompress.models import build_gpt

    keras.utils.set_random_seed(seed)
    return build_gpt("test-tiny", vocab_size=VOCAB, seq_len=SEQ, name=name,
                     **{"d_model": 16, "n_layers": 1, "n_heads": 2, **overrides})


def distill(strategy, steps: int = STEPS) -> dict:
    """Loss of every step of a distillation (one step per epoch: the logged loss is that step's)."""
    import keras

    from tfcompress.distill import Distiller

    with strategy.scope():
        distiller = Distiller(tiny("teacher", 1, d_model=32, n_layers=2), tiny("student", 2),
                              alpha=0.5, temperature=2.0)
        distiller.compile(optimizer=keras.optimizers.SGD(0.5))
    history = distiller.fit(batches(), epochs=steps, steps_per_epoch=1, verbose=0).history
    return {"loss": history["loss"], "weights": distiller.student.get_weights()}


def prune_fit(strategy) -> dict:
    """Masks and weights after a magnitude schedule (20 % -> 60 %) over 4 steps."""
    import keras
    from tensorflow_model_optimization.sparsity.keras import PolynomialDecay

    from tfcompress.prune import PruneConfig, UpdatePruning, prune
    from tfcompress.prune.training import pruning_state

    with strategy.scope():
        model = prune(tiny("pruned", 3), PruneConfig(
            schedule=PolynomialDecay(0.2, 0.6, begin_step=0, end_step=3, frequency=1)))
        model.compile(optimizer=keras.optimizers.SGD(0.5),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x, y, _ = arrays()
    model.fit(x, y, batch_size=BATCH, epochs=2, shuffle=False, verbose=0,
              callbacks=[UpdatePruning()])
    masks = [np.asarray(m.numpy()) for m in pruning_state(model).masks.values()]
    return {"masks": masks, "weights": model.get_weights()}


def qat_fit(strategy, include: str | None = None) -> dict:
    """Latent weights after 2 QAT steps, and the stripped (on-grid) ones; ``include``: only
    those top-level layers (the model then has no model-level record)."""
    import keras

    from tfcompress.quantize import QuantizeConfig, qat, strip_qat

    with strategy.scope():
        model = qat(tiny("qat", 4), QuantizeConfig(bits=4, granularity="group", group_size=8,
                                                   include=include))
        model.compile(optimizer=keras.optimizers.SGD(0.5),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x, y, _ = arrays()
    model.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0)
    latent = model.get_weights()
    return {"weights": latent, "stripped": strip_qat(model).get_weights()}


def finetune_fit(strategy) -> dict:
    """Weights of a dense model after 2 steps of the recipe's finetune (Keras's own loss:
    full masks, where its per-replica mean is the global one)."""
    from tfcompress.recipes.stages import finetune

    model = finetune(tiny("dense", 5), batches(uneven=False), 2, verbose=0,
                     strategy=strategy)
    return {"weights": model.get_weights()}


def listed(result: dict) -> dict:
    return {k: [np.asarray(a).tolist() for a in v] if k != "loss" else v
            for k, v in result.items()}


def main(mode: str, out: str) -> None:
    import tensorflow as tf

    if mode == "mirrored":
        cpu = tf.config.list_physical_devices("CPU")[0]
        two = [tf.config.LogicalDeviceConfiguration()] * 2
        tf.config.set_logical_device_configuration(cpu, two)
        mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
        plain = tf.distribute.get_strategy()
        result = {"replicas": mirrored.num_replicas_in_sync}
        for name, run in (("distill", lambda s: distill(s, steps=3)), ("prune", prune_fit),
                          ("qat", qat_fit)):
            result[name] = {"plain": listed(run(plain)), "mirrored": listed(run(mirrored))}
    else:
        options = tf.distribute.experimental.CommunicationOptions(timeout_seconds=600)
        strategy = tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
        result = {"replicas": strategy.num_replicas_in_sync, "loss": distill(strategy)["loss"],
                  "prune": listed(prune_fit(strategy)), "qat": listed(qat_fit(strategy)),
                  "qat_top": listed(qat_fit(strategy, TOP_LEVEL)),
                  "finetune": listed(finetune_fit(strategy))}
    with open(out, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main(*sys.argv[1:3])
