"""One config class per method, registered with its handler (`tfcompress.core.registry`): the
verbs dispatch on the config's class, the old forms warn and give the same model, a user's
own method registers, and the recipe schema reads its keys from the config fields."""

import re
import warnings
from dataclasses import dataclass, fields

import numpy as np
import pytest

from tfcompress.core import registry
from tfcompress.core.registry import MethodConfig, method_names, register_handler
from tfcompress.core.roles import block_kernel_paths
from tfcompress.errors import TfcompressError
from tfcompress.lowrank import ASVDConfig, FactorizeConfig, factorize
from tfcompress.models import build_gpt
from tfcompress.prune import PruneConfig, SparseGPTConfig, WandaConfig, prune, sparsity_summary
from tfcompress.quantize import GPTQConfig, QuantizeConfig, RTNConfig, quantize
from tfcompress.recipes.schema import validate


@pytest.fixture(scope="module")
def model():
    return build_gpt("test-tiny", vocab_size=64)


@pytest.fixture(scope="module")
def ids():
    return np.random.default_rng(0).integers(0, 64, (4, 16)).astype("int32")


def _same_weights(a, b) -> bool:
    return all(np.array_equal(x, y) for x, y in zip(a.get_weights(), b.get_weights(),
                                                     strict=True))


def _old(call, match):
    """``call()`` warns once with a DeprecationWarning matching ``match``; its result."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = call()
    deprecations = [w for w in caught if issubclass(w.category, DeprecationWarning)]
    assert len(deprecations) == 1, [str(w.message) for w in deprecations]  # not one per field
    assert re.search(match, str(deprecations[0].message)), deprecations[0].message
    return out


def test_every_method_of_the_verbs_has_its_config():
    assert method_names("quantize") == ["gptq", "keras_gptq", "keras_int4", "keras_int8", "rtn"]
    assert method_names("prune") == ["magnitude", "sparsegpt", "taylor", "wanda"]
    assert method_names("factorize") == ["asvd", "cp", "svd", "svd-llm"]
    for verb in ("quantize", "prune", "factorize"):
        for name in method_names(verb):
            cls = registry.config_class(verb, name)
            config = cls(rank=4) if verb == "factorize" else cls(include=["a", "b"])
            assert config.get_config()["method"] == name
            assert cls.from_config(config.get_config()) == config  # lists back to tuples


def test_quantize_dispatches_on_the_config_and_the_old_forms_warn(model, ids):
    grid = dict(bits=4, granularity="group", group_size=16, types=("Dense", "EinsumDense"))
    new = quantize(model, GPTQConfig(**grid, act_order=True), calibration=ids, verbose=0)
    old = _old(lambda: quantize(model, QuantizeConfig(method="gptq", act_order=True, **grid),
                                calibration=ids, verbose=0),
               r"QuantizeConfig\(method=\.\.\.\)\) is deprecated.*quantize\(model, GPTQConfig")
    assert _same_weights(new, old)
    keyword = _old(lambda: quantize(model, method="gptq", act_order=True, calibration=ids,
                                    verbose=0, **grid), r"method=\.\.\.\).*GPTQConfig")
    assert _same_weights(new, keyword)
    rtn = quantize(model, RTNConfig(**grid), verbose=0)
    assert not _same_weights(new, rtn)  # GPTQ compensates, so its codes differ from RTN's


def test_prune_and_factorize_dispatch_and_the_old_forms_warn(model, ids):
    new = prune(model, WandaConfig(sparsity=0.5, pattern="2:4"), calibration=ids, verbose=0)
    old = _old(lambda: prune(model, PruneConfig(method="wanda", pattern="2:4"),
                             calibration=ids, verbose=0), "WandaConfig")
    assert _same_weights(new, old)
    asvd = factorize(model, ASVDConfig(rank=4, exponent=0.25), calibration=ids, verbose=0)
    old = _old(lambda: factorize(model, FactorizeConfig(method="asvd", rank=4, alpha=0.25),
                                 calibration=ids, verbose=0), "ASVDConfig")
    assert _same_weights(asvd, old)
    renamed = _old(lambda: factorize(model, ASVDConfig(rank=4), alpha=0.25, calibration=ids,
                                     verbose=0), r"alpha= is deprecated.*ASVDConfig\(exponent")
    assert _same_weights(asvd, renamed)
    other = factorize(model, ASVDConfig(rank=4, exponent=1.0), calibration=ids, verbose=0)
    assert not _same_weights(asvd, other)


def test_overrides_and_configs_are_checked_with_the_closest_name(model, ids):
    with pytest.raises(TfcompressError, match=r"GPTQConfig has no setting 'act_ordr' \(did "
                                              r"you mean 'act_order'\?\)"):
        quantize(model, GPTQConfig(), act_ordr=True, calibration=ids)
    with pytest.raises(TfcompressError, match=r"RTNConfig has no setting 'damping'"):
        RTNConfig.from_config({"damping": 0.1})
    with pytest.raises(TfcompressError, match=r"method must be one of .* got 'wnada' \(did "
                                              r"you mean 'wanda'\?\)"):
        prune(model, method="wnada", calibration=ids)
    with pytest.raises(TfcompressError, match="WandaConfig configures prune, not quantize"):
        quantize(model, WandaConfig())
    with pytest.raises(TfcompressError, match="config must be a config of a prune method"):
        prune(model, {"method": "wanda"})
    with pytest.raises(TfcompressError, match="damping must be > 0, got 0"):
        SparseGPTConfig(damping=0)  # the method's checks run when the config is made
    with pytest.raises(TypeError):
        quantize(model, RTNConfig(), None, True)  # inplace is keyword-only


def test_roles_blocks_takes_the_block_kernels(model, ids):
    blocks = set(sparsity_summary(prune(model, WandaConfig(roles="blocks"), calibration=ids,
                                        verbose=0))["layers"])
    assert blocks == set(block_kernel_paths(model))
    every = set(sparsity_summary(prune(model, WandaConfig(), calibration=ids,
                                       verbose=0))["layers"])
    assert blocks < every  # the head is not a block kernel
    with pytest.raises(TfcompressError, match="roles='blocks' or include"):
        WandaConfig(roles="blocks", include="mlp")
    with pytest.raises(TfcompressError, match=r"roles must be one of \['blocks', 'all'\]"):
        RTNConfig(roles="mlp")


def test_a_users_own_config_and_handler_register(model, monkeypatch):
    monkeypatch.setattr(registry, "_CLASSES", dict(registry._CLASSES))
    monkeypatch.setattr(registry, "_HANDLERS", dict(registry._HANDLERS))

    @dataclass(frozen=True, kw_only=True)
    class HalveConfig(MethodConfig):
        verb = "quantize"
        method = "halve"
        factor: float = 0.5

    seen = {}

    @register_handler(HalveConfig)
    def halve(model, config, calibration=None, *, inplace=False, verbose=1):
        seen.update(config=config, inplace=inplace, calibration=calibration)
        return model

    assert quantize(model, HalveConfig(factor=0.25), "windows", inplace=True) is model
    assert seen == {"config": HalveConfig(factor=0.25), "inplace": True,
                    "calibration": "windows"}
    assert "halve" in method_names("quantize")
    with pytest.raises(TfcompressError, match="'halve' is already registered by HalveConfig"):
        register_handler(type("Other", (HalveConfig,), {}))
    with pytest.raises(TfcompressError, match="register_handler takes a MethodConfig"):
        register_handler(dict)


def _recipe(stage: dict) -> dict:
    return {"model": {"preset": "test-tiny", "train_steps": 1}, "data": {"corpus": "austen",
            "tokenizer": "byte"}, "stages": [stage], "output": "runs/x"}


def test_recipe_stage_keys_are_the_config_fields():
    recipe = validate(_recipe({"prune": {"method": "sparsegpt", "block_size": 64,
                                         "finetune_steps": 0}}))
    assert recipe["stages"][0]["block_size"] == 64
    with pytest.raises(TfcompressError) as err:
        validate(_recipe({"prune": {"method": "wanda", "sparsty": 0.5, "block_size": 64}}))
    text = str(err.value)
    assert "unknown key 'sparsty' (did you mean 'sparsity'?)" in text
    assert "unknown key 'block_size'" in text  # SparseGPT's, not Wanda's
    valid = text.split("WandaConfig takes ")[1].split(";")[0].split(", ")
    assert sorted(valid) == sorted(f.name for f in fields(WandaConfig) if f.name != "roles")
    with pytest.raises(TfcompressError, match=r"did you mean 'svd-llm'"):
        validate(_recipe({"factorize": {"method": "svd_llm", "rank": 4}}))
    with pytest.raises(TfcompressError, match="did you mean 'exponent'"):
        validate(_recipe({"factorize": {"method": "asvd", "rank": 4, "exponnt": 0.5}}))
    # an old all-methods config is read as its method's config, old names renamed, the
    # settings that method has not dropped
    assert (FactorizeConfig(method="asvd", rank=4, alpha=0.25, damping=0.5).method_config()
            == ASVDConfig(rank=4, exponent=0.25))
    assert PruneConfig(method="sparsegpt", block_size=64).method_config() == SparseGPTConfig(
        block_size=64)


def test_qat_and_sensitivity_take_the_grid_configs(model, ids):
    from tfcompress.quantize import qat, sensitivity, strip_qat

    grid = dict(bits=3, granularity="group", group_size=16)
    new = strip_qat(qat(model, RTNConfig(**grid)))
    assert _same_weights(new, strip_qat(qat(model, QuantizeConfig(**grid))))
    assert not _same_weights(new, model)  # the grid changed the weights
    by_new = sensitivity(model, ids, GPTQConfig(**grid, types=("Dense",)), bits=(2, 4))
    assert by_new == sensitivity(model, ids, QuantizeConfig(**grid, types=("Dense",)),
                                 bits=(2, 4))
    assert all(errors[2] > errors[4] for errors in by_new.values())
