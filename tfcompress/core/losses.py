"""The next-token loss shared by training (`tfcompress.models.train_lm`), the `Distiller`'s
hard loss and pruning's Taylor scores.

Example:
    >>> model.compile(optimizer="adam", loss=lm_loss())
"""

from __future__ import annotations

import keras


def lm_loss():
    """Next-token cross-entropy on logits, averaged over the tokens the mask keeps.

    The dataset's mask arrives as ``sample_weight``; dividing by its sum (not by the batch's
    size) keeps padding from shrinking the loss, and is the hard loss the `Distiller` uses.
    """
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True,
                                                      reduction="mean_with_sample_weight")
