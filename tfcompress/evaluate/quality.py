"""Perplexity and accuracy from predictions: the functions live in `tfcompress.core.quality`
(export verifies and distill checkpoints with them too); re-exported here, where users import
them from.

Example:
    >>> from tfcompress.evaluate.quality import token_stats
    >>> token_stats(np.zeros((1, 2, 4)), np.array([[0, 3]]))[2]
    2.0
"""

from tfcompress.core.quality import classifier_accuracy, lm_quality, token_stats

__all__ = ["classifier_accuracy", "lm_quality", "token_stats"]
