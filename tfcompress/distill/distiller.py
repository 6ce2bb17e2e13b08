"""`Distiller`: train a student from a frozen teacher with plain ``compile``/``fit``.

Example:
    >>> distiller = Distiller(teacher, student)     # labels_weight 0.9, T 1, forward KL
    >>> distiller.compile(optimizer="adamw", weighted_metrics=["accuracy"])
    >>> distiller.fit(corpus.dataset("train", 128, 32, repeat=True), steps_per_epoch=300)
    >>> distiller.student.save("student.keras")      # a plain model, no trace of the teacher
"""

from __future__ import annotations

import re
import warnings

import keras
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
from tfcompress.distill.losses import (
    DEFAULT_DIVERGENCE,
    DEFAULT_LABELS_WEIGHT,
    DEFAULT_TEMPERATURE,
    check_alpha,
    check_divergence,
    check_temperature,
    densify_top_k,
    feature_mse,
    kd_loss,
    uniform_layer_map,
)
from tfcompress.errors import TfcompressError

BLOCK_OUTPUTS = r"^block\d+_add2$"


def vocab_size_of(model, arg: str) -> int:
    """Size of the last axis of a model's (first) output (subclassed models are probed)."""
    try:
        return output_width(model)
    except (AttributeError, TypeError, IndexError, ValueError) as err:
        raise TfcompressError(f"{arg} must be a built Keras model with a logits output "
                              f"(batch, seq, vocab); got {type(model).__name__}: {err}") from err


def hidden_layer_names(model, pattern: str = BLOCK_OUTPUTS) -> list[str]:
    """Names of the top-level layers whose name matches ``pattern`` (default: GPT blocks)."""
    return [layer.name for layer in model.layers if re.search(pattern, layer.name)]


def feature_extractor(model, names: list[str], arg: str):
    """A model sharing ``model``'s layers that returns ``[logits, *hidden states]``."""
    if not hasattr(model, "inputs") or not model.inputs:
        raise TfcompressError(f"{arg} must be a functional Keras model to match hidden layers")
    missing = [n for n in names if n not in {la.name for la in model.layers}]
    if missing:
        raise TfcompressError(f"{arg} has no layers named {missing}; "
                              f"its layers: {[la.name for la in model.layers][:20]}")
    outputs = [model.outputs[0]] + [model.get_layer(n).output for n in names]
    return keras.Model(model.inputs, outputs, name=f"{model.name}_features")


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


def renamed_alpha(alpha: float | None, labels_weight: float) -> float:
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

    ``features=True`` (or a list of ``(student_layer, teacher_layer)`` name pairs) also matches
    hidden states: GPT block outputs mapped uniformly when depths differ, through learned
    linear projections when widths differ. Projections and teacher live in the Distiller, not
    in ``distiller.student``, which stays a plain model.

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

    Defaults (``labels_weight`` 0.9, ``temperature`` 1, forward KL; the recipes' distill stage
    takes the same, ``tfcompress.distill.losses.DEFAULT_*``): of the settings measured, the one
    never worse than labels-only training in any regime. Perplexity relative to labels-only,
    1 seed, reduced sizes (README, "Distillation defaults"):

    | setting | init | little | kerashub | long | worst |
    |---|---|---|---|---|---|
    | labels only (ppl) | 12.90 | 21.87 | 27.98 | 17.14 | |
    | w0.5_T2_forward_kl | +0.40% | +1.50% | +4.77% | -0.90% | +4.77% |
    | w0-1_T1_forward_kl | +0.31% | -1.07% | +0.19% | -1.78% | +0.31% |
    | w0.9_T1_forward_kl | -0.04% | -0.23% | -0.20% | -0.27% | -0.04% |
    | w0.9_T2_forward_kl | +0.01% | -0.36% | -0.56% | -0.99% | +0.01% |
    | w0.9_T1_reverse_kl | +0.01% | -0.09% | -0.41% | -0.60% | +0.01% |
    | w0.9_T1_jsd | -0.01% | +1.31% | +0.01% | +0.59% | +1.31% |
    | keras_kd | +0.54% | +6.06% | +8.31% | +2.51% | +8.31% |

    ``wA_TB_div``: labels weight A (``0-1``: linear from 0 to 1), temperature B, divergence;
    ``keras_kd``: ``keras.distillation.Distiller`` at its defaults (weight 0.5, T 3).

    On text the teacher was not trained on (``kerashub``: food reviews, a teacher trained on
    Austen) every heavier weight on the teacher lost, though the teacher's perplexity there is
    far below the students'; `KDGuard` falls back to labels when that happens.

    Under ``tf.distribute`` (made inside ``strategy.scope()``) every loss term is a mean over
    the global batch's unmasked tokens, as on one device, and ``fit`` also runs across
    MultiWorkerMirroredStrategy workers (`tfcompress.core.distribute.WorkerSafeFit`).

    Example:
        >>> d = Distiller(teacher, student, divergence="jsd", beta=0.5, features=True)
        >>> d.compile(optimizer=keras.optimizers.AdamW(1e-3))
        >>> history = d.fit(train, steps_per_epoch=100).history   # loss, hard_loss, soft_loss...
    """

    def __init__(self, teacher, student, labels_weight: float = DEFAULT_LABELS_WEIGHT,
                 temperature: float = DEFAULT_TEMPERATURE, divergence: str = DEFAULT_DIVERGENCE,
                 beta: float = 0.5, features: bool | list | None = None,
                 feature_weight: float = 1.0, name: str = "distiller", alpha: float | None = None,
                 **kwargs):
        require_keras3(student, "student",
                       legacy_hint="tfcompress.distill.SoftTargetLoss with student.fit")
        if teacher is not None:
            require_keras3(teacher, "teacher")
        labels_weight = renamed_alpha(alpha, labels_weight)
        labels_weight = check_alpha(labels_weight, "labels_weight")
        temperature = check_temperature(temperature)
        divergence, beta = check_divergence(divergence, beta)
        self.vocab_size = vocab_size_of(student, "student")
        if teacher is not None and vocab_size_of(teacher, "teacher") != self.vocab_size:
            raise TfcompressError(
                f"teacher and student vocabularies must match: teacher has "
                f"{vocab_size_of(teacher, 'teacher')} logits, student {self.vocab_size}"
            )
        pairs = self._feature_pairs(teacher, student, features)
        super().__init__(name=name, **kwargs)
        self.teacher, self.student = teacher, student
        self.divergence, self.beta = divergence, beta
        self.feature_weight = float(feature_weight)
        self.feature_pairs = pairs
        self.labels_weight = keras.Variable(labels_weight, trainable=False, dtype="float32",
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
            self.projections = [self._projection(s, t, i) for i, (s, t) in enumerate(pairs)]
        # Teacher and student arrive built and projections are built above: the Distiller is
        # complete now, so BackupAndRestore can restore it before the first batch is traced.
        self.built = True

    @property
    def alpha(self):
        """Deprecated name of `labels_weight` (the same variable)."""
        return self.labels_weight

    @staticmethod
    def _feature_pairs(teacher, student, features) -> list[tuple[str, str]]:
        if not features:
            return []
        if teacher is None:
            raise TfcompressError("features need an online teacher: teacher=None (a cached "
                                  "teacher) only carries logits")
        if features is True:
            s_names, t_names = hidden_layer_names(student), hidden_layer_names(teacher)
            if not s_names or not t_names:
                raise TfcompressError(
                    "features=True matches GPT block outputs (layers named blockN_add2), found "
                    f"{len(s_names)} in the student and {len(t_names)} in the teacher; pass "
                    "features=[(student_layer, teacher_layer), ...] instead"
                )
            return [(s_names[i], t_names[j])
                    for i, j in enumerate(uniform_layer_map(len(s_names), len(t_names)))]
        if not all(isinstance(p, tuple | list) and len(p) == 2 for p in features):
            raise TfcompressError("features must be True or a list of (student_layer, "
                                  f"teacher_layer) name pairs, got {features!r}")
        return [(str(s), str(t)) for s, t in features]

    def _projection(self, s_name, t_name, index):
        d_s = int(self.student.get_layer(s_name).output.shape[-1])
        d_t = int(self.teacher.get_layer(t_name).output.shape[-1])
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
        try:
            return super().fit(x, y, *args, **kwargs)
        except tf.errors.InvalidArgumentError as err:
            raise out_of_vocab_error(err, self.student, self.teacher) or err from None

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

    def _loss_terms(self, data, training: bool):
        x, y, mask = keras.utils.unpack_x_y_sample_weight(data)
        x, teacher_logits, teacher_feats = self._teacher_outputs(x)
        logits, feats = self._student_outputs(x, training)
        # Under tf.distribute each term is this replica's share of the mean over the global
        # batch's unmasked tokens (not a per-replica mean): the shares sum to what one device
        # computes on the whole batch, and so do the gradients the strategy sums.
        weight = global_weight(mask, y)
        total, hard, soft = kd_loss(y, logits, teacher_logits, mask, self.labels_weight.value,
                                    self.temperature.value, self.divergence, self.beta, weight)
        terms = {"hard_loss": hard, "soft_loss": soft, "loss": total}
        if self.feature_pairs:
            matched = [
                feature_mse(p(f), t, mask, weight)
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
        with tf.GradientTape() as tape:
            terms, batch = self._loss_terms(data, training=True)
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
            "labels_weight": float(self.labels_weight.numpy()),
            "temperature": float(self.temperature.numpy()),
            "divergence": self.divergence,
            "beta": self.beta,
            "features": [list(p) for p in self.feature_pairs] or None,
            "feature_weight": self.feature_weight,
        }

    @classmethod
    def from_config(cls, config: dict):
        config = dict(config)
        for key in ("teacher", "student"):
            if config[key] is not None:
                config[key] = keras.saving.deserialize_keras_object(config[key])
        return cls(**config)
