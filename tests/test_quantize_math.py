"""Quantizers, packing, GPTQ and bit allocation on NumPy arrays."""

import numpy as np
import pytest

from tfcompress.errors import TfcompressError
from tfcompress.quantize import (
    Quantizer,
    affine_codes,
    allocate_bits,
    gptq,
    hessian,
    kmeans_1d,
    log2_levels,
    nf4_levels,
    output_error,
    pack_int4,
    unpack_int4_np,
)
from tfcompress.quantize.quantizers import litert_codes, litert_scale, nearest_level


@pytest.fixture
def w():
    return np.random.default_rng(0).normal(size=(64, 24)).astype(np.float32)


def test_affine_codes_follow_the_seed_formula_by_hand():
    x = np.array([-1.0, -0.5, 0.0, 0.2, 1.0])
    # (x + 1) / 2 * 3 = 0, 0.75, 1.5, 1.8, 3 -> round half to even: 0, 1, 2, 2, 3
    assert affine_codes(x, -1.0, 1.0, 2).tolist() == [0, 1, 2, 2, 3]
    assert affine_codes(x, -1.0, 1.0, 8).tolist() == [0, 64, 128, 153, 255]


def test_constant_tensor_does_not_divide_by_zero():
    x = np.full((4, 3), 0.7)
    assert affine_codes(x, 0.7, 0.7, 4).tolist() == np.zeros((4, 3), int).tolist()
    q = Quantizer("affine", 4, "tensor")
    np.testing.assert_allclose(q.roundtrip(x), x, atol=1e-7)
    np.testing.assert_array_equal(Quantizer("symmetric", 4).roundtrip(np.zeros((3, 2))), 0)


def test_quantizer_codes_match_seed_formula(w):
    qt = Quantizer("affine", 5, "channel").quantize(w)
    expected = affine_codes(w, w.min(0), w.max(0), 5)
    np.testing.assert_array_equal(qt.codes, expected)


@pytest.mark.parametrize("scheme", ["affine", "symmetric"])
@pytest.mark.parametrize("granularity,group", [("tensor", None), ("channel", None),
                                               ("group", 16)])
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_roundtrip_error_is_at_most_half_a_step(w, scheme, granularity, group, bits):
    q = Quantizer(scheme, bits, granularity, group)
    qt = q.quantize(w)
    step = np.repeat(qt.scale, qt.group_rows, axis=0)
    err = np.abs(w - qt.dequantize())
    assert np.all(err <= step / 2 + 1e-6)
    assert qt.codes.max() < 2**bits


def test_group_scales_are_min_max_of_each_group(w):
    qt = Quantizer("affine", 4, "group", 16).quantize(w)
    blocks = w.reshape(4, 16, 24)
    np.testing.assert_allclose(qt.scale, (blocks.max(1) - blocks.min(1)) / 15, rtol=1e-6)
    np.testing.assert_allclose(qt.offset, blocks.min(1), rtol=1e-6)
    sym = Quantizer("symmetric", 8, "channel").quantize(w)
    np.testing.assert_allclose(sym.scale[0], np.abs(w).max(0) / 127, rtol=1e-6)


def test_kmeans_uses_2_pow_bits_levels_and_never_beats_its_init_badly():
    x = np.random.default_rng(1).standard_t(3, size=2000)
    for bits in (2, 3, 4):
        k = 2**bits
        init = np.linspace(x.min(), x.max(), k)
        init_err = np.mean((x - init[nearest_level(x, init)]) ** 2)
        centroids = kmeans_1d(x, k)
        err = np.mean((x - centroids[nearest_level(x, centroids)]) ** 2)
        assert len(centroids) == k and err <= init_err
    w = np.random.default_rng(2).normal(size=(32, 5))
    qt = Quantizer("kmeans", 3, "channel").quantize(w)
    assert qt.levels.shape == (5, 8) and qt.codes.max() < 8
    assert np.mean((w - qt.dequantize()) ** 2) <= np.mean(
        (w - Quantizer("affine", 3, "channel").roundtrip(w)) ** 2)


def test_nf4_levels_are_the_documented_16():
    # Table of QLoRA (Dettmers et al. 2023), appendix E / bitsandbytes NF4 map
    documented = [-1.0, -0.6961928, -0.5250731, -0.3949175, -0.2844414, -0.1847734,
                  -0.0910500, 0.0, 0.0795803, 0.1609302, 0.2461123, 0.3379152, 0.4407098,
                  0.5626170, 0.7229568, 1.0]
    np.testing.assert_allclose(nf4_levels(), documented, atol=1e-6)


def test_log2_levels_are_signed_powers_of_two():
    levels = log2_levels(3)
    assert len(levels) == 8 and 0.0 in levels
    nonzero = np.abs(levels[levels != 0])
    np.testing.assert_allclose(np.log2(nonzero), np.round(np.log2(nonzero)))


def test_litert_scale_and_codes_by_hand():
    # 0.7 / 7 = 0.1 -> bfloat16 keeps 8 significant bits: 0.10009765625 (exact in float16)
    assert litert_scale(np.float32([0.7]), 4, blockwise=True)[0] == np.float32(0.10009765625)
    assert litert_scale(np.float32([0.7]), 4, blockwise=False)[0] == np.float32(0.7) / 7
    # int4 keeps -8 (LiteRT's full range below 8 bits), int8 is narrow [-127, 127]
    assert litert_codes(np.float32([-0.85, 0.75, 0.04]), 0.1, 4).tolist() == [-8, 7, 0]
    assert litert_codes(np.float32([-20.0]), 0.1, 8).tolist() == [-127]
    # an all-zero block: LiteRT's 1e-9 floor underflows float16 -> scale 0, codes 0
    assert litert_scale(np.float32([0.0]), 4, blockwise=True)[0] == 0
    assert litert_codes(np.float32([0.0]), 0.0, 4).tolist() == [0]


@pytest.mark.parametrize("granularity,group,bits", [("group", 32, 4), ("channel", None, 8)])
def test_litert_scheme_is_ai_edge_quantizers_rtn_bit_for_bit(granularity, group, bits):
    from ai_edge_quantizer import qtyping
    from ai_edge_quantizer.algorithms.uniform_quantize import uniform_quantize_tensor as uqt

    rng = np.random.default_rng(0)
    w = (rng.normal(0, 0.05, (128, 48)) * rng.lognormal(0, 1, (128, 1))).astype(np.float32)
    w[:32, 0] = 0  # an all-zero block
    ours = Quantizer("litert", bits, granularity, group).roundtrip(w)
    t = w.T  # a FULLY_CONNECTED weight (d_out, d_in)
    if group:
        amax = np.abs(t.reshape(48, -1, group)).max(-1)
        kind = qtyping.QuantGranularity.BLOCKWISE_32
    else:
        amax = np.abs(t).max(1, keepdims=True)
        kind = qtyping.QuantGranularity.CHANNELWISE
    zp, scale = uqt.tensor_zp_scale_from_min_max(-amax, amax, bits, True, kind)
    params = qtyping.UniformQuantParams(num_bits=bits, quantized_dimension=1 if group else 0,
                                        scale=scale, zero_point=zp, symmetric=True,
                                        block_size=group or 0)
    with np.errstate(all="ignore"):  # LiteRT divides the zero block by its zero scale
        theirs = uqt.uniform_dequantize(uqt.uniform_quantize(t, params, bool(group)), params)
    np.testing.assert_array_equal(ours, theirs.T.astype(np.float32))


def test_litert_int4_config_is_the_int4_export_grid():
    from tfcompress.quantize import QuantizeConfig

    q = QuantizeConfig.litert_int4("rtn", types=("Dense",)).quantizer()
    assert (q.scheme, q.bits, q.granularity, q.group_size) == ("litert", 4, "group", 32)


def test_storage_bits_count_codes_and_parameters(w):
    for q in (Quantizer("affine", 4, "group", 16), Quantizer("kmeans", 4, "channel"),
              Quantizer("nf4", 4, "group", 32), Quantizer("symmetric", 8, "tensor")):
        assert q.storage_bits(w.shape) == q.quantize(w).storage_bits()
    assert Quantizer("affine", 4, "group", 16).storage_bits((64, 24)) == \
        64 * 24 * 4 + (2 * 4 * 24 + 16) * 32


@pytest.mark.parametrize("rows", [6, 7])
def test_int4_packing_roundtrips(rows):
    codes = np.random.default_rng(0).integers(0, 16, (rows, 5))
    packed = pack_int4(codes)
    assert packed.shape == ((rows + 1) // 2, 5) and packed.dtype == np.uint8
    np.testing.assert_array_equal(unpack_int4_np(packed, rows), codes)
    from tfcompress.quantize.packing import unpack_int4

    np.testing.assert_array_equal(np.asarray(unpack_int4(packed, rows)), codes)
    with pytest.raises(TfcompressError, match=r"\[0, 15\]"):
        pack_int4(np.array([[16]]))


def test_gptq_beats_rtn_on_correlated_inputs():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2048, 64)) @ rng.normal(size=(64, 64))  # strongly correlated
    w = rng.normal(size=(64, 32))
    h = hessian(x)
    for q in (Quantizer("affine", 3, "group", 16), Quantizer("symmetric", 4, "channel"),
              Quantizer("nf4", 4, "channel")):
        rtn = output_error(x, w, q.roundtrip(w))
        assert output_error(x, w, gptq(w, h, q).dequantize()) < 0.8 * rtn
        assert output_error(x, w, gptq(w, h, q, act_order=True).dequantize()) < 0.8 * rtn
    codes = gptq(w, h, Quantizer("affine", 3, "group", 16)).codes
    assert codes.max() < 8 and codes.shape == w.shape


def test_gptq_rejects_bad_input(w):
    q = Quantizer("affine", 4, "channel")
    with pytest.raises(TfcompressError, match="damping"):
        gptq(w, np.eye(64), q, damping=2.0)
    with pytest.raises(TfcompressError, match=r"h must be \(64, 64\)"):
        gptq(w, np.eye(3), q)
    with pytest.raises(TfcompressError, match="at least one calibration row"):
        hessian(np.zeros((0, 4)))


@pytest.mark.parametrize("kwargs,match", [
    (dict(bits=1), "bits must be an integer from 2 to 8"),
    (dict(bits=9), "bits must be an integer from 2 to 8"),
    (dict(scheme="nf4", bits=3), "bits must be 4"),
    (dict(scheme="cubic"), "scheme must be one of"),
    (dict(granularity="group"), "group_size must be a positive integer"),
    (dict(group_size=32), "needs granularity='group'"),
    (dict(scheme="kmeans", granularity="group", group_size=8), "codebook per tensor"),
])
def test_quantizer_rejects_bad_settings(kwargs, match):
    with pytest.raises(TfcompressError, match=match):
        Quantizer(**kwargs)


def test_group_size_must_divide_input_axis_unless_ragged(w):
    with pytest.raises(TfcompressError, match="group_size=24 must divide the input axis"):
        Quantizer("affine", 4, "group", 24).quantize(w)


def test_ragged_last_group_gets_its_own_parameters(w):
    q = Quantizer("affine", 4, "group", 24, ragged=True)  # 64 rows: 24 + 24 + 16
    qt = q.quantize(w)
    assert qt.scale.shape == qt.offset.shape == (3, 24)
    tail = w[48:].astype(np.float64)
    np.testing.assert_allclose(qt.offset[2], tail.min(0), rtol=1e-6)
    np.testing.assert_allclose(qt.scale[2], (tail.max(0) - tail.min(0)) / 15, rtol=1e-6)
    assert np.abs(qt.dequantize()[48:] - tail).max() <= qt.scale[2].max() / 2 + 1e-6
    assert q.storage_bits(w.shape) == qt.storage_bits() == 64 * 24 * 4 + (2 * 3 * 24 + 16) * 32


def test_gptq_with_a_ragged_last_group_beats_rtn():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(1024, 40)) @ rng.normal(size=(40, 40))
    w = rng.normal(size=(40, 8))
    q = Quantizer("affine", 3, "group", 16, ragged=True)  # 16 + 16 + 8
    qt = gptq(w, hessian(x), q)
    assert qt.scale.shape == (3, 8)
    assert output_error(x, w, qt.dequantize()) < 0.8 * output_error(x, w, q.roundtrip(w))


def _greedy_obs_reference(w, h, q, damping, order, static):
    """GPTQ without its speed-ups: quantize ``order``'s rows one by one, moving each row's
    error onto the rows left through the explicit inverse Hessian of those rows (Optimal Brain
    Surgeon), the inverse shrunk by one row and column after each step. Affine only."""
    w, g = np.array(w, np.float64), q.group_rows(len(w))
    hinv = np.linalg.inv(h + damping * np.mean(np.diag(h)) * np.eye(len(h)))
    params = {i // g: q.fit(w[i : i + g]) for i in range(0, len(w), g)} if static else {}
    codes = np.zeros(w.shape, np.int64)
    for j in order:
        if j // g not in params:  # dynamic groups: fitted on the rows as they are now
            params[j // g] = q.fit(w[j - j % g : j - j % g + g])
        scale, offset, _ = params[j // g]
        codes[j] = q.encode(w[j : j + 1], scale, offset, None)[0]
        err = (w[j] - (offset[0] + codes[j] * scale[0])) / hinv[j, j]
        w -= np.outer(hinv[:, j], err)  # rows already quantized have a zero column here
        hinv -= np.outer(hinv[:, j], hinv[j]) / hinv[j, j]
    return codes


@pytest.mark.parametrize("act_order", [False, True])
@pytest.mark.parametrize("block_size", [16, 128])
def test_gptq_is_the_greedy_obs_update_in_its_order(act_order, block_size):
    # dynamic groups (no act-order) and static ones (act-order), a ragged last group, lazy
    # blocks of one group (16) or one block for all rows (128): the same codes as the
    # unblocked, uninverted reference
    rng = np.random.default_rng(2)
    x = rng.normal(size=(512, 40)) @ rng.normal(size=(40, 40)) * np.exp(rng.normal(size=40))
    w = rng.normal(size=(40, 6))
    h = hessian(x)
    q = Quantizer("affine", 3, "group", 16, ragged=True)  # 16 + 16 + 8
    order = np.argsort(-np.diag(h), kind="stable") if act_order else np.arange(40)
    expected = _greedy_obs_reference(w, h, q, 0.01, order, static=act_order)
    qt = gptq(w, h, q, damping=0.01, act_order=act_order, block_size=block_size)
    np.testing.assert_array_equal(qt.codes, expected)


def test_quantizer_config_roundtrip():
    q = Quantizer("nf4", 4, "group", 64)
    assert Quantizer.from_config(q.get_config()) == q


def test_allocate_bits_meets_budget_and_favours_sensitive_layers():
    sens = {"a": {2: 1.0, 4: 0.1, 8: 0.001}, "b": {2: 0.01, 4: 0.005, 8: 0.0001}}
    sizes = {"a": 100, "b": 100}
    choice = allocate_bits(sens, sizes, budget_bits=600)
    assert sum(choice[p] * sizes[p] for p in sizes) <= 600
    assert choice["a"] > choice["b"]
    assert allocate_bits(sens, sizes, 1600) == {"a": 8, "b": 8}
    with pytest.raises(TfcompressError, match="below the smallest possible size"):
        allocate_bits(sens, sizes, 100)
