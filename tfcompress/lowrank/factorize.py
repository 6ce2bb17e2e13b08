"""`factorize`: replace chosen kernels of a Keras 3 model by low-rank products.

Works on functional, Sequential and subclassed models and on layers nested in other layers
(MultiHeadAttention projections, KerasHub transformer blocks): top-level layers of a
functional/Sequential model are swapped by cloning the graph, nested ones by replacing the
attribute on their parent layer (recorded on the model, so its ``.keras`` file reloads them:
see `tfcompress.core.replace`).

The config's class picks the method (`SVDConfig`, `ASVDConfig`, `SVDLLMConfig`, `CPConfig`,
each registered with the handler here).

Example:
    >>> small = factorize(model, SVDLLMConfig(target_ratio=0.6), calibration=token_windows)
    >>> small.compile(...); small.fit(...)          # fine-tune to recover quality
"""

from __future__ import annotations

from dataclasses import dataclass, field

import keras
import numpy as np

from tfcompress.core.calibration import calibrate, calibration_batches
from tfcompress.core.layers import (
    copy_model,
    input_axes,
    kernel_matrix,
    kernel_of,
    layer_type,
    matrix_shape,
    select_layers,
    set_kernel_matrix,
)
from tfcompress.core.progress import print_msg, progress_bar
from tfcompress.core.registry import (
    MethodConfig,
    handler_for,
    register_handler,
    resolve_config,
)
from tfcompress.core.replace import replace_layers
from tfcompress.core.validation import check_calibration, check_model
from tfcompress.errors import TfcompressError
from tfcompress.lowrank import tensor as tens
from tfcompress.lowrank.config import (
    DEFAULT_METHOD,
    ASVDConfig,
    CPConfig,
    FactorizeConfig,
    SVDConfig,
    SVDLLMConfig,
)
from tfcompress.lowrank.layers import (
    CPEinsumDense,
    LowRankDense,
    cp_conv,
    svd_conv,
    svd_embedding,
    tucker_conv,
)
from tfcompress.lowrank.spectra import Spectra
from tfcompress.lowrank.svd import (
    allocate_ranks,
    break_even_rank,
    check_rank,
    factor_matrix,
    lowrank_param_count,
    rank_for_energy,
    rank_for_ratio,
    tail_error,
    transformed_spectrum,
)


@dataclass
class LayerPlan:
    """What `factorize` decided for one layer (``factors`` is None when it is kept)."""

    path: str
    kind: str
    method: str
    shape: tuple[int, ...]
    rank: int | tuple[int, ...] | None
    params_before: int
    params_after: int
    error: float | None = None
    note: str = ""
    factors: dict = field(default_factory=dict, repr=False)

    @property
    def factorized(self) -> bool:
        return bool(self.factors)


def factorize(model, config: MethodConfig | FactorizeConfig | None = None, calibration=None,
              *, inplace: bool = False, verbose: int = 1, **overrides):
    """A copy of ``model`` whose chosen kernels are low-rank products by ``config``'s method
    (`SVDLLMConfig` when None).

    ``calibration`` holds model inputs (token ids, or batches) for the activation-aware
    methods and sensitivity allocation. Layers whose rank would not save parameters, or
    whose form is not supported, stay dense and are listed as kept. A table of the chosen
    ranks is printed (``verbose``); the decisions are on ``result.factorization``.
    With ``inplace=True`` nested layers of ``model`` itself are replaced and its top-level
    layers reused: use the returned model. Keyword ``overrides`` replace config fields (one
    of ``rank`` / ``energy`` / ``target_ratio`` replaces the config's budget); the old
    ``method="..."`` keyword and `FactorizeConfig` work for one release with a warning.

    Example:
        >>> small = factorize(model, ASVDConfig(target_ratio=0.6), calibration=x)
    """
    check_model(model, "factorize", legacy_hint="a Keras 3 model (factorize has no tf.keras path)")
    config = resolve_config("factorize", config, overrides, DEFAULT_METHOD,
                            legacy=FactorizeConfig)
    return handler_for("factorize", config)(model, config.for_model(model), calibration,
                                            inplace=inplace, verbose=verbose)


@register_handler(SVDConfig)
def _svd(model, config: SVDConfig, calibration=None, *, inplace: bool = False,
         verbose: int = 1):
    """Plain truncated SVD."""
    return _factorize(model, config, Spectra("svd"), calibration, inplace, verbose)


@register_handler(ASVDConfig)
def _asvd(model, config: ASVDConfig, calibration=None, *, inplace: bool = False,
          verbose: int = 1):
    """SVD of the kernel scaled by activation magnitude."""
    return _factorize(model, config, Spectra("asvd", alpha=config.exponent),
                      calibration, inplace, verbose)


@register_handler(SVDLLMConfig)
def _svd_llm(model, config: SVDLLMConfig, calibration=None, *, inplace: bool = False,
             verbose: int = 1):
    """SVD of the kernel whitened by the input covariance."""
    return _factorize(model, config, Spectra("svd-llm", damping=config.damping),
                      calibration, inplace, verbose)


@register_handler(CPConfig)
def _cp(model, config: CPConfig, calibration=None, *, inplace: bool = False,
        verbose: int = 1):
    """CP of 3-way kernels; matrices by plain SVD."""
    return _factorize(model, config, Spectra("svd"), calibration, inplace, verbose,
                      cp=True)


def _factorize(model, config: MethodConfig, spectra: Spectra, calibration, inplace: bool,
               verbose: int, cp: bool = False):
    """Plan each layer's rank and form (``spectra``: the matrices' calibration step; ``cp``:
    3-way kernels by CP), then apply the plans."""
    chosen = select_layers(model, types=config.layer_types, include=config.include,
                           exclude=config.exclude, method="factorize")
    _check_fixed_rank(chosen, config, cp)
    if calibration is None and (spectra.aware or config.allocation == "sensitivity") and any(
            _route(layer, config, cp)[0] == "svd" for _, layer in chosen):
        raise TfcompressError(
            f"method={config.method!r}, allocation={config.allocation!r} need calibration "
            "inputs: pass calibration=<token ids or batches>")
    if calibration is not None:
        calibration = check_calibration(model, calibration, "calibration")
    work = model if inplace else copy_model(model)
    targets = select_layers(work, types=config.layer_types, include=config.include,
                            exclude=config.exclude, method="factorize")
    plans = plan_factorization(work, targets, config, spectra, calibration, verbose, cp)
    if verbose:
        print_msg(factorization_table(plans))
    result = _apply(work, targets, plans)
    result.factorization = plans
    return result


def _check_fixed_rank(targets, config: MethodConfig, cp: bool) -> None:
    if config.rank is None:
        return
    for path, layer in targets:
        if _route(layer, config, cp)[0] in ("svd", "embedding", "conv-svd"):
            d_in, d_out = matrix_shape(layer)
            check_rank(config.rank, d_in, d_out, arg=f"rank (layer {path!r})")


def _route(layer, config: MethodConfig, cp: bool = False) -> tuple[str, str]:
    """(how the layer is decomposed, why it is kept when that is 'keep'); ``cp``: 3-way
    kernels by CP."""
    kind = layer_type(layer)
    kernel_shape = tuple(kernel_of(layer).shape)
    if kind == "Embedding":
        return "embedding", ""
    if kind.startswith("Conv"):
        if getattr(layer, "groups", 1) != 1 or layer.data_format != "channels_last":
            return "keep", "grouped or channels_first conv is not supported"
        return {"svd": "conv-svd", "tucker": "conv-tucker", "cp": "conv-cp"}[
            config.conv_method], ""
    if kind == "EinsumDense" and not _plain_einsum(layer):
        return "keep", f"einsum {layer.equation!r} is not input-axes x kernel"
    if cp and len(kernel_shape) >= 3:
        return "cp", ""
    return "svd", ""


def _plain_einsum(layer) -> bool:
    """True when the equation contracts the input's last axes with the kernel's first ones
    and the output is the input's other axes followed by the kernel's other axes."""
    inputs, out = layer.equation.replace(" ", "").split("->")
    x_sub, k_sub = inputs.split(",")
    n = input_axes(layer)
    return "." not in x_sub and x_sub[-n:] == k_sub[:n] and out == x_sub[:-n] + k_sub[n:]


def plan_factorization(model, targets, config: MethodConfig, spectra: Spectra,
                       calibration=None, verbose: int = 1, cp: bool = False) -> list[LayerPlan]:
    """Decide and compute the factors of every layer in ``targets`` (nothing is replaced);
    ``spectra`` gives the matrices' transformed SVDs, ``cp`` factors 3-way kernels by CP."""
    routes = {path: _route(layer, config, cp) for path, layer in targets}
    svd_layers = [(p, la) for p, la in targets if routes[p][0] == "svd"]
    if spectra.aware and svd_layers:
        svds = calibrate(model, svd_layers, calibration, spectra, blocks=config.blocks,
                         sequential=False, max_rows=config.max_rows, verbose=int(verbose))
    else:
        svds = {p: spectra.compress_layer(p, la, None) for p, la in svd_layers}
    bar = progress_bar(len(targets), verbose=1 if verbose else 0, unit_name="layer")
    ranks = {}
    if config.allocation == "sensitivity" and svd_layers:
        ranks = _sensitivity_ranks(model, svd_layers, svds, config, calibration, verbose)
    plans = []
    for path, layer in targets:
        route, why = routes[path]
        if route == "svd":
            plan = _plan_matrix(path, layer, config, spectra.method, *svds[path],
                                ranks.get(path))
        elif route == "keep":
            plan = _kept(path, layer, "-", why)
        else:
            plan = _plan_other(path, layer, route, config)
            bar.add(1)
        plans.append(plan)
    return plans


def _kept(path, layer, method, note) -> LayerPlan:
    n = int(np.prod(kernel_of(layer).shape))
    return LayerPlan(path, type(layer).__name__, method, tuple(kernel_of(layer).shape), None,
                     n, n, note=note)


def _choose_rank(config: MethodConfig, d_in: int, d_out: int, s: np.ndarray) -> int:
    if config.rank is not None:
        return config.rank
    if config.energy is not None:
        return rank_for_energy(s, config.energy)
    return rank_for_ratio(d_in, d_out, config.target_ratio)


def _plan_matrix(path, layer, config, method, transform, svd, rank=None) -> LayerPlan:
    d_in, d_out = matrix_shape(layer)
    s = svd[1]
    rank = rank or _choose_rank(config, d_in, d_out, s)
    limit = break_even_rank(d_in, d_out)
    if rank > limit:
        return _kept(path, layer, method,
                     f"kept: rank {rank} does not save parameters (break-even {limit})")
    u, v, _ = factor_matrix(kernel_matrix(layer), rank, transform, svd=svd)
    return LayerPlan(path, type(layer).__name__, method, (d_in, d_out), rank, d_in * d_out,
                     lowrank_param_count(d_in, d_out, rank), tail_error(s, rank),
                     factors={"u": u, "v": v})


def _plan_other(path, layer, route, config: MethodConfig) -> LayerPlan:
    """Embeddings (plain SVD), conv kernels (SVD, Tucker-2, CP) and CP of 3-way kernels."""
    if route in ("embedding", "conv-svd"):  # (vocab | taps x c_in, d_out) views, plain SVD
        return _plan_matrix(path, layer, config, "svd", None,
                            transformed_spectrum(kernel_matrix(layer)))
    kernel = np.asarray(kernel_of(layer).numpy())
    kind, before = type(layer).__name__, int(kernel.size)
    if route == "conv-tucker":
        taps, c_in, c_out = int(np.prod(kernel.shape[:-2])), *kernel.shape[-2:]
        r = config.rank or tens.tucker2_rank_for_ratio(taps, c_in, c_out, config.target_ratio)
        r_in, r_out = min(r, c_in), min(r, c_out)
        after = tens.tucker2_param_count(taps, c_in, c_out, r_in, r_out)
        if after >= before:
            return _kept(path, layer, "tucker", f"kept: ranks ({r_in}, {r_out}) do not save "
                                                "parameters")
        modes = (kernel.ndim - 2, kernel.ndim - 1)
        core, factors = tens.tucker_decompose(kernel, (r_in, r_out), modes)
        approx = tens.tucker_to_tensor(core, factors, modes)
        return LayerPlan(path, kind, "tucker", kernel.shape, (r_in, r_out), before, after,
                         _rel_error(kernel, approx), factors={"core": core, "factors": factors})
    # CP: conv kernels as (taps, c_in, c_out), EinsumDense kernels as they are.
    tensor = kernel.reshape(-1, *kernel.shape[-2:]) if route == "conv-cp" else kernel
    rank = config.rank or tens.cp_rank_for_ratio(tensor.shape, config.target_ratio)
    after = tens.cp_param_count(tensor.shape, rank)
    if after >= before:
        return _kept(path, layer, "cp", f"kept: CP rank {rank} does not save parameters")
    factors = tens.cp_decompose(tensor, rank)
    return LayerPlan(path, kind, "cp", tensor.shape, rank, before, after,
                     _rel_error(tensor, tens.cp_to_tensor(factors)), factors={"cp": factors})


def _rel_error(exact: np.ndarray, approx: np.ndarray) -> float:
    return float(np.sum((exact - approx) ** 2) / max(np.sum(exact**2), np.finfo(float).tiny))


def _outputs(model, batches) -> np.ndarray:
    outs = [model(b if isinstance(b, dict) else np.asarray(b), training=False) for b in batches]
    return np.concatenate([np.ravel(np.asarray(t)) for o in outs for t in keras.tree.flatten(o)])


def _sensitivity_ranks(model, layers, spectra, config, calibration,
                       verbose: int = 1) -> dict[str, int]:
    """Ranks for a ``target_ratio`` budget, weighted by how much each layer's truncation
    (at the uniform rank, alone) changes the model's outputs on the calibration data."""
    calibration = calibration_batches(calibration, model)
    reference = _outputs(model, calibration)
    norm = float(np.sum(reference**2)) or 1.0
    weights, dims = [], []
    bar = progress_bar(len(layers), verbose=1 if verbose else 0, unit_name="probe")
    for path, layer in layers:
        d_in, d_out = matrix_shape(layer)
        transform, svd = spectra[path]
        rank = min(rank_for_ratio(d_in, d_out, config.target_ratio), break_even_rank(d_in, d_out))
        original = kernel_matrix(layer)
        u, v, _ = factor_matrix(original, rank, transform, svd=svd)
        set_kernel_matrix(layer, u @ v)
        try:
            change = float(np.sum((_outputs(model, calibration) - reference) ** 2)) / norm
        finally:
            set_kernel_matrix(layer, original)
        weights.append(change / max(tail_error(svd[1], rank), 1e-12))
        dims.append((d_in, d_out))
        bar.add(1)
    budget = int(config.target_ratio * sum(a * b for a, b in dims))
    ranks = allocate_ranks([spectra[p][1][1] for p, _ in layers], dims, budget, weights)
    return {p: r for (p, _), r in zip(layers, ranks, strict=True)}


def factorization_table(plans: list[LayerPlan]) -> str:
    """A markdown table of the per-layer decisions and the totals."""
    rows = ["| layer | type | method | kernel | rank | params | est. rel. error | note |",
            "|---|---|---|---|---|---|---|---|"]
    for p in plans:
        shape = "x".join(str(d) for d in p.shape)
        err = f"{p.error:.3f}" if p.error is not None else "-"
        rank = "-" if p.rank is None else str(p.rank)
        rows.append(f"| {p.path} | {p.kind} | {p.method} | {shape} | {rank} | "
                    f"{p.params_before:,} -> {p.params_after:,} | {err} | {p.note} |")
    before = sum(p.params_before for p in plans)
    after = sum(p.params_after for p in plans)
    done = sum(p.factorized for p in plans)
    rows.append(f"\n{done}/{len(plans)} layers factorized; kernel weights {before:,} -> "
                f"{after:,} ({after / max(before, 1):.1%})")
    return "\n".join(rows)


# ---------------------------------------------------------------- replacing layers


def _new_layer(layer, plan: LayerPlan):
    """The built stand-in for ``layer`` holding ``plan``'s factors."""
    kind, f = plan.kind, plan.factors
    if kind == "Embedding":
        return svd_embedding(layer, f["u"], f["v"])
    if kind.startswith("Conv"):
        shape = layer.input.shape if _has_input(layer) else (None,) * (layer.kernel.ndim - 1) + (
            layer.kernel.shape[-2],)
        if plan.method == "tucker":
            return tucker_conv(layer, f["core"], f["factors"], shape)
        if plan.method == "cp":
            return cp_conv(layer, f["cp"], shape)
        return svd_conv(layer, f["u"], f["v"], shape)
    kernel_shape = tuple(kernel_of(layer).shape)
    n_in = input_axes(layer)
    bias = getattr(layer, "bias", None)
    out_dims = kernel_shape[n_in:]
    common = dict(output_dims=out_dims, input_rank=n_in, use_bias=bias is not None,
                  activation=getattr(layer, "activation", None), name=layer.name,
                  dtype=layer.dtype_policy)
    bias_value = None if bias is None else np.broadcast_to(bias.numpy(), out_dims)
    if plan.method == "cp":
        new = CPEinsumDense(plan.rank, **common)
        new.build((None, *kernel_shape[:n_in]))
        new.set_factors(f["cp"], bias_value)
        return new
    new = LowRankDense(plan.rank, **common)
    new.build((None, *kernel_shape[:n_in]))
    new.set_factors(f["u"], f["v"], bias_value)
    return new


def _has_input(layer) -> bool:
    try:
        return layer.input is not None
    except (AttributeError, ValueError):
        return False


def _apply(model, targets, plans):
    by_path = {p.path: p for p in plans if p.factorized}
    return replace_layers(model, {path: _new_layer(layer, by_path[path])
                                  for path, layer in targets if path in by_path})
