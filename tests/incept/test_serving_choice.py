"""The serving choice on the shared volume (models/<name>/serving.json): pin a
version, unpin back to the newest; pruning never removes the pinned version."""

from __future__ import annotations

import pytest

from incept.layout import SERVING_CHOICE, pin_version, pinned_version, served_version


def _versions(model_dir, *versions):
    for v in versions:
        (model_dir / str(v)).mkdir(parents=True)


def test_pin_and_unpin(tmp_path):
    model = tmp_path / "flowers"
    _versions(model, 1, 2, 3)
    assert pinned_version(model) is None and served_version(model) == 3
    pin_version(model, 2, by="test")
    assert pinned_version(model) == 2 and served_version(model) == 2
    _versions(model, 4)  # a newer export waits while a version is pinned
    assert served_version(model) == 2
    pin_version(model, None)
    assert not (model / SERVING_CHOICE).exists() and served_version(model) == 4
    with pytest.raises(ValueError, match="no version 9"):
        pin_version(model, 9)
    assert pinned_version(model) is None


def test_a_pin_that_is_gone_or_garbled_falls_back_to_the_newest(tmp_path):
    model = tmp_path / "flowers"
    _versions(model, 1, 2)
    for text in ('{"pinned": 7}', "not json", '{"pinned": true}', '["x"]'):
        (model / SERVING_CHOICE).write_text(text)
        assert served_version(model) == 2


def test_pruning_keeps_the_pinned_version(tmp_path):
    from incept.export import prune_versions

    model = tmp_path / "flowers"
    _versions(model, 1, 2, 3, 4)
    pin_version(model, 1)
    assert prune_versions(model, keep=2) == [2]
    assert sorted(int(p.name) for p in model.iterdir() if p.name.isdigit()) == [1, 3, 4]
