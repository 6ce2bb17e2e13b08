"""`export_llm`'s ``rotate``: the residual stream rotated before an integer bundle's ranges
are calibrated.

A full-integer bundle gives each activation tensor one scale, which an outlier channel
stretches (SmolLM2's residual channel 507 is hundreds of times its median). Rotating the
stream first (`tfcompress.quantize.rotate`, QuaRot's Hadamard: the same float function)
spreads such a channel over all of them: SmolLM2's int16x8 bundle went from 1.020x to 1.001x
the float perplexity (``benchmarks/results/export_llm_integer.json``). So ``rotate=None``
rotates for the integer modes when the model allows it without growing the bundle (online,
before each down projection, where its family has a place for that) and says why not
otherwise; ``True`` rotates in any mode or refuses; ``False`` never rotates.

Example:
    >>> choose_rotation(model, "int16x8", None)   # a GPT: no residual stream rotate reaches
    (None, "rotate supports ...")
"""

from __future__ import annotations

from tfcompress.errors import TfcompressError
from tfcompress.export.llm_integer import INTEGER_LLM_MODES
from tfcompress.quantize.rotate import rotation_changes

# the Hadamard's random signs: the seed the rotation benchmarks measured
ROTATION_SEED = 0


def choose_rotation(model, mode: str, rotate: bool | None, float_model=None
                    ) -> tuple[dict | None, str]:
    """``(rotation, why)``: `rotate`'s arguments for ``model`` (``{"seed", "online"}``) or
    None, and why in words; `TfcompressError` when ``rotate=True`` cannot hold. Changes
    nothing, so `export_llm` checks it before any work."""
    if rotate is not None and not isinstance(rotate, bool):
        raise TfcompressError(f"rotate must be True, False or None (rotate for the integer "
                              f"modes {list(INTEGER_LLM_MODES)} when the model allows), got "
                              f"{rotate!r}")
    if rotate is False:
        return None, "rotate=False"
    if rotate is None and mode not in INTEGER_LLM_MODES:
        return None, f"mode {mode!r} keeps float activations (rotate=True rotates anyway)"
    if rotate and float_model is not None:
        raise TfcompressError("rotate=True would rotate model but not float_model (budget_mb's "
                              "int8 maps): rotate both alike first "
                              "(tfcompress.quantize.rotate, one seed) and pass rotate=False")
    try:
        changes, online = _changes(model)
    except TfcompressError as err:
        if rotate:
            raise TfcompressError(f"rotate=True: {err}") from None
        return None, str(err)
    if rotate is None and "untie" in changes:
        return None, (f"rotating would give the tied model its own head ({changes['untie']}): "
                      f"a bigger bundle; pass rotate=True for it")
    why = f"Hadamard of seed {ROTATION_SEED}"
    return {"seed": ROTATION_SEED, "online": online}, (
        f"{why}; the model {' and '.join(changes.values())}" if changes else why)


def _changes(model) -> tuple[dict, bool]:
    """`rotation_changes` with the online Hadamard where the model's family allows it."""
    try:
        return rotation_changes(model, online=True), True
    except TfcompressError:
        return rotation_changes(model, online=False), False

