"""One verifier for every export: a window ``.tflite`` (`export_tflite`) and an LLM bundle
(`export_llm`) are held to the same rule.

The rule: an export fails when **any one** of its figures misses its tolerance (not only when
all do):

- logit error: the largest |export - Keras| logit above ``max_rel_error`` times the largest
  |Keras logit| (or above ``max_abs_error``, an absolute bound, when that is given);
- next-token agreement (argmax over the last axis; outputs with 2+ classes) below
  ``min_agreement``;
- perplexity of the export over Keras's on the same text above ``max_ppl_ratio`` (when
  perplexity was measured).

A file can agree on most next tokens yet be off by half its logit range, or keep its logits
close yet lose the ranking: either is a broken export. Each mode has its tolerances
(`tfcompress.export.modes.ExportMode`); a user can relax any of them, and the error names
each option with the value that would have passed (``VerificationError.relax``).

Example:
    >>> verify(result, Tolerances.of(MODES["int8"], min_agreement=0.9))
    >>> verify({"max_abs_error": 0.5, "relative_error": 0.05, "agreement": 0.5},
    ...        Tolerances.of(MODES["float16"]))
    Traceback (most recent call last):
    tfcompress.errors.VerificationError: float16 export disagrees with the Keras model: max \
|error| 0.5 is 0.05 of the largest logit (allowed 0.02); next-token agreement 50.00% < needed \
97%
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tfcompress.errors import VerificationError
from tfcompress.export.modes import ExportMode

# the figures `verify` reads from a result (an attribute each) or a mapping
FIGURES = ("max_abs_error", "relative_error", "agreement", "perplexity", "keras_perplexity")


@dataclass(frozen=True)
class Tolerances:
    """What an export may differ from Keras by (see the module's rule); ``mode`` names the
    export in messages. ``max_abs_error``, when set, replaces the relative bound.

    Example:
        >>> Tolerances.of(MODES["dynamic_int8"], min_agreement=0.7).min_agreement
        0.7
    """

    mode: str
    max_rel_error: float
    min_agreement: float
    max_ppl_ratio: float
    max_abs_error: float | None = None

    @classmethod
    def of(cls, mode: ExportMode, max_abs_error: float | None = None,
           min_agreement: float | None = None, max_ppl_ratio: float | None = None
           ) -> Tolerances:
        """``mode``'s tolerances, with the given ones (not None) in their place."""
        return cls(mode.name, mode.max_rel_error,
                   mode.min_agreement if min_agreement is None else min_agreement,
                   mode.max_ppl_ratio if max_ppl_ratio is None else max_ppl_ratio,
                   max_abs_error)


def agreement_stats(expected: np.ndarray, got: np.ndarray) -> dict:
    """Max |difference|, that relative to max |expected|, and argmax agreement (last axis)."""
    expected, got = np.asarray(expected, np.float64), np.asarray(got, np.float64)
    if expected.shape != got.shape:
        raise VerificationError(f"output shape {got.shape} differs from Keras {expected.shape}")
    # NaN or inf (e.g. float16 overflow) must fail every tolerance, not compare as False.
    err = float(np.abs(expected - got).max()) if np.isfinite(got).all() else float("inf")
    agreement = None if expected.shape[-1] < 2 else float(
        (expected.argmax(-1) == got.argmax(-1)).mean())
    return {"max_abs_error": err, "relative_error": err / max(float(np.abs(expected).max()),
                                                                1e-12), "agreement": agreement}


def verify(result, tolerances: Tolerances, subject: str | None = None) -> None:
    """Raise `VerificationError` listing each figure of ``result`` (an `ExportResult`, an
    `LLMExportResult` or a mapping of `FIGURES`; agreement and perplexities may be None)
    that misses ``tolerances``: any one is enough. ``subject`` names the export in the
    message (default: ``"<mode> export"``)."""
    get = result.get if isinstance(result, Mapping) else (lambda k: getattr(result, k, None))
    figures = {key: get(key) for key in FIGURES}
    problems, relax = [], {}  # relax: the option value that would have passed
    bound = tolerances.max_abs_error
    if bound is not None and not figures["max_abs_error"] <= bound:
        problems.append(f"max |error| {figures['max_abs_error']:.4g} > allowed {bound:.4g}")
        relax["max_abs_error"] = figures["max_abs_error"]
    if bound is None and not figures["relative_error"] <= tolerances.max_rel_error:
        problems.append(f"max |error| {figures['max_abs_error']:.4g} is "
                        f"{figures['relative_error']:.3g} of the largest logit "
                        f"(allowed {tolerances.max_rel_error:.3g})")
        relax["max_abs_error"] = figures["max_abs_error"]
    if figures["agreement"] is not None and figures["agreement"] < tolerances.min_agreement:
        problems.append(f"next-token agreement {figures['agreement']:.2%} < needed "
                        f"{tolerances.min_agreement:.0%}")
        relax["min_agreement"] = figures["agreement"]
    if figures["perplexity"] is not None:
        ratio = figures["perplexity"] / figures["keras_perplexity"]
        if not ratio <= tolerances.max_ppl_ratio:
            problems.append(f"perplexity {figures['perplexity']:.4g} vs Keras "
                            f"{figures['keras_perplexity']:.4g} (ratio {ratio:.3f} > "
                            f"{tolerances.max_ppl_ratio:.3f})")
            relax["max_ppl_ratio"] = ratio
    if problems:
        raise VerificationError(f"{subject or f'{tolerances.mode} export'} disagrees with the "
                                "Keras model: " + "; ".join(problems), relax)


def discard(path: str | Path, err: VerificationError, note: str = "") -> VerificationError:
    """Delete the file that failed ``err`` (a failed export must not sit there looking
    shippable); the error to raise instead, saying so (after ``note``, e.g. a diagnosis)."""
    path = Path(path)
    path.unlink(missing_ok=True)
    return VerificationError(f"{err}{note}; {path} was not kept", err.relax)
