"""`Distiller`: train a student from a frozen teacher with plain ``compile``/``fit``.

Example:
    >>> distiller = Distiller(teacher, student)   # labels weight 0.3 -> 1, T 1, forward KL
    >>> distiller.compile(optimizer="adamw", weighted_metrics=["accuracy"])
    >>> distiller.fit(corpus.dataset("train", 128, 32, repeat=True), steps_per_epoch=300)
    >>> distiller.student.save("student.keras")      # a plain model, no trace of the teacher
"""

from __future__ import annotations

import re
import warnings

import keras
import numpy as np
import tensorflow as tf

from tfcompress.core.distribute import (
    WorkerSafeFit,
    as_keras_logs,
    global_sum,
    global_weight,
    replicas_in_sync,
)
from tfcompress.core.layers import require_keras3
from tfcompress.core.signature import model_inputs, output_width
from tfcompress.core.validation import check_fit_data
from tfcompress.distill.callbacks import NAMES, ParameterSchedule
from tfcompress.distill.features import feature_extractor, feature_pairs
from tfcompress.distill.losses import (
    DEFAULT_DIVERGENCE,
    DEFAULT_LABELS_WEIGHT,
    DEFAULT_TEMPERATURE,
    FEATURE_LOSS_FUNCTIONS,
    check_divergence,
    check_labels_weight,
    check_temperature,
    densify_top_k,
    kd_loss,
)
from tfcompress.distill.on_policy import continuation_targets, replaced, sample_continuations
from tfcompress.distill.options import DistillOptions
from tfcompress.errors import TfcompressError


def vocab_size_of(model, arg: str) -> int:
    """Size of the last axis of a model's (first) output (subclassed models are probed)."""
    try:
        return output_width(model)
    except (AttributeError, TypeError, IndexError, ValueError) as err:
        raise TfcompressError(f"{arg} must be a built Keras model with a logits output "
                              f"(batch, seq, vocab); got {type(model).__name__}: {err}") from err


def out_of_vocab_error(err, student, teacher) -> TfcompressError | None:
    """An embedding gather's ``indices[...] = 300 is not in [0, 256)`` as a `TfcompressError`
    naming the id and both vocabularies (None for any other error)."""
    from tfcompress.core.validation import model_vocab

    found = re.search(r"indices\[[^\]]*\] = (-?\d+) is not in \[0, (\d+)\)", str(err))
    if found is None:
        return None
    return TfcompressError(
        f"the training data holds token id {found.group(1)}, but an embedding takes ids in "
        f"[0, {found.group(2)}) (vocabulary of the student {model_vocab(student)}, of the "
        f"teacher {model_vocab(teacher)}): tokenize with the tokenizer both were built for")


def check_settings(teacher, student, labels_weight, temperature, divergence: str,
                   beta: float = 0.5) -> tuple[tuple[float, float | None], float, str, float, int]:
    """``((start, end), temperature, divergence, beta, vocab_size)`` of a distillation, every
    argument checked (Keras 3 models, matching vocabularies; ``teacher`` None: a cached
    teacher) before any work: `Distiller` and `distill` share it.

    Example:
        >>> check_settings(teacher, student, (0.3, 1), 1, "forward_kl")[:4]
        ((0.3, 1.0), 1.0, 'forward_kl', 0.5)
    """
    require_keras3(student, "student",
                   legacy_hint="tfcompress.distill.SoftTargetLoss with student.fit")
    if teacher is not None:
        require_keras3(teacher, "teacher")
    weight = check_labels_weight(labels_weight)
    temperature = check_temperature(temperature)
    divergence, beta = check_divergence(divergence, beta)
    vocab = vocab_size_of(student, "student")
    if teacher is not None and vocab_size_of(teacher, "teacher") != vocab:
        raise TfcompressError(
            f"teacher and student vocabularies must match: teacher has "
            f"{vocab_size_of(teacher, 'teacher')} logits, student {vocab}")
    return weight, temperature, divergence, beta, vocab


def renamed_alpha(alpha: float | None, labels_weight: float | tuple[float, float]
                  ) -> float | tuple[float, float]:
    """``labels_weight``, or the deprecated ``alpha`` when one was passed (with a warning)."""
    if alpha is None:
        return labels_weight
    warnings.warn("Distiller(alpha=...) is deprecated and will be removed in the next release: "
                  "pass labels_weight=... (the same weight of the labels loss)",
                  DeprecationWarning, stacklevel=3)
    return alpha


@keras.saving.register_keras_serializable(package="tfcompress")
class Distiller(WorkerSafeFit, keras.Model):
    """A frozen teacher and a trainable student trained together by ``fit``.

    loss = ``w * hard + (1 - w) * soft [+ feature_weight * features]``, ``w`` the
    ``labels_weight`` (``alpha=`` still works, deprecated: it meant three things): ``hard`` is the
    student's next-token cross-entropy, ``soft`` the ``divergence`` (``"forward_kl"``,
    ``"reverse_kl"``, ``"jsd"`` with ``beta``, ``"soft_ce"``) between teacher and student at
    ``temperature``, scaled by ``T**2``; the dataset's mask (``sample_weight``) removes padded
    positions from every term. The history shows ``loss``, ``hard_loss``, ``soft_loss``
    (``feature_loss``) and the compiled student metrics.

    ``features=True`` also matches hidden states (`DistillOptions`): GPT block outputs, each
    block of a depth-pruned student (`take_blocks`, a recipe's ``depth`` student) to the
    teacher block it was copied from, any other student's spread evenly (or a list of teacher
    block indices, or of ``(student_layer, teacher_layer)`` name pairs), by MSE or cosine
    (``feature_loss``), through learned linear projections when widths differ. Projections
    and teacher live in the Distiller, not in ``distiller.student``, which stays a plain model.

    ``on_policy=p`` (GKD, Agarwal et al. 2024) replaces a training batch, with probability
    ``p``, by the student's own continuations of its first ``prompt_length`` tokens (default:
    half the window), sampled at temperature 1 with a seed from ``sample_seed`` and the step
    (`tfcompress.distill.on_policy`): the loss on those tokens is the divergence alone (no
    labels term; ``hard_loss`` then logs the student's cross-entropy on its own samples).
    Each replaced batch costs one student forward per generated token. ``on_policy=0`` (the
    default) leaves the training step exactly as it was.

    The teacher is frozen inside the Distiller: ``trainable_variables`` holds only the
    student's (and projections') variables, so the optimizer keeps slots for those alone and
    ``keras.callbacks.BackupAndRestore`` or a ``.keras`` file resume exactly; the teacher's own
    ``trainable`` flag is not touched. The student is trained in place: ``distiller.student``
    is the model you passed. With ``labels_weight=1`` a ``fit`` trains the student exactly as
    ``student.compile(optimizer, loss=lm_loss()); student.fit(...)`` does. ``labels_weight``
    and ``temperature`` are variables that the schedule callbacks (`ParameterSchedule`) update
    during ``fit``.

    ``teacher=None`` distils from a cached teacher (`load_teacher_cache`), whose batches carry
    the teacher's top-k logits instead.

    ``labels_weight`` is a number (constant) or a pair ``(start, end)``: the weight goes
    linearly from one to the other over each ``fit`` (its steps: ``steps_per_epoch`` times
    ``epochs``, or the dataset's size), by a `ParameterSchedule` that ``fit`` puts first
    among the callbacks, unless one of them already schedules the labels weight.

    Defaults (``labels_weight`` 0.3 -> 1, ``temperature`` 1, forward KL; the recipes' distill
    stage takes the same, ``tfcompress.distill.losses.DEFAULT_*``): the student learns the
    teacher's distributions first and the labels last. Chosen from the distill benchmark's
    sweep (``python -m benchmarks.distill --sweep``; the table is in the README,
    "Distillation defaults"): a fixed weight trades little data, where low weights win,
    against text the teacher never saw, where high weights win; the weight annealed from
    0.3 to 1 is the one setting swept ahead of both labels-only and Keras's Distiller in
    every regime. `KDGuard` checks on held-out text and falls back to labels when the
    teacher does not help.

    Under ``tf.distribute`` (made inside ``strategy.scope()``) every loss term is a mean over
    the global batch's unmasked tokens, as on one device, and ``fit`` also runs across
    MultiWorkerMirroredStrategy workers (`tfcompress.core.distribute.WorkerSafeFit`).

    Example:
        >>> d = Distiller(teacher, student, divergence="jsd", beta=0.5, features=True)
        >>> d.compile(optimizer=keras.optimizers.AdamW(1e-3))
        >>> history = d.fit(train, steps_per_epoch=100).history   # loss, hard_loss, soft_loss...
    """

    def __init__(self, teacher, student,
                 labels_weight: float | tuple[float, float] = DEFAULT_LABELS_WEIGHT,
                 temperature: float = DEFAULT_TEMPERATURE, divergence: str = DEFAULT_DIVERGENCE,
                 beta: float = 0.5, features: bool | list | None = None,
                 feature_weight: float = 1.0, name: str = "distiller", alpha: float | None = None,
                 on_policy: float = 0.0, prompt_length: int | None = None,
                 feature_loss: str = "mse", sample_seed: int = 0, **kwargs):
        (start, end), temperature, divergence, beta, self.vocab_size = check_settings(
            teacher, student, renamed_alpha(alpha, labels_weight), temperature, divergence, beta)
        options = DistillOptions(on_policy, prompt_length, features, feature_weight,
                                 feature_loss)
        self._check_on_policy(teacher, options)
        pairs = feature_pairs(teacher, student, features)
        super().__init__(name=name, **kwargs)
        self.teacher, self.student = teacher, student
        self.divergence, self.beta = divergence, beta
        self.feature_weight, self.feature_loss = float(feature_weight), feature_loss
        self.feature_pairs = pairs
        self.on_policy, self.prompt_length = float(on_policy), prompt_length
        self.sample_seed = int(sample_seed)
        # (start, end) of the labels weight's own linear schedule; None: a constant weight
        self.labels_weight_schedule = None if end is None else (start, end)
        self.labels_weight = keras.Variable(start, trainable=False, dtype="float32",
                                            name="labels_weight")
        self.temperature = keras.Variable(temperature, trainable=False, dtype="float32",
                                          name="temperature")
        self.hard_tracker = keras.metrics.Mean(name="hard_loss")
        self.soft_tracker = keras.metrics.Mean(name="soft_loss")
        self.feature_tracker = keras.metrics.Mean(name="feature_loss") if pairs else None
        self.projections = []
        if pairs:
            self._teacher_features = feature_extractor(teacher, [t for _, t in pairs], "teacher")
            self._student_features = feature_extractor(student, [s for s, _ in pairs], "student")
            self.projections = [
                self._projection(int(s.shape[-1]), int(t.shape[-1]), i) for i, (s, t) in
                enumerate(zip(self._student_features.outputs[1:],
                              self._teacher_features.outputs[1:], strict=True))]
        # Teacher and student arrive built and projections are built above: the Distiller is
        # complete now, so BackupAndRestore can restore it before the first batch is traced.
        self.built = True

    @property
    def alpha(self):
        """Deprecated name of `labels_weight` (the same variable)."""
        return self.labels_weight

    @staticmethod
    def _check_on_policy(teacher, options: DistillOptions) -> None:
        if not options.on_policy:
            return
        if teacher is None:
            raise TfcompressError("on_policy needs an online teacher to score the student's "
                                  "samples: teacher=None (a cached teacher) only holds logits "
                                  "of the corpus's own windows")

    def _check_prompt(self, x) -> None:
        """``prompt_length`` below the training windows' length (arrays, or a dataset whose
        element shape fixes it)."""
        if not self.on_policy or self.prompt_length is None:
            return
        spec = getattr(x, "element_spec", None)
        first = spec[0] if isinstance(spec, tuple) else spec
        shape = np.shape(x) if spec is None else getattr(first, "shape", None)
        seq = shape[1] if shape is not None and len(shape) > 1 else None
        if seq is not None and self.prompt_length >= seq:
            raise TfcompressError(f"prompt_length must be below the training windows' {seq} "
                                  f"tokens (it keeps that many, then samples the rest), got "
                                  f"{self.prompt_length}")

    @staticmethod
    def _projection(d_s: int, d_t: int, index: int):
        """Student hidden states (width ``d_s``) onto the teacher's (``d_t``)."""
        if d_s == d_t:
            layer = keras.layers.Identity(name=f"projection{index}")
        else:
            layer = keras.layers.Dense(d_t, use_bias=False, name=f"projection{index}")
        layer.build((None, None, d_s))
        return layer

    def call(self, inputs, training=None):
        return self.student(model_inputs(self.student, inputs), training=training)

    def fit(self, x=None, y=None, *args, **kwargs):
        """`keras.Model.fit`, with token-id data checked first (`check_fit_data`): ids out of
        the vocabulary or float inputs fail with a clear error before any tracing; a dataset
        (not read beforehand) whose batch holds an id out of range fails naming it."""
        check_fit_data(self.student, x, y)
        self._check_prompt(x)
        if len(args) > 3:  # Keras's positional order: batch_size, epochs, verbose, callbacks
            args = (*args[:3], self._scheduled(args[3]), *args[4:])
        else:
            kwargs["callbacks"] = self._scheduled(kwargs.get("callbacks"))
        try:
            return super().fit(x, y, *args, **kwargs)
        except tf.errors.InvalidArgumentError as err:
            raise out_of_vocab_error(err, self.student, self.teacher) or err from None

    def _scheduled(self, callbacks) -> list:
        """``callbacks`` with the labels weight's own schedule first (so that a `KDGuard`
        after it has the last word), unless one of them already schedules that weight."""
        callbacks = list(callbacks or [])
        if self.labels_weight_schedule is None or any(
                isinstance(c, ParameterSchedule) and c.parameter in NAMES["labels_weight"]
                for c in callbacks):
            return callbacks
        return [ParameterSchedule("labels_weight", "linear", *self.labels_weight_schedule),
                *callbacks]

    @property
    def student_variables(self) -> list:
        """What the optimizer updates: the student's and the projections' trainable variables."""
        extra = [w for p in self.projections for w in p.trainable_weights]
        return list(self.student.trainable_weights) + extra

    # Keras builds the optimizer (and BackupAndRestore restores it) from these: the teacher's
    # variables must not get slots, or a restored optimizer no longer matches a fresh one.
    @property
    def trainable_variables(self) -> list:
        return self.student_variables if self.trainable else []

    @property
    def trainable_weights(self) -> list:
        return self.trainable_variables

    @property
    def non_trainable_weights(self) -> list:
        trained = {id(w) for w in self.trainable_weights}
        return [w for w in self.weights if id(w) not in trained]

    def _teacher_outputs(self, x):
        """Teacher logits (and hidden states), or densified logits from a cached batch."""
        if isinstance(x, tuple | list):
            x, (values, indices) = x
            return x, densify_top_k(values, indices, self.vocab_size, self.divergence), []
        if self.teacher is None:
            raise TfcompressError("teacher=None needs batches from load_teacher_cache "
                                  "((inputs, (top_values, top_indices)), targets, mask)")
        if self.feature_pairs:
            logits, *feats = self._teacher_features(x, training=False)
            return x, tf.stop_gradient(logits), [tf.stop_gradient(f) for f in feats]
        logits = self.teacher(model_inputs(self.teacher, x), training=False)
        return x, tf.stop_gradient(logits), []

    def _student_outputs(self, x, training):
        if self.feature_pairs:
            logits, *feats = self._student_features(x, training=training)
            return logits, feats
        return self.student(model_inputs(self.student, x), training=training), []

    def on_policy_batch(self, x, mask=None, step=0):
        """``(ids, targets, mask)``: the student's continuations of ``x``'s first
        ``prompt_length`` tokens as the train step at optimizer step ``step`` samples them
        (seed ``[sample_seed, step]``), and the targets and mask its loss reads.

        Example:
            >>> ids, targets, mask = distiller.on_policy_batch(x, step=0)
        """
        seed = tf.stack([tf.constant(self.sample_seed, tf.int32), tf.cast(step, tf.int32)])
        prompt = self.prompt_length or tf.shape(x)[1] // 2
        student = self.student

        def logits(ids):
            return student(model_inputs(student, ids), training=False)

        ids = sample_continuations(logits, x, prompt, seed)
        targets, scored = continuation_targets(ids, prompt, mask)
        return ids, targets, scored

    def _on_policy_data(self, data):
        """The batch a train step trains on and its labels weight: with probability
        ``on_policy`` the student's continuations (weight 0), else ``data`` itself."""
        if not self.on_policy:
            return data, self.labels_weight.value
        x, y, mask = keras.utils.unpack_x_y_sample_weight(data)
        if isinstance(x, tuple | list | dict):
            raise TfcompressError("on_policy needs batches of token ids (x, y[, mask]), got "
                                  f"inputs of type {type(x).__name__}")
        step = self.optimizer.iterations
        if self.on_policy >= 1.0:
            return self.on_policy_batch(x, mask, step), tf.constant(0.0)
        given = (tf.cast(x, tf.int32), tf.cast(y, tf.int32),
                 tf.ones_like(x, tf.float32) if mask is None else tf.cast(mask, tf.float32))
        use = replaced(self.on_policy, tf.stack([self.sample_seed, tf.cast(step, tf.int32)]))
        batch = tf.cond(use, lambda: self.on_policy_batch(x, mask, step), lambda: given)
        return batch, tf.where(use, 0.0, self.labels_weight.value)

    def _loss_terms(self, data, training: bool, labels_weight=None):
        x, y, mask = keras.utils.unpack_x_y_sample_weight(data)
        x, teacher_logits, teacher_feats = self._teacher_outputs(x)
        logits, feats = self._student_outputs(x, training)
        # Under tf.distribute each term is this replica's share of the mean over the global
        # batch's unmasked tokens (not a per-replica mean): the shares sum to what one device
        # computes on the whole batch, and so do the gradients the strategy sums.
        weight = global_weight(mask, y)
        if labels_weight is None:
            labels_weight = self.labels_weight.value
        total, hard, soft = kd_loss(y, logits, teacher_logits, mask, labels_weight,
                                    self.temperature.value, self.divergence, self.beta, weight)
        terms = {"hard_loss": hard, "soft_loss": soft, "loss": total}
        if self.feature_pairs:
            match = FEATURE_LOSS_FUNCTIONS[self.feature_loss]
            matched = [
                match(p(f), t, mask, weight)
                for p, f, t in zip(self.projections, feats, teacher_feats, strict=True)
            ]
            terms["feature_loss"] = tf.add_n(matched) / len(matched)
            terms["loss"] += self.feature_weight * terms["feature_loss"]
        # The student's regularisers and add_loss terms, summed as Keras's compute_loss does;
        # every replica holds them whole, so each adds its 1/replicas share.
        extra = [tf.reduce_sum(tf.cast(term, tf.float32)) / replicas_in_sync()
                 for term in self.student.losses]
        if extra:
            terms["loss"] = tf.reduce_sum(tf.stack([terms["loss"], *extra]))
        return terms, (x, y, logits, mask)

    def train_step(self, data):
        variables = self.student_variables
        data, labels_weight = self._on_policy_data(data)
        with tf.GradientTape() as tape:
            terms, batch = self._loss_terms(data, training=True, labels_weight=labels_weight)
            loss = self.optimizer.scale_loss(terms["loss"])
        gradients = tape.gradient(loss, variables)
        self.optimizer.apply_gradients(zip(gradients, variables, strict=True))
        return self._record(terms, batch)

    def test_step(self, data):
        terms, batch = self._loss_terms(data, training=False)
        return self._record(terms, batch)

    def _record(self, terms, batch):
        x, y, logits, mask = batch
        terms = {name: global_sum(share) for name, share in terms.items()}  # the global values
        self._loss_tracker.update_state(terms["loss"])
        self.hard_tracker.update_state(terms["hard_loss"])
        self.soft_tracker.update_state(terms["soft_loss"])
        if self.feature_tracker is not None:
            self.feature_tracker.update_state(terms["feature_loss"])
        return as_keras_logs(self.compute_metrics(x, y, logits, sample_weight=mask))

    def compile(self, optimizer="adam", loss=None, **kwargs):
        """Keras ``compile``; ``loss`` must stay None (the Distiller computes its own)."""
        if loss is not None:
            raise TfcompressError("loss must be None: the Distiller computes its own loss; set "
                                  "labels_weight, temperature and divergence instead")
        super().compile(optimizer=optimizer, **kwargs)

    def compile_from_config(self, config: dict) -> None:
        """Recompile a loaded ``.keras`` Distiller, optimizer slots built for the student only."""
        # Keras skips compile on load when compile() is overridden: do it here, so the saved
        # optimizer state is loaded into a matching optimizer instead of being dropped.
        self.compile(**keras.saving.deserialize_keras_object(config))
        self.optimizer.build(self.trainable_variables)

    def get_config(self) -> dict:
        serialize = keras.saving.serialize_keras_object
        return {
            "name": self.name,
            "teacher": serialize(self.teacher) if self.teacher is not None else None,
            "student": serialize(self.student),
            "labels_weight": (list(self.labels_weight_schedule) if self.labels_weight_schedule
                              else float(self.labels_weight.numpy())),
            "temperature": float(self.temperature.numpy()),
            "divergence": self.divergence,
            "beta": self.beta,
            "features": [list(p) for p in self.feature_pairs] or None,
            "feature_weight": self.feature_weight,
            "feature_loss": self.feature_loss,
            "on_policy": self.on_policy,
            "prompt_length": self.prompt_length,
            "sample_seed": self.sample_seed,
        }

    @classmethod
    def from_config(cls, config: dict):
        config = dict(config)
        for key in ("teacher", "student"):
            if config[key] is not None:
                config[key] = keras.saving.deserialize_keras_object(config[key])
        return cls(**config)
