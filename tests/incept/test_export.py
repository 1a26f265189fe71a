"""The exported SavedModel: its signature, its agreement with in-process
evaluation, and atomic integer versions. Real TensorFlow, the tiny net."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

import incept
from incept import nets
from incept.evaluation.open_set import DEFAULT_SCORE, OpenSetScore
from incept.export import export_model, read_manifest
from incept.layout import list_versions
from incept.preprocessing import decode_and_preprocess_for_eval

CLASSES = ["daisy", "dandelion", "roses"]
SIZE = 32


def encoded_images(n: int, fmt: str = "PNG", seed: int = 0) -> list[bytes]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        pixels = rng.integers(0, 256, size=(40 + i, 50, 3), dtype=np.uint8)
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, format=fmt)
        out.append(buf.getvalue())
    return out


@pytest.fixture(scope="module")
def model():
    tf.keras.utils.set_random_seed(1)
    return nets.build("tiny", num_classes=len(CLASSES), image_size=SIZE)


def in_process(model, images: list[bytes]) -> dict[str, np.ndarray]:
    pixels = tf.stack([decode_and_preprocess_for_eval(tf.constant(b), SIZE) for b in images])
    out = model(pixels, training=False)
    return {"probabilities": tf.nn.softmax(out["logits"]).numpy(),
            "pre_logits": out["pre_logits"].numpy(), "logits": out["logits"].numpy()}


def fitted_ood(model) -> OpenSetScore:
    feats = in_process(model, encoded_images(12, seed=3))
    ood = OpenSetScore("mahalanobis", len(CLASSES), feats["pre_logits"].shape[1])
    labels = np.arange(12) % len(CLASSES)
    ood.fit_features(feats["pre_logits"], labels)
    scores = ood(feats["logits"], feats["pre_logits"]).numpy()
    ood.calibrate(scores)
    return ood


def test_signature_names_dtypes_shapes(model, tmp_path):
    result = export_model(model, CLASSES, tmp_path / "flowers", image_size=SIZE,
                          manifest={"job_id": "j1", "step": 7})
    assert result.version == 1 and result.path == tmp_path / "flowers" / "1"
    loaded = tf.saved_model.load(str(result.path))
    sig = loaded.signatures["serving_default"]
    _, inputs = sig.structured_input_signature
    assert list(inputs) == ["images"]
    assert inputs["images"].dtype == tf.string and inputs["images"].shape.as_list() == [None]
    outputs = sig.structured_outputs
    expected = {"probabilities": (tf.float32, [None, 3]), "classes": (tf.int32, [None, 3]),
                "labels": (tf.string, [None, 3]), "scores": (tf.float32, [None, 3]),
                "ood_score": (tf.float32, [None]), "is_unknown": (tf.bool, [None])}
    assert {k: (v.dtype, v.shape.as_list()) for k, v in outputs.items()} == expected

    got = sig(images=tf.constant(encoded_images(4)))
    assert got["probabilities"].shape == (4, 3)
    # Without an open-set score the outputs exist and call nothing unknown.
    assert not got["is_unknown"].numpy().any()
    np.testing.assert_array_equal(got["ood_score"].numpy(), np.zeros(4, np.float32))

    assert (result.path / "labels.txt").read_text().split() == CLASSES
    manifest = read_manifest(result.path)
    assert manifest["version"] == 1 and manifest["job_id"] == "j1" and manifest["step"] == 7
    assert manifest["class_names"] == CLASSES and manifest["image_size"] == SIZE
    assert manifest["incept_version"] == incept.__version__


def test_exported_probabilities_equal_in_process(model, tmp_path):
    ood = fitted_ood(model)
    images = encoded_images(3, "PNG", seed=5) + encoded_images(3, "JPEG", seed=6)
    result = export_model(model, CLASSES, tmp_path / "m", image_size=SIZE, ood=ood)
    sig = tf.saved_model.load(str(result.path)).signatures["serving_default"]
    got = sig(images=tf.constant(images))
    want = in_process(model, images)
    np.testing.assert_allclose(got["probabilities"].numpy(), want["probabilities"], atol=1e-5)

    order = np.argsort(-want["probabilities"], axis=1)[:, :3]
    np.testing.assert_array_equal(got["classes"].numpy(), order)
    labels = [[s.decode() for s in row] for row in got["labels"].numpy()]
    assert labels == [[CLASSES[i] for i in row] for row in order]

    want_ood = ood(want["logits"], want["pre_logits"]).numpy()
    np.testing.assert_allclose(got["ood_score"].numpy(), want_ood, rtol=1e-4, atol=1e-3)
    threshold = read_manifest(result.path)["ood"]["threshold"]
    np.testing.assert_array_equal(got["is_unknown"].numpy(), want_ood > threshold)


def test_versions_are_integers_atomic_and_pruned(model, tmp_path):
    base = tmp_path / "flowers"
    (base / "not-a-version").mkdir(parents=True)
    v = [export_model(model, CLASSES, base, image_size=SIZE, keep=2).version for _ in range(3)]
    assert v == [1, 2, 3]
    assert list_versions(base) == [2, 3]
    # No temporary folders are left beside the versions.
    assert sorted(p.name for p in base.iterdir()) == ["2", "3", "not-a-version"]
    with pytest.raises(FileExistsError):
        export_model(model, CLASSES, base, image_size=SIZE, version=3)
    assert json.loads((base / "3" / "manifest.json").read_text())["version"] == 3
    assert sorted(p.name for p in base.iterdir()) == ["2", "3", "not-a-version"]


def test_failed_export_leaves_nothing(tmp_path):
    broken = nets.build("tiny", num_classes=3, image_size=SIZE)
    base = tmp_path / "m"
    with pytest.raises(ValueError):
        # Wrong image size for the net: tracing the signature fails.
        export_model(broken, CLASSES, base, image_size=SIZE + 8)
    assert list(base.iterdir()) == []


def test_export_command(tmp_path, capsys):
    """`incept export --run RUN --out BASE` exports a checkpoint like the evaluator does."""
    from incept.checkpoints import build_model, class_names_path, make_checkpoint, make_manager
    from incept.cli import main
    from incept.data.convert import convert
    from incept.data.dataset import read_examples
    from incept.data.synthetic import write_class_folders
    from incept.layout import Layout
    from incept.spec import parse_spec

    layout = Layout(tmp_path / "data").ensure()
    names = write_class_folders(tmp_path / "src", num_classes=3, per_class=8, size=(40, 32))
    convert(tmp_path / "src", layout.dataset("flowers"), validation_percent=25)
    run = layout.run("job9")
    run.root.mkdir(parents=True)
    spec = parse_spec({"dataset": "flowers", "model_name": "tiny", "image_size": SIZE,
                       "max_steps": 10})
    run.spec.write_text(spec.model_dump_json())
    class_names_path(run).write_text(json.dumps(names))
    model = build_model(spec, 3)
    make_manager(make_checkpoint(model), run.checkpoints, keep=2).save(checkpoint_number=7)

    base = tmp_path / "out" / "flowers"
    assert main(["export", "--run", str(run.root), "--out", str(base)]) == 0
    assert "step 7" in capsys.readouterr().out
    manifest = read_manifest(base / "1")
    assert (manifest["job_id"], manifest["step"]) == ("job9", 7)
    assert manifest["ood_calibration"]["score_name"] == DEFAULT_SCORE
    assert manifest["ood_calibration"]["tpr"] >= 0.95
    images = [e["image"].numpy() for e in read_examples(layout.dataset("flowers"), "validation")]
    out = tf.saved_model.load(str(base / "1")).signatures["serving_default"](images=tf.constant(images))
    want = tf.nn.softmax(model(tf.stack([decode_and_preprocess_for_eval(b, SIZE) for b in images]),
                               training=False)["logits"]).numpy()
    np.testing.assert_allclose(out["probabilities"].numpy(), want, atol=1e-5)

    # A taken version is a clear error, not a trace; a missing step too.
    assert main(["export", "--run", str(run.root), "--out", str(base), "--version", "1"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["export", "--run", str(run.root), "--step", "3", "--out", str(base)]) == 2
    assert "no complete checkpoint at step 3" in capsys.readouterr().err
    assert list_versions(base) == [1]


def test_versions_of_one_model_share_one_traced_archive(tmp_path):
    """The evaluator keeps a head-only job's archive: a later version is written
    from the same traced function, with the weights (heads, open-set threshold)
    as they are at its export, and reports what it cost."""
    from incept.export import build_archive

    tf.keras.utils.set_random_seed(2)
    model = nets.build("tiny", num_classes=len(CLASSES), image_size=SIZE)
    ood = fitted_ood(model)
    ood.threshold.assign(1e30)  # nothing unknown
    archive = build_archive(model, CLASSES, image_size=SIZE, ood=ood)
    images = encoded_images(5)
    first = export_model(model, CLASSES, tmp_path / "m", image_size=SIZE, ood=ood, archive=archive)
    assert set(first.seconds) == {"trace", "save", "fsync", "total"}
    assert first.seconds["trace"] < first.seconds["total"]
    logits = model.get_layer("Logits.Logits")
    logits.kernel.assign(logits.kernel * -3.0)
    ood.threshold.assign(-1.0)  # everything unknown
    second = export_model(model, CLASSES, tmp_path / "m", image_size=SIZE, ood=ood, archive=archive)
    assert second.version == 2
    outputs = [tf.saved_model.load(str(r.path)).signatures["serving_default"](
        images=tf.constant(images)) for r in (first, second)]
    np.testing.assert_allclose(outputs[1]["probabilities"].numpy(),
                               in_process(model, images)["probabilities"], rtol=1e-5, atol=1e-6)
    assert not np.allclose(outputs[0]["probabilities"].numpy(), outputs[1]["probabilities"].numpy())
    assert outputs[1]["is_unknown"].numpy().all() and not outputs[0]["is_unknown"].numpy().any()


def serve_as_tf_serving_loads(path, images: list[bytes]) -> dict[str, np.ndarray]:
    """The version's signature run the way TF Serving's C++ loader runs it: the
    graph imported, the variables filled by its restore op (not by Python's
    object-graph matching), then the signature's tensors fetched in a session."""
    graph = tf.Graph()
    with graph.as_default(), tf.compat.v1.Session(graph=graph) as session:
        meta = tf.compat.v1.saved_model.loader.load(session, ["serve"], str(path))
        signature = meta.signature_def["serving_default"]
        names = {k: v.name for k, v in signature.outputs.items()}
        return session.run(names, {signature.inputs["images"].name: images})


def test_versions_after_the_graph_are_checkpoint_writes_tf_serving_restores(tmp_path):
    """After ``write_graph`` a version is the job's graph plus a checkpoint of the
    weights: its restore op (what TF Serving runs) must find every weight under
    the keys a full save uses, each weight written once, the values those of
    the moment it was written."""
    from incept.export import build_archive

    tf.keras.utils.set_random_seed(3)
    model = nets.build("tiny", num_classes=len(CLASSES), image_size=SIZE)
    ood = fitted_ood(model)
    ood.threshold.assign(1e30)
    images = encoded_images(4, seed=9)
    full = export_model(model, CLASSES, tmp_path / "full", image_size=SIZE, ood=ood)
    archive = build_archive(model, CLASSES, image_size=SIZE, ood=ood)
    archive.write_graph()
    wants, results = [], []
    for threshold, scale in ((1e30, 1.0), (-1.0, -2.0)):
        logits = model.get_layer("Logits.Logits")
        logits.kernel.assign(logits.kernel * scale)
        ood.threshold.assign(threshold)
        wants.append(in_process(model, images)["probabilities"])
        results.append(export_model(model, CLASSES, tmp_path / "m", image_size=SIZE, ood=ood,
                                    archive=archive))
    first, second = (serve_as_tf_serving_loads(r.path, images) for r in results)
    np.testing.assert_allclose(first["probabilities"], wants[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(second["probabilities"], wants[1], rtol=1e-5, atol=1e-6)
    assert not first["is_unknown"].any() and second["is_unknown"].all()

    def saved(path) -> dict:
        return dict(tf.train.list_variables(str(path / "variables" / "variables")))

    assert saved(results[1].path) == saved(full.path)
    weights = {id(v) for v in [*model.weights, *ood.weights]}
    assert len([k for k in saved(full.path) if k.endswith("VARIABLE_VALUE")]) == len(weights)
