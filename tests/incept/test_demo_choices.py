"""The demo's choices without a stack: which data and weights it takes, and
that every spec it can submit is a valid job spec."""

from __future__ import annotations

from pathlib import Path

import pytest
from rich.console import Console

from incept.data.synthetic import write_class_folders
from incept.demo import DemoData, DemoWeights, choose_data, choose_weights, demo_spec
from incept.errors import UserError
from incept.spec import parse_spec


@pytest.fixture
def console():
    return Console(record=True, width=200)


def test_user_photos_one_level_down_are_found(tmp_path, console):
    write_class_folders(tmp_path / "archive" / "flower_photos", num_classes=3, per_class=2)
    data = choose_data(tmp_path / "archive", tmp_path / "root", console)
    assert data.kind == "folder" and data.source == (tmp_path / "archive" / "flower_photos").resolve()
    assert "your photos" in console.export_text()


def test_a_folder_without_class_folders_is_refused(tmp_path, console):
    (tmp_path / "empty" / "nothing").mkdir(parents=True)
    with pytest.raises(UserError, match="no class folders"):
        choose_data(tmp_path / "empty", tmp_path / "root", console)


def test_missing_checkpoint_is_refused_before_anything_starts(tmp_path, console):
    with pytest.raises(UserError, match="no such checkpoint"):
        choose_weights(str(tmp_path / "nope.ckpt"), tmp_path / "root", console)
    prefix = tmp_path / "model.ckpt-100"
    (tmp_path / "model.ckpt-100.index").write_bytes(b"")
    (tmp_path / "model.ckpt-100.data-00000-of-00001").write_bytes(b"weights")
    weights = choose_weights(str(prefix), tmp_path / "root", console)
    # The services read base checkpoints only inside the data root: it is linked in.
    inside = (tmp_path / "root").resolve() / "pretrained" / "given" / "model.ckpt-100"
    assert weights.checkpoint == str(inside) and weights.kind == "given"
    assert Path(f"{inside}.data-00000-of-00001").read_bytes() == b"weights"
    from incept.layout import Layout

    assert Layout(tmp_path / "root").base_checkpoint(weights.checkpoint) == inside


@pytest.mark.parametrize("kind", ["folder", "flowers", "generated"])
@pytest.mark.parametrize("checkpoint", [None, "/ckpt/inception_v4.ckpt"])
def test_every_demo_spec_is_a_valid_job_spec(tmp_path, kind, checkpoint):
    data = DemoData("photos", tmp_path, kind)
    spec = parse_spec(demo_spec(data, DemoWeights(checkpoint, "given" if checkpoint else "random")))
    if checkpoint:
        # The seed's recipe: the heads of Inception v4 are replaced and trained.
        assert spec.model_name == "inception_v4" and spec.checkpoint == checkpoint
        assert spec.trainable_scopes == spec.exclude_scopes == [
            "InceptionV4/Logits", "InceptionV4/AuxLogits/Aux_logits"]
        assert (spec.learning_rate, spec.optimizer, spec.moving_average_decay) == (0.001, "adam", 0.9999)
    else:
        # Random initialisation on a CPU: the tiny net, small images, a few minutes.
        assert spec.model_name == "tiny" and spec.resolved_image_size() <= 64
    assert spec.serving_name() == "photos"


def test_incept_up_refuses_bad_data_before_starting_anything(tmp_path):
    import subprocess
    import sys

    root = tmp_path / "var"
    result = subprocess.run([sys.executable, "-m", "incept.cli", "up", "--port", "0", "--data-root",
                             str(root), "--data", str(tmp_path / "missing")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "no class folders" in result.stderr and "Traceback" not in result.stderr
    assert not (root / "stack" / "state.json").exists() and not (root / "redis").exists()
