"""The recipes' distill stage with `DistillOptions` keys: typos get the closest key, bad values
their message before any work, and a run distils on-policy with matched blocks."""

import keras
import pytest

from tfcompress.errors import TfcompressError
from tfcompress.models import build_gpt
from tfcompress.recipes import run_recipe, validate


def recipe(settings, **extra):
    stage = {"distill": {"steps": 2, "student": {"layers": [1]}, **settings}}
    return {"model": {"preset": "test-tiny", "train_steps": 2},
            "data": {"corpus": "austen", "tokenizer": "byte"}, "stages": [stage],
            "output": "runs/x", **extra}


@pytest.mark.parametrize("settings, message", [
    ({"on_polcy": 0.5}, "stages[0].distill: unknown key 'on_polcy' (did you mean 'on_policy'?)"),
    ({"feature_wieght": 0.1}, "unknown key 'feature_wieght' (did you mean 'feature_weight'?)"),
    ({"tempreature": 2.0}, "unknown key 'tempreature' (did you mean 'temperature'?)"),
    ({"on_policy": 2.0}, "stages[0].distill: on_policy must be a probability in [0, 1]"),
    ({"feature_loss": "l1"}, "stages[0].distill: feature_loss must be one of ['mse', 'cosine']"),
    ({"prompt_length": 0}, "prompt_length must be a positive integer"),
])
def test_bad_distill_options_get_their_message(settings, message):
    with pytest.raises(TfcompressError, match="recipe has") as err:
        validate(recipe(settings))
    assert message in str(err.value)


def test_distill_stage_runs_on_policy_with_matched_blocks(tmp_path):
    from tfcompress.data.sources import bundled_corpus

    (tmp_path / "emma.txt").write_text(bundled_corpus("austen")["train"][:20_000])
    keras.utils.set_random_seed(0)
    teacher = build_gpt("test-tiny", n_layers=2, vocab_size=256, seq_len=16, name="gpt")
    run = run_recipe({
        "model": {"object": teacher, "name": "teacher"},
        "data": {"text": str(tmp_path / "emma.txt"), "tokenizer": "byte", "seq_len": 16,
                 "batch_size": 4, "eval_windows": 8, "calibration_windows": 4},
        "stages": [{"distill": {"name": "s", "steps": 2, "student": {"layers": [1]},
                                "on_policy": 0.5, "prompt_length": 8, "features": True,
                                "feature_loss": "cosine"}}],
        "output": str(tmp_path / "run")}, verbose=False)
    note = next(n for n in run.notes if n.startswith("Beside the logits"))
    assert note == ("Beside the logits: 50% of batches continued by the student from 8 prompt "
                    "tokens (on-policy); hidden states matched (cosine, weight 1): "
                    "block0_add2 -> block1_add2.")


def test_note_of_the_default_prompt():
    from types import SimpleNamespace

    from tfcompress.recipes.stages import options_text

    distiller = SimpleNamespace(on_policy=0.25, prompt_length=None, feature_pairs=[])
    assert options_text(distiller) == ("Beside the logits: 25% of batches continued by the "
                                       "student from the first half of each window "
                                       "(on-policy).")


def test_features_without_blocks_fail_at_validation(tmp_path):
    """A model of the user's without transformer blocks: features by blocks are refused before
    any work, for a live model and a saved one; name pairs, and a preset student's own blocks
    distilled further, pass."""
    ids = keras.Input((None,), dtype="int32")
    hidden = keras.layers.Dense(8, name="hidden")(keras.layers.Embedding(32, 8)(ids))
    plain = keras.Model(ids, keras.layers.Dense(32, name="head")(hidden), name="plain")
    plain.save(tmp_path / "plain.keras")
    first = {"distill": {"name": "s", "steps": 2, "student": {"preset": "test-tiny"},
                         "features": True}}
    refused = "stages[0].distill.features: matching blocks needs transformer blocks"
    for source in ({"object": plain}, {"keras": "plain.keras"}):
        with pytest.raises(TfcompressError, match="recipe has 1 problem") as err:
            validate({**recipe({}), "model": source, "stages": [first]}, base_dir=tmp_path)
        assert refused in str(err.value) and f"model.{next(iter(source))} has none" in str(
            err.value)
    pairs = {"distill": {**first["distill"], "features": [["block0_add2", "hidden"]]}}
    again = {"distill": {"input": "s", "steps": 2, "student": {"layers": [0]},
                         "features": [1]}}
    assert len(validate({**recipe({}), "model": {"object": plain}, "stages": [pairs, again]})[
        "stages"]) == 2
