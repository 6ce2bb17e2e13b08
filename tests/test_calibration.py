"""The block-by-block calibration engine: blocks, streamed statistics, resume, Hessian helper."""

import importlib

import keras
import numpy as np
import pytest

from tfcompress.core import (
    InputStats,
    calibrate,
    calibration_batches,
    capture_inputs,
    find_blocks,
    hessian,
    inverse_hessian_factor,
)
from tfcompress.core.calibration import input_groups
from tfcompress.core.compressor import Compressor
from tfcompress.core.layers import (
    copy_model,
    kernel_matrix,
    matrix_shape,
    select_layers,
    set_kernel_matrix,
)
from tfcompress.core.stats import permute_symmetric
from tfcompress.errors import TfcompressError
from tfcompress.models import build_gpt
from tfcompress.models.llama import LlamaConfig, build_llama
from tfcompress.prune import prune
from tfcompress.prune.training import STATE_ATTR

IDS = np.random.default_rng(0).integers(0, 64, (12, 16)).astype("int32")


class _Seen(Compressor):
    """Keeps the statistics it is given; compresses nothing."""

    needs = ("xtx", "abs")

    def __init__(self):
        self.stats = {}

    def compress_layer(self, path, layer, stats):
        self.stats[path] = stats


@pytest.fixture(scope="module")
def gpt():
    keras.utils.set_random_seed(0)
    return build_gpt("test-tiny", vocab_size=64, seq_len=16)


def test_blocks_found_in_each_model_family(gpt, tiny_gpt2):
    assert find_blocks(gpt).names == ["block0", "block1"]
    llama = build_llama(LlamaConfig(vocab_size=64, d_model=32, n_layers=3, n_heads=4,
                                    n_kv_heads=2, d_ff=48))
    plan = find_blocks(llama)
    assert plan.names == ["block0", "block1", "block2"]
    assert {la.name for la in plan.groups[1]} >= {"block1_attn_q", "block1_mlp_down"}
    backbone, _ = tiny_gpt2(num_layers=2)
    causal_lm = pytest.importorskip("keras_hub").models.GPT2CausalLM(backbone=backbone,
                                                                      preprocessor=None)
    for model in (backbone, causal_lm):  # the task model nests the backbone's blocks
        plan = find_blocks(model)
        assert plan.host is backbone
        assert plan.names == ["transformer_layer_0", "transformer_layer_1"]
    # a user's own grouping: attention and MLP halves of each block as separate blocks
    halves = find_blocks(gpt, r"block\d+_(attn|mlp_in)")
    assert halves.names == ["block0_attn", "block0_mlp_in", "block1_attn", "block1_mlp_in"]


@pytest.mark.parametrize("blocks,match", [
    ("block(", "not a valid regular expression"),
    (r"^decoder\d+", "matched no layer of 'gpt'"),
    (["block0_ln1", "no_such_layer"], "matched no layer"),
    (3, "regex string or a list of layer names"),
    (r"block\d_mlp_in", "not part of any block"),
])
def test_bad_block_patterns_raise_before_work(gpt, blocks, match):
    layers = select_layers(gpt, ("Dense",), include="mlp")
    seen = _Seen()
    with pytest.raises(TfcompressError, match=match):
        calibrate(gpt, layers, IDS, seen, blocks=blocks, verbose=0)
    assert not seen.stats


def test_streamed_statistics_equal_the_batch_formula(gpt):
    layers = select_layers(gpt, ("Dense", "EinsumDense"), include="block")
    recorder = _Seen()
    assert calibrate(gpt, layers, IDS, recorder, verbose=0) == {p: None for p, _ in layers}
    seen = recorder.stats
    rows = capture_inputs(gpt, [la for _, la in layers], IDS)
    for path, x in rows.items():
        x = x.astype(np.float64)
        stats = seen[path]
        assert stats.n == len(x) == 12 * 16
        np.testing.assert_allclose(stats.xtx, x.T @ x, rtol=1e-5, atol=1e-4)
        np.testing.assert_allclose(stats.norms(), np.linalg.norm(x, axis=0), rtol=1e-5)
        np.testing.assert_allclose(stats.mean_abs(), np.abs(x).mean(axis=0), rtol=1e-5)
        np.testing.assert_allclose(hessian(stats), 2 * x.T @ x / len(x), rtol=1e-5, atol=1e-5)
    # query, key and value read one tensor: one statistic; the MLP layers read others
    assert seen["block0_attn/query"] is seen["block0_attn/key"] is seen["block0_attn/value"]
    assert seen["block0_mlp_in"] is not seen["block0_attn/query"]
    capped = InputStats(4, max_rows=5)
    capped.update(np.ones((3, 4), np.float32))
    capped.update(np.ones((3, 4), np.float32))
    assert capped.n == 5 and capped.xtx[0, 0] == 5


def test_interrupted_run_resumes_to_the_same_weights(gpt, tmp_path, monkeypatch):
    oneshot = importlib.import_module("tfcompress.prune.oneshot")  # tfcompress.prune is a verb
    config = dict(method="sparsegpt", sparsity=0.5, include="block", block_size=16)
    reference = prune(gpt, calibration=IDS, **config)
    real, calls = oneshot.sparsegpt_prune, []

    def interrupted(w, h, *args, layer="", **kwargs):
        calls.append(layer)
        if layer.startswith("block1"):
            raise KeyboardInterrupt
        return real(w, h, *args, layer=layer, **kwargs)

    monkeypatch.setattr(oneshot, "sparsegpt_prune", interrupted)
    with pytest.raises(KeyboardInterrupt):
        prune(gpt, calibration=IDS, resume_dir=tmp_path, **config)
    monkeypatch.setattr(oneshot, "sparsegpt_prune", lambda *a, layer="", **k: (
        calls.append(layer), real(*a, layer=layer, **k))[1])
    calls.clear()
    resumed = prune(gpt, calibration=IDS, resume_dir=tmp_path, **config)
    assert calls and all(p.startswith("block1") for p in calls)  # block 0 was not redone
    for (path, a), (_, b) in zip(select_layers(reference), select_layers(resumed), strict=True):
        np.testing.assert_array_equal(kernel_matrix(a), kernel_matrix(b), err_msg=path)
    ref_masks, masks = (getattr(m, STATE_ATTR).masks for m in (reference, resumed))
    assert masks.keys() == ref_masks.keys()
    for path in masks:  # block 0's masks come back from the folder
        np.testing.assert_array_equal(masks[path].numpy(), ref_masks[path].numpy())
    with pytest.raises(TfcompressError, match="different calibration run"):
        prune(gpt, calibration=IDS, resume_dir=tmp_path, **{**config, "sparsity": 0.6})


def test_damped_inverse_cholesky_retries_then_names_the_layer():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(40, 6))
    h = hessian(x)
    h[5, :] = h[:, 5] = 0.0  # a dead input
    u, dead = inverse_hessian_factor(h, damping=0.01)
    fixed = h.copy()
    fixed[5, 5] = 1.0
    fixed += 0.01 * np.mean(np.diag(fixed)) * np.eye(6)
    np.testing.assert_allclose(u.T @ u, np.linalg.inv(fixed), rtol=1e-8, atol=1e-10)
    assert np.allclose(u, np.triu(u)) and dead.tolist() == [False] * 5 + [True]
    indefinite = np.diag([1.0, 1.0, -0.5])  # positive only once damping is raised
    u, _ = inverse_hessian_factor(indefinite, damping=0.01)
    assert np.all(np.isfinite(u))
    with pytest.raises(TfcompressError, match="layer block3_mlp_out is not positive definite"):
        inverse_hessian_factor(-np.eye(3), damping=0.01, layer="block3_mlp_out", retries=1)


def test_lean_hessian_helpers_give_the_plain_numpy_values():
    """`take_hessian` (in place of X^T X), `permute_symmetric` (in place of ``np.ix_``) and a
    600-wide `inverse_hessian_factor` (LAPACK in one array) against the textbook formulas."""
    x = np.random.default_rng(2).normal(size=(900, 600)).astype("float32")
    stats, h = InputStats(600, ("xtx",)), hessian(x)
    stats.update(x[:500])
    stats.update(x[500:])
    stats.readers = 2  # two layers read these inputs (q and k): computed once
    first, last = stats.take_hessian(), stats.take_hessian()
    np.testing.assert_allclose(last, h, rtol=1e-5, atol=1e-5)
    assert stats.xtx is None and not np.shares_memory(first, last)  # each caller owns its own
    np.testing.assert_array_equal(first, last)
    with pytest.raises(TfcompressError, match="every layer reading it took it already"):
        stats.take_hessian()  # the last reader's call let go of it
    perm = np.random.default_rng(3).permutation(600)
    np.testing.assert_array_equal(permute_symmetric(h.copy(), perm), h[np.ix_(perm, perm)])
    before = h.copy()
    u, _ = inverse_hessian_factor(h, damping=0.01)
    np.testing.assert_array_equal(h, before)  # the caller's Hessian is left as it was
    damped = h + 0.01 * np.mean(np.diag(h)) * np.eye(600)
    np.testing.assert_allclose(u.T @ u, np.linalg.inv(damped), rtol=1e-8, atol=1e-10)
    assert np.allclose(u, np.triu(u))
    in_place, _ = inverse_hessian_factor(before, damping=0.01, overwrite=True)
    np.testing.assert_array_equal(in_place, u)
    single = h.astype("float32")  # not float64: copied, left as it was
    np.testing.assert_allclose(inverse_hessian_factor(single, 0.01, overwrite=True)[0], u,
                               rtol=1e-3, atol=1e-4)
    np.testing.assert_array_equal(single, h.astype("float32"))


def test_a_failed_factorization_is_retried_on_the_hessian_it_was_given():
    """LAPACK writes over the triangle it factors before it finds H indefinite: the retry
    with 10x the damping must start again from H's own values."""
    rng = np.random.default_rng(4)
    q = np.linalg.qr(rng.normal(size=(40, 40)))[0]
    h = (q * np.r_[-0.05, np.ones(39)]) @ q.T  # dense, one negative eigenvalue
    mean = np.mean(np.diag(h))
    first_pd = next(lam for lam in 0.01 * mean * 10.0 ** np.arange(7)
                    if np.linalg.eigvalsh(h + lam * np.eye(40)).min() > 0)
    assert first_pd > 0.01 * mean  # the first try fails
    u, _ = inverse_hessian_factor(h.copy(), damping=0.01, overwrite=True)
    np.testing.assert_allclose(u.T @ u, np.linalg.inv(h + first_pd * np.eye(40)),
                               rtol=1e-8, atol=1e-10)


def test_calibration_batches_split_arrays_and_read_generators_once(gpt):
    assert [b.shape for b in calibration_batches(IDS)] == [(8, 16), (4, 16)]
    batches = calibration_batches((x for x in (IDS[:2], IDS[2:5])), gpt)
    assert [b.shape for b in batches] == [(2, 16), (3, 16)]
    with pytest.raises(TfcompressError, match="calibration is required"):
        calibration_batches(None)
    # token ids are checked by core.validation before the input shape
    with pytest.raises(TfcompressError, match=r"shape \(batch, seq_len\), got shape \(16,\)"):
        calibration_batches(IDS[0], gpt)


def test_a_graph_that_is_no_chain_of_blocks_is_calibrated_in_one_pass():
    # a user's own LM: a residual around an MLP, no repeated blocks; named blocks must form a
    # chain, found ones fall back to one pass over the whole model
    ids = keras.Input((None,), dtype="int32")
    x = keras.layers.Embedding(64, 16)(ids)
    h = keras.layers.Dense(32, activation="gelu", name="ffn_in")(x)
    x = x + keras.layers.Dense(16, name="ffn_out")(h)
    model = keras.Model(ids, keras.layers.Dense(64, name="head")(x))
    pruned = prune(model, method="sparsegpt", sparsity=0.5, include="ffn|head",
                   calibration=IDS, verbose=0)
    for name in ("ffn_in", "ffn_out", "head"):
        assert (kernel_matrix(pruned.get_layer(name)) == 0).mean() == pytest.approx(0.5)
    with pytest.raises(TfcompressError, match="not part of any block"):
        prune(model, method="sparsegpt", include="ffn|head", calibration=IDS, verbose=0,
              blocks=["ffn_in", "head"])


class _Zero(Compressor):
    """Zeroes each kernel; keeps the ``max |x_j|`` of its inputs."""

    needs = ("max",)

    def compress_layer(self, path, layer, stats):
        set_kernel_matrix(layer, np.zeros(matrix_shape(layer), "float32"))
        return stats.max_abs().copy()


@pytest.mark.parametrize("sequential", [True, False])
def test_a_block_sees_the_compressed_blocks_before_it_when_sequential(gpt, sequential):
    model = copy_model(gpt)
    layers = select_layers(model, ("Dense",), include=r"block\d_mlp_out")
    maxima = calibrate(model, layers, IDS, _Zero(), sequential=sequential, verbose=0)
    assert all((kernel_matrix(la) == 0).all() for _, la in layers)
    reference = copy_model(gpt)  # block 1 reads block 0 as compressed (zero) or dense
    if sequential:
        layer = reference.get_layer("block0_mlp_out")
        set_kernel_matrix(layer, np.zeros(matrix_shape(layer), "float32"))
    rows = capture_inputs(reference, [reference.get_layer("block1_mlp_out")], IDS)
    np.testing.assert_allclose(maxima["block1_mlp_out"],
                               np.abs(rows["block1_mlp_out"]).max(axis=0), rtol=1e-6)
    dense = capture_inputs(gpt, [gpt.get_layer("block1_mlp_out")], IDS)["block1_mlp_out"]
    assert np.allclose(maxima["block1_mlp_out"], np.abs(dense).max(axis=0)) != sequential


def test_input_groups_keep_call_order_with_readers_of_one_input_together():
    assert input_groups(["q", "k", "v", "o", "gate", "up", "down"],
                        {"k": "q", "v": "q", "up": "gate"}) == [
        ["q", "k", "v"], ["o"], ["gate", "up"], ["down"]]
    assert input_groups(["a"], {}) == [["a"]]


@pytest.mark.parametrize("layerwise", [True, False])
def test_layerwise_layers_see_the_layers_compressed_before_them_in_their_block(layerwise):
    keras.utils.set_random_seed(0)
    llama = build_llama(LlamaConfig(vocab_size=64, d_model=16, n_layers=2, n_heads=2,
                                    n_kv_heads=1, d_ff=24))
    model = copy_model(llama)
    maxima = calibrate(model, select_layers(model, ("Dense",), include=r"block\d_(attn|mlp)_"),
                       IDS, _Zero(), layerwise=layerwise, verbose=0)
    # layerwise: out reads the attention of zeroed q/k/v, down the product of zeroed gate/up
    for path in ("block0_attn_out", "block1_attn_out", "block0_mlp_down", "block1_mlp_down"):
        assert (maxima[path] == 0).all() == layerwise, path
    # block 1 reads block 0 compressed (zero: its input unchanged), and its MLP a zero
    # attention when layerwise, the dense one when not
    reference = copy_model(llama)
    zeroed = [f"block0_{n}" for n in ("attn_q", "attn_k", "attn_v", "attn_out", "mlp_gate",
                                        "mlp_up", "mlp_down")]
    zeroed += [f"block1_attn_{n}" for n in ("q", "k", "v", "out")] if layerwise else []
    for name in zeroed:
        layer = reference.get_layer(name)
        set_kernel_matrix(layer, np.zeros(matrix_shape(layer), "float32"))
    rows = capture_inputs(reference, [reference.get_layer("block1_mlp_gate")], IDS)
    np.testing.assert_allclose(maxima["block1_mlp_gate"],
                               np.abs(rows["block1_mlp_gate"]).max(axis=0), rtol=1e-5)


def test_layerwise_needs_sequential_and_sparsegpt_takes_it(gpt):
    layers = select_layers(gpt, ("Dense",), include="block0")  # refused before any work
    with pytest.raises(TfcompressError, match="layerwise=True .* needs sequential=True"):
        calibrate(gpt, layers, IDS, _Zero(), sequential=False, layerwise=True, verbose=0)
    from tfcompress.prune import SparseGPTConfig

    pruned = {lw: prune(gpt, SparseGPTConfig(include="block0_attn", block_size=16,
                                             layerwise=lw), calibration=IDS, verbose=0)
              for lw in (True, False)}
    assert not SparseGPTConfig().layerwise  # llm-compressor's way unless asked
    with pytest.raises(TfcompressError, match="layerwise must be True or False, got 'yes'"):
        SparseGPTConfig(layerwise="yes")
    # query/key/value read the block's input either way; the output projection reads what
    # the pruned ones give only when layerwise
    kernels = {lw: {p: kernel_matrix(la) for p, la in select_layers(m, include="block0_attn")}
               for lw, m in pruned.items()}
    same = {p: np.array_equal(kernels[True][p], kernels[False][p])
            for p in ("block0_attn/query", "block0_attn/attention_output")}
    assert same == {"block0_attn/query": True, "block0_attn/attention_output": False}


def test_a_finished_run_resumes_from_npz_and_json_without_recompressing(gpt, tmp_path,
                                                                        monkeypatch):
    from tfcompress.quantize import GPTQConfig, quantize
    from tfcompress.quantize.gptq import GPTQCompressor

    config = GPTQConfig(bits=4, granularity="group", group_size=16, include="block",
                        resume_dir=str(tmp_path))
    first = quantize(gpt, config, calibration=IDS, verbose=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "block_0000.json", "block_0000.npz", "block_0000_results.npz", "block_0001.json",
        "block_0001.npz", "block_0001_results.npz", "inputs.npz", "manifest.json"]

    def refuse(self, path, layer, stats):
        raise AssertionError(f"{path} was compressed again")

    monkeypatch.setattr(GPTQCompressor, "compress_layer", refuse)
    again = quantize(gpt, config, calibration=IDS, verbose=0)  # the codes come back (QTensor)
    for a, b in zip(first.get_weights(), again.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_chain_feeds_several_compressors_from_one_pass(gpt):
    """SparseGPT then GPTQ on q/k/v (one shared Hessian, taken six times) in one pass give
    what two passes give: the same masks, codes and weights."""
    from tfcompress.core.compressor import Chain
    from tfcompress.prune import SparseGPTConfig
    from tfcompress.prune.oneshot import SparseGPTPruner
    from tfcompress.quantize import GPTQConfig
    from tfcompress.quantize.gptq import GPTQCompressor

    sparse, grid = SparseGPTPruner(SparseGPTConfig(block_size=16)), GPTQCompressor(
        GPTQConfig(bits=4, granularity="group", group_size=16))
    include = r"block0_attn/(query|key|value)"
    one, two = copy_model(gpt), copy_model(gpt)
    chain = Chain([sparse, grid])
    chained = calibrate(one, select_layers(one, include=include), IDS, chain, verbose=0)
    layers = select_layers(two, include=include)
    masks = calibrate(two, layers, IDS, sparse, verbose=0)
    codes = calibrate(two, layers, IDS, grid, verbose=0)
    assert sorted(chained) == sorted(masks) == ["block0_attn/key", "block0_attn/query",
                                                "block0_attn/value"]
    for path, (mask, qt) in chained.items():
        np.testing.assert_array_equal(mask, masks[path])
        np.testing.assert_array_equal(qt.codes, codes[path].codes)
        assert (mask == 0).mean() == pytest.approx(0.5, abs=0.05)  # SparseGPT's default
        saved_mask, saved_qt = chain.load(chain.save((mask, qt)))  # the resume store's form
        np.testing.assert_array_equal(saved_mask, mask)
        np.testing.assert_array_equal(saved_qt.dequantize(), qt.dequantize())
    for a, b in zip(one.get_weights(), two.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
