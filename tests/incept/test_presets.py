"""Every preset the page offers is a valid job spec once a dataset is named,
and says which path it takes."""

from __future__ import annotations

import pytest

from incept.presets import PRESETS
from incept.spec import parse_spec


@pytest.mark.parametrize("key", sorted(PRESETS))
def test_presets_are_valid_specs(key):
    preset = PRESETS[key]
    assert preset["title"] and preset["description"]
    spec = parse_spec({**preset["spec"], "dataset": "flowers"})
    assert spec.dataset == "flowers"


def test_presets_take_the_paths_they_name():
    from incept.spec import is_head_only

    assert is_head_only(parse_spec({**PRESETS["seed"]["spec"], "dataset": "f"}))
    assert not is_head_only(parse_spec({**PRESETS["full"]["spec"], "dataset": "f"}))
    assert parse_spec({**PRESETS["tiny"]["spec"], "dataset": "f"}).model_name == "tiny"
