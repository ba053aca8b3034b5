"""The toy world this session built is inside its bands, and the recipe refuses to build a different one."""

import pytest

from rlaif import toy
from rlaif.errors import RunError


def test_built_world_is_inside_its_bands(toy_paths):
    """What the demo and the behaviour tests rely on, checked on this machine's own build (toy.json)."""
    for name, band in (("policy", toy.POLICY_BAND), ("judge", toy.JUDGE_BAND)):
        meta = toy.metadata_of(toy_paths[name])
        assert meta["band"] == list(band) and meta["world"] == toy_paths[name].parent.name
        for split, n in (("validation", 500), ("test", 1000)):
            acc = meta[split]["greedy_accuracy"]
            assert meta[split]["n"] == n
            assert band[0] <= acc <= band[1], f"toy:{name} greedy accuracy on {split} {acc:.3f} is outside {band}: {meta}"
        assert meta["step"] <= meta["recipe"]["max_steps"]
        assert meta["cpu_capability"] and meta["threads"] >= 1 and meta["torch"]
    biased = toy.metadata_of(toy_paths["biased-judge"])
    assert biased["first_slot_rate"] >= toy.BIASED_FIRST_SLOT_MIN
    # the snapshot rule: the policy was taken as validation accuracy reached the band's middle
    policy = toy.metadata_of(toy_paths["policy"])
    assert policy["validation"]["greedy_accuracy"] >= policy["recipe"]["policy_at"]
    assert toy.metadata_of(toy_paths["judge"])["validation"]["greedy_accuracy"] >= policy["recipe"]["judge_target"]


def test_splits_are_disjoint_and_toy_test_never_moves():
    split = toy.problems()
    sets = {k: set(v) for k, v in split.items()}
    assert [len(split[k]) for k in ("test", "validation", "train")] == [1000, 500, 8500]
    assert not (sets["test"] & sets["validation"]) and not (sets["train"] & (sets["test"] | sets["validation"]))
    # the recipe's seed moves the weights and the batch order, never the held-out problems
    assert toy.prompt_rows("test", toy.ToyRecipe(seed=3)) == toy.prompt_rows("test")
    assert len(toy.prompt_rows("train")) == 8500


def test_world_id_covers_the_recipe_and_its_targets():
    base = toy.toy_dir()
    assert toy.toy_dir(toy.ToyRecipe(judge_target=0.9)) != base
    assert toy.toy_dir(toy.ToyRecipe(policy_band=(0.2, 0.5))) != base
    assert toy.toy_dir(toy.ToyRecipe(seed=1)) != base
    assert toy.toy_dir(toy.ToyRecipe()) == base


def test_toy_build_prints_accuracies_and_environment(toy_paths):
    from conftest import run_cli

    result = run_cli("toy", "build")
    assert result.returncode == 0, result.stderr
    for word in ("validation", "toy:test", "band", "kernels", "threads", "torch", toy_paths["policy"].parent.name):
        assert word in result.stdout, result.stdout


@pytest.mark.slow
def test_a_target_missed_within_the_step_cap_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setenv("RLAIF_CACHE", str(tmp_path))
    recipe = toy.ToyRecipe(max_steps=50, eval_every=25)
    with pytest.raises(RunError) as err:
        toy.build(recipe, progress=False)
    message = str(err.value)
    assert toy.toy_dir(recipe).name in message and "max_steps 50" in message and "policy" in message
    assert "kernels" in message and "threads" in message
    assert not (toy.toy_dir(recipe) / "policy").exists()  # nothing half-built is left to be mistaken for a world
