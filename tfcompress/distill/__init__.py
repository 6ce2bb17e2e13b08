"""Knowledge distillation for Keras language models, driven from ``fit``.

- `distill(teacher, student, data, steps)`: the verb (also ``tfcompress.distill(...)``), a
  `Distiller` compiled and fit in one call.
- `Distiller`: teacher + student as one Keras model (hard/soft/feature losses in the history).
- `DistillOptions`: on-policy sequences (GKD, `tfcompress.distill.on_policy`) and hidden-state
  matching of a depth-pruned student's blocks to the ones it kept (`.features`).
- Divergences and the rest of the math: `tfcompress.distill.losses` (pure functions).
- `ParameterSchedule` (T, labels weight) and `BestStudentCheckpoint` callbacks.
- `KDGuard`: a labels-only probe beside distillation; falls back to labels when it wins.
- `SoftTargetLoss` + `with_teacher_logits`: distil inside a plain ``student.fit`` (tf.keras too).
- `cache_teacher` / `load_teacher_cache`: offline top-k teacher logits via ``tf.data``.
- `block_importance` / `most_important` / `take_blocks`: a shallower student initialised
  from the teacher's most important blocks.

Example:
    >>> from tfcompress.distill import Distiller
    >>> d = Distiller(teacher, student)     # labels weight 0.3 -> 1, T 1, forward KL: the defaults
    >>> d.compile(optimizer="adamw"); d.fit(train, steps_per_epoch=300)
"""

from tfcompress.core.modules import make_callable
from tfcompress.distill.api import distill
from tfcompress.distill.cache import cache_teacher, load_teacher_cache
from tfcompress.distill.callbacks import BestStudentCheckpoint, ParameterSchedule
from tfcompress.distill.distiller import Distiller
from tfcompress.distill.guard import KDGuard
from tfcompress.distill.init import block_importance, most_important, take_blocks
from tfcompress.distill.losses import DIVERGENCES, kd_loss
from tfcompress.distill.options import DistillOptions
from tfcompress.distill.soft_targets import SoftTargetLoss, with_teacher_logits

make_callable(__name__, distill)

__all__ = [
    "DIVERGENCES",
    "BestStudentCheckpoint",
    "DistillOptions",
    "Distiller",
    "KDGuard",
    "ParameterSchedule",
    "SoftTargetLoss",
    "block_importance",
    "cache_teacher",
    "distill",
    "kd_loss",
    "load_teacher_cache",
    "most_important",
    "take_blocks",
    "with_teacher_logits",
]
