"""The shipped example specs are valid and take the intended training path."""

from pathlib import Path

import pytest

from incept.spec import load_spec

EXAMPLES = Path(__file__).parents[3] / "examples"


def test_seed_example_is_the_seed_recipe_on_the_head_only_path():
    from incept.spec import is_head_only

    spec = load_spec(EXAMPLES / "flowers-inception_v4-seed.yaml")
    assert (spec.learning_rate, spec.learning_rate_decay_factor, spec.num_epochs_per_decay) == (0.001, 0.76, 50)
    assert (spec.optimizer, spec.moving_average_decay, spec.batch_size) == ("adam", 0.9999, 32)
    assert spec.trainable_scopes == spec.exclude_scopes == [
        "InceptionV4/Logits", "InceptionV4/AuxLogits/Aux_logits"]
    assert is_head_only(spec)


@pytest.mark.parametrize("name", sorted(p.name for p in EXAMPLES.glob("*.yaml")))
def test_every_example_parses(name):
    assert load_spec(EXAMPLES / name).dataset
