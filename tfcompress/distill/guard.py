"""`KDGuard`: distil beside a labels-only probe and fall back to labels when the teacher
stops helping.

Example:
    >>> distiller = Distiller(teacher, student); distiller.compile(optimizer="adamw")
    >>> guard = KDGuard(holdout, train, every=50, checks=2)
    >>> distiller.fit(train, steps_per_epoch=300, callbacks=[guard])
    >>> guard.history     # [(step, KD student's held-out loss, labels-only probe's), ...]
"""

from __future__ import annotations

import itertools
import json
import warnings
from pathlib import Path

import keras
import numpy as np

from tfcompress.core.files import atomic_path
from tfcompress.core.layers import copy_model
from tfcompress.core.losses import lm_loss
from tfcompress.core.progress import print_msg
from tfcompress.core.signature import model_inputs
from tfcompress.distill.losses import hard_cross_entropy
from tfcompress.errors import TfcompressError


def holdout_loss(model, batches) -> float:
    """Next-token cross-entropy of ``model`` per unmasked token over ``(x, y, mask)`` batches.

    Example:
        >>> holdout_loss(student, [(x, y, np.ones_like(y))])    # log of the perplexity
    """
    total = count = 0.0
    for x, y, mask in batches:
        logits = model(model_inputs(model, x), training=False)
        mask = np.asarray(mask, np.float64)
        total += float(np.sum(np.asarray(hard_cross_entropy(y, logits), np.float64) * mask))
        count += float(mask.sum())
    if count == 0:
        raise TfcompressError("holdout holds no unmasked target token to score")
    return total / count


def teacher_helps(kd: float, labels: float, tolerance: float = 0.0) -> bool:
    """Whether the distilled student's held-out loss ``kd`` beats the labels-only probe's
    ``labels`` (by more than ``tolerance``, a fraction of ``labels``).

    Example:
        >>> teacher_helps(2.0, 2.1), teacher_helps(2.1, 2.0)
        (True, False)
    """
    return kd < labels * (1.0 - tolerance)


def _positive_int(value, name: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise TfcompressError(f"{name} must be a positive integer, got {value!r}")
    return value


def _labels_batch(batch):
    """``(x, y, mask)`` of a training batch; a cached teacher's ``(x, (values, indices))``
    inputs lose the teacher's logits."""
    x, y, mask = keras.utils.unpack_x_y_sample_weight(batch)
    if isinstance(x, tuple | list):
        x = x[0]
    return x, y, mask


STATE_FILE = "kdguard_state.npz"


def save_state(path: Path, meta: dict, probe=None) -> None:
    """The guard's ``meta`` (JSON) and, while it probes, the probe's weights and optimizer
    variables, in one ``.npz`` written atomically."""
    arrays = {"meta": np.frombuffer(json.dumps(meta).encode(), np.uint8)}
    if probe is not None:
        arrays |= {f"w{i}": w for i, w in enumerate(probe.get_weights())}
        arrays |= {f"o{i}": np.asarray(v) for i, v in enumerate(probe.optimizer.variables)}
    with atomic_path(path) as tmp:
        np.savez(tmp, **arrays)


def load_state(path: Path, probe) -> dict:
    """``meta`` of `save_state`'s file; the probe's weights and optimizer variables restored
    into ``probe`` (compiled, same architecture) when the file holds them."""
    with np.load(path) as saved:
        meta = json.loads(saved["meta"].tobytes().decode())
        if meta["probing"]:
            probe.set_weights([saved[f"w{i}"] for i in range(len(probe.weights))])
            probe.optimizer.build(probe.trainable_variables)
            for i, variable in enumerate(probe.optimizer.variables):
                variable.assign(saved[f"o{i}"])
    return meta


class KDGuard(keras.callbacks.Callback):
    """Train a labels-only probe beside a `Distiller`; fall back to labels when it wins.

    The probe is a copy of the student at the start of ``fit``, trained on ``data`` (the same
    stream as the Distiller's: pass the same dataset) by a fresh copy of the Distiller's
    optimizer on the labels alone. Every ``every`` training batches, for ``checks`` checks,
    both are scored on ``holdout`` (``(x, y, mask)`` batches the student does not train on);
    when the probe's held-out loss is lower at ``patience`` checks in a row, the guard says so
    in one line, gives the student the probe's weights and sets ``labels_weight`` to 1 for
    the rest of ``fit`` (after any `ParameterSchedule` listed before it). Otherwise the probe
    is dropped after the last check: it costs ``every * checks`` labels-only steps.

    Every check is in ``history`` as ``(step, kd_loss, labels_loss)``; the epoch logs carry
    the last as ``guard_kd_loss`` and ``guard_labels_loss``; ``fell_back`` is the step of the
    fall-back (None without one).

    Resuming: `keras.callbacks.BackupAndRestore` saves the Distiller, not the guard. Give the
    guard a ``backup_dir`` (BackupAndRestore's own folder is fine) and it saves its probe,
    the probe's optimizer, its place in ``data`` and its checks at every epoch end, as
    BackupAndRestore does at its default ``save_freq="epoch"``, and a resumed ``fit``
    continues the same probe; the file goes when ``fit`` ends. **Without ``backup_dir`` a
    resumed fit starts a new probe from the restored student** (a warning says so): its
    checks then compare against a probe that has trained fewer steps.

    Example:
        >>> guard = KDGuard(valid_batches, train, every=100, checks=3)
        >>> distiller.fit(train, steps_per_epoch=1000, callbacks=[guard])
        >>> backup = "runs/distil/backup"            # resumable: the guard beside the model
        >>> callbacks = [keras.callbacks.BackupAndRestore(backup),
        ...              KDGuard(valid_batches, train, backup_dir=backup)]
    """

    def __init__(self, holdout, data, every: int = 50, checks: int = 2, patience: int = 1,
                 tolerance: float = 0.0, verbose: int = 1,
                 backup_dir: str | Path | None = None):
        super().__init__()
        self.every = _positive_int(every, "every")
        self.checks = _positive_int(checks, "checks")
        self.patience = _positive_int(patience, "patience")
        if not isinstance(tolerance, int | float) or not 0.0 <= tolerance < 1.0:
            raise TfcompressError(f"tolerance must be a number in [0, 1) (a fraction of the "
                                  f"probe's loss), got {tolerance!r}")
        self.holdout = list(holdout)
        if not self.holdout:
            raise TfcompressError("holdout must hold at least one (x, y, mask) batch")
        self.data, self.tolerance, self.verbose = data, float(tolerance), verbose
        self.history: list[tuple[int, float, float]] = []
        self.fell_back: int | None = None
        self.backup_dir = None if backup_dir is None else Path(backup_dir)
        self._probe = self._batches = None
        self._step = self._strikes = self._taken = 0
        self._resume_checked = False

    def on_train_begin(self, logs=None):
        if not hasattr(self.model, "labels_weight") or not hasattr(self.model, "student"):
            raise TfcompressError("KDGuard guards a tfcompress Distiller's fit, got a "
                                  f"{type(self.model).__name__}")
        self._probe = copy_model(self.model.student)
        optimizer = keras.optimizers.deserialize(keras.optimizers.serialize(self.model.optimizer))
        self._probe.compile(optimizer=optimizer, loss=lm_loss())
        self._step = self._strikes = self._taken = 0
        self.history, self.fell_back = [], None
        self._resume_checked = self._restore()
        # where the probe was in its stream: a resumed probe reads on from there
        self._batches = itertools.islice(iter(self.data), self._taken, None)

    def _state_path(self) -> Path | None:
        return None if self.backup_dir is None else self.backup_dir / STATE_FILE

    def _restore(self) -> bool:
        path = self._state_path()
        if path is None or not path.is_file():
            return False
        meta = load_state(path, self._probe)
        self._step, self._strikes, self._taken = meta["step"], meta["strikes"], meta["taken"]
        self.history = [tuple(check) for check in meta["history"]]
        self.fell_back = meta["fell_back"]
        if not meta["probing"]:
            self._probe = None
        return True

    def on_epoch_begin(self, epoch, logs=None):
        if epoch > 0 and self._step == 0 and not self._resume_checked:
            warnings.warn(f"KDGuard: fit starts at epoch {epoch} (resumed?) with a new "
                          "labels-only probe: give KDGuard(backup_dir=...) the folder of "
                          "BackupAndRestore to continue the probe", stacklevel=2)
        self._resume_checked = True  # said once

    def on_train_batch_begin(self, batch, logs=None):
        if self.fell_back is not None:
            self.model.labels_weight.assign(1.0)

    def on_train_batch_end(self, batch, logs=None):
        if self._probe is None:
            return
        self._step += 1
        self._taken += 1
        x, y, mask = _labels_batch(next(self._batches, None) or self._restart())
        self._probe.train_on_batch(x, y, sample_weight=mask)
        if self._step % self.every == 0:
            self._check()

    def _restart(self):
        self._batches = iter(self.data)  # a finite dataset: one more pass, as fit's epochs do
        self._taken = 1
        return next(self._batches)

    def _check(self):
        kd = holdout_loss(self.model.student, self.holdout)
        labels = holdout_loss(self._probe, self.holdout)
        self.history.append((self._step, kd, labels))
        self._strikes = 0 if teacher_helps(kd, labels, self.tolerance) else self._strikes + 1
        if self._strikes >= self.patience:
            self.fell_back = self._step
            self.model.student.set_weights(self._probe.get_weights())
            self.model.labels_weight.assign(1.0)
            self._say(f"KDGuard: at step {self._step} labels alone beat distillation on the "
                      f"holdout (loss {labels:.4f} vs {kd:.4f}); continuing on labels only "
                      "(labels_weight 1) from the labels-only probe's weights")
            self._probe = None
        elif len(self.history) >= self.checks:
            place = "ahead of" if self._strikes == 0 else "behind"
            self._say(f"KDGuard: distillation {place} labels alone after {self._step} steps "
                      f"(holdout loss {kd:.4f} vs {labels:.4f}); probe stopped")
            self._probe = None

    def _say(self, line: str):
        if self.verbose:
            print_msg(line)

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None and self.history:
            logs["guard_kd_loss"], logs["guard_labels_loss"] = self.history[-1][1:]
        if self.backup_dir is not None:
            meta = {"step": self._step, "strikes": self._strikes, "taken": self._taken,
                    "history": self.history, "fell_back": self.fell_back,
                    "probing": self._probe is not None}
            save_state(self._state_path(), meta, self._probe)

    def on_train_end(self, logs=None):
        self._probe = self._batches = None
        if self.backup_dir is not None:
            self._state_path().unlink(missing_ok=True)
