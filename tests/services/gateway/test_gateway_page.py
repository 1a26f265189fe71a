"""The web page in a real headless Chromium (Debian's, driven by Playwright):
classify a photo (picked and dropped), see the bars and the unknown verdict,
follow a job live, see its accuracy chart and confusion matrix."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from incept.fsutil import write_json_atomic
from incept.jobstate import JobState
from incept.queues import connect
from tests.services.gateway.conftest import CLASSES, TOKEN, save_checkpoint

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[3] / "artifacts"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]


AXE = ARTIFACTS.parent / ".venv-tools/npm/node_modules/axe-core/axe.min.js"


def assert_accessible(page, view: str) -> None:
    """axe-core (npm, pinned, installed by `make tools`) finds no serious or
    critical WCAG 2 A/AA violation on what the page shows now."""
    if not AXE.exists():
        pytest.fail("axe-core is missing: run 'make tools'")
    if not page.evaluate("typeof window.axe !== 'undefined'"):
        page.add_script_tag(content=AXE.read_text())
    result = page.evaluate("""async () => {
        const r = await axe.run(document, {runOnly: {type: 'tag', values: ['wcag2a', 'wcag2aa', 'wcag21aa']}});
        return r.violations.filter(v => ['serious', 'critical'].includes(v.impact))
            .map(v => ({id: v.id, impact: v.impact, help: v.help,
                        nodes: v.nodes.slice(0, 3).map(n => n.target.join(' '))}));
    }""")
    assert result == [], f"{view}: {result}"


@pytest.fixture
def browser():
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail("Debian's chromium is missing: run 'make browser' (apt-get install chromium)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


def _running_job(layout, redis_url) -> str:
    job_id = "flowers-20260101-000000-abcdef"
    run = layout.run(job_id)
    write_json_atomic(run.spec, {"dataset": "flowers", "model_name": "tiny", "max_steps": 20})
    for step, acc in ((5, 0.4), (10, 0.85), (15, 0.7)):
        write_json_atomic(run.eval_result(step), {
            "job_id": job_id, "step": step, "accuracy": acc, "recall_at_5": 1.0, "loss": 1 - acc,
            "class_names": CLASSES, "confusion_matrix": [[4, 1, 0], [0, 5, 0], [1, 0, 4]],
            "per_class": {c: {"precision": 0.8, "recall": 0.8, "f1": 0.8, "support": 5}
                          for c in CLASSES}})
    _per_image_results(layout, run, 10, [[4, 1, 0], [0, 5, 0], [1, 0, 4]])
    state = JobState(connect(redis_url))
    state.create(job_id, max_steps=20)
    for step, acc in ((5, 0.4), (10, 0.85), (15, 0.7)):  # as the evaluator publishes them
        state.emit(job_id, "eval", {"step": step, "accuracy": acc})
    state.set_state(job_id, "running", step=15)
    return job_id


def _per_image_results(layout, run, step: int, confusion) -> None:
    """eval/<step>.images.json as the evaluator writes it, and the dataset's thumbnails."""
    from incept.layout import thumbnail_file, thumbnail_key
    from tests.services.gateway.conftest import encode

    images, n = [], 0
    for true, row in enumerate(confusion):
        for predicted, count in enumerate(row):
            for _ in range(count):
                n += 1
                rel = f"{CLASSES[true]}/{n}.jpg"
                wrong = true != predicted
                images.append({"file": rel, "thumbnail": thumbnail_key(rel), "label": true,
                               "predicted": predicted, "score": 0.6 if wrong else 0.9,
                               "loss": 1.0 + n / 10 if wrong else 0.1, "ood_score": float(n)})
                thumb = thumbnail_file(layout.dataset("flowers"), thumbnail_key(rel))
                thumb.parent.mkdir(parents=True, exist_ok=True)
                thumb.write_bytes(encode(np.full((24, 32, 3), 40 * true + 20, np.uint8)))
    write_json_atomic(run.eval_images(step), {"job_id": run.job_id, "step": step, "images": images})


def test_page_classifies_and_follows_jobs(gateway, browser, images, layout, redis_url):
    job_id = _running_job(layout, redis_url)
    page = browser.new_page(viewport={"width": 1100, "height": 1100})
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(gateway.url + "/")
    page.wait_for_function("document.querySelectorAll('#model option').length === 2")
    # Before a photo is chosen there is no result (and no broken image) on screen.
    assert not page.is_visible("#result") and not page.is_visible("#preview")

    # Pick a photo: preview, one bar per class, a verdict naming a class.
    page.select_option("#model", "flowers")
    page.set_input_files("#file", files=[{"name": "photo.jpg", "mimeType": "image/jpeg",
                                          "buffer": images[0]}])
    page.wait_for_selector("#result:not([hidden])")
    assert page.locator("#bars .bar").count() == len(CLASSES)
    verdict = page.inner_text("#verdict")
    assert any(verdict.startswith(c) for c in CLASSES), verdict
    assert "version 1" in page.inner_text("#answered-by")
    assert page.evaluate("document.querySelector('#preview').naturalWidth") > 0

    # Drop a photo on the strict model: the clear "not one of the known classes".
    page.select_option("#model", "strict")
    page.evaluate("""async (b64) => {
        const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
        const dt = new DataTransfer();
        dt.items.add(new File([bytes], "cat.jpg", {type: "image/jpeg"}));
        document.querySelector('#drop').dispatchEvent(new DragEvent('drop', {dataTransfer: dt, bubbles: true}));
    }""", base64.b64encode(images[1]).decode())
    page.wait_for_function("document.querySelector('#verdict').textContent.includes('Not one of the known classes')")
    assert "unknown" in page.get_attribute("#verdict", "class")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "gateway-page-predict.png"), full_page=True)

    # A file that is not a photo gets a clear message, not a crash.
    page.set_input_files("#file", files=[{"name": "notes.txt", "mimeType": "text/plain", "buffer": b"hi"}])
    page.wait_for_selector("#predict-error:not([hidden])")
    assert "not a JPEG or PNG" in page.inner_text("#predict-error")
    assert page.is_hidden("#result")  # the last photo's answer is not this file's
    assert_accessible(page, "classify")

    # Jobs: token, list, open, chart, confusion matrix, live progress.
    page.fill("#token", TOKEN)
    page.dispatch_event("#token", "change")
    page.click("#tab-jobs")
    page.wait_for_selector(f"#jobs tbody tr[data-job-id='{job_id}']")
    assert "85.0% (step 10)" in page.inner_text(f"#jobs tbody tr[data-job-id='{job_id}']")
    page.click(f"#jobs tbody tr[data-job-id='{job_id}']")
    page.wait_for_selector("#job:not([hidden])")
    assert page.locator("#accuracy-chart circle.s0").count() == 3
    assert page.locator("#accuracy-chart polyline.s0").count() == 1  # accuracy as a line
    assert page.locator("#accuracy-chart polyline.s1").count() == 1  # recall@5 beside it
    assert page.locator("#accuracy-chart circle.best").count() == 1
    assert page.locator("#confusion tr").count() == 1 + len(CLASSES)
    assert "(10)" in page.inner_text("#confusion-title")
    assert page.locator("#per-class tbody tr").count() == len(CLASSES)
    assert page.is_hidden("#job-tensorboard")  # no INCEPT_TENSORBOARD_URL: no link
    assert page.inner_text("#per-class tbody tr:first-child") == "daisy\t80.0%\t80.0%\t80.0%\t5"

    # The gallery: the best step's mistakes, highest loss first (tulips->daisy is
    # image 11, daisy->roses image 5), with thumbnails from the job's dataset.
    page.wait_for_function("document.querySelectorAll('#gallery figure').length === 2")
    files = page.eval_on_selector_all("#gallery figure", "fs => fs.map(f => f.dataset.file)")
    assert files == ["tulips/11.jpg", "daisy/5.jpg"]
    page.wait_for_function("[...document.querySelectorAll('#gallery img')].every(i => i.naturalWidth > 0)")
    first = page.inner_text("#gallery figure:first-child")
    assert "true: tulips" in first and "predicted: daisy 60.0%" in first
    # A confusion cell filters it: the five roses predicted as roses.
    page.click("#confusion .cell[data-true='1'][data-predicted='1']")
    page.wait_for_function("document.querySelectorAll('#gallery figure').length === 5")
    assert "roses photos predicted as roses" in page.inner_text("#gallery-title")
    assert page.get_attribute("#confusion .cell[data-true='1'][data-predicted='1']", "aria-pressed") == "true"
    page.click("#gallery-all")
    page.wait_for_function("document.querySelectorAll('#gallery figure').length === 2")
    # The most unusual photos: highest open-set score first.
    unusual = page.eval_on_selector_all("#unusual figure", "fs => fs.map(f => f.dataset.file)")
    assert unusual[:2] == ["tulips/15.jpg", "tulips/14.jpg"] and len(unusual) == 12

    time.sleep(0.5)  # let the event stream connect, then the trainer reports progress
    for step, loss in ((16, 0.2), (17, 0.123)):
        JobState(connect(redis_url)).emit(job_id, "progress", {
            "step": step, "loss": loss, "lr": 0.001, "images_per_sec": 42.0, "eta_s": 9})
    page.wait_for_function("document.querySelector('#job-progress').textContent.includes('step 17 of 20')")
    assert "42.0 images/s" in page.inner_text("#job-progress")
    assert "cached features" not in page.inner_text("#job-progress")  # a full fine-tune
    width = page.evaluate("document.querySelector('#job-progress-bar').style.width")
    assert width == "85%"
    assert page.inner_text("#phases li.current").startswith("training")
    assert "85%, ETA 9 s" in page.inner_text("#phases li.current")
    assert page.locator("#phases li.done").count() == 1  # queued; no feature pass on this path
    page.wait_for_selector("#loss-chart polyline.s0")  # loss and learning rate as curves
    assert page.locator("#lr-chart polyline.s0").count() == 1
    page.screenshot(path=str(ARTIFACTS / "gateway-page-jobs.png"), full_page=True)
    assert_accessible(page, "jobs")

    # Training ends while the last checkpoint is still being evaluated: the page
    # says so, then shows the late result when the stream delivers it and ends.
    state = JobState(connect(redis_url))
    for step in (5, 10, 15, 20):
        save_checkpoint(layout, job_id, step)
    state.set_state(job_id, "succeeded", step=20)
    page.wait_for_function("document.querySelector('#job-title').textContent.includes("
                           "'succeeded, evaluating step 20')")
    assert page.inner_text("#phases li.current").replace("\n", " ") == "evaluating step 20"
    write_json_atomic(layout.run(job_id).eval_result(20), {
        "job_id": job_id, "step": 20, "accuracy": 0.95, "recall_at_5": 1.0, "loss": 0.05,
        "class_names": CLASSES, "confusion_matrix": [[5, 0, 0], [0, 5, 0], [1, 0, 4]]})
    state.emit(job_id, "eval", {"step": 20, "accuracy": 0.95})
    page.wait_for_function("document.querySelectorAll('#accuracy-chart circle.s0').length === 4")
    page.wait_for_function("document.querySelector('#job-title').textContent.endsWith('— succeeded')")
    assert "(20)" in page.inner_text("#confusion-title")
    assert errors == []


def test_token_in_the_address_fragment_opens_the_jobs_view(gateway, browser, layout, redis_url):
    # `incept up` prints the page as /#token=...: the page keeps the token and
    # drops it from the address bar.
    job_id = _running_job(layout, redis_url)
    page = browser.new_page()
    page.goto(f"{gateway.url}/#token={TOKEN}")
    assert TOKEN not in page.evaluate("location.href")
    assert page.input_value("#token") == TOKEN
    page.click("#tab-jobs")
    page.wait_for_selector(f"#jobs tbody tr[data-job-id='{job_id}']")
    page.goto(f"{gateway.url}/")
    assert page.input_value("#token") == TOKEN  # kept for this tab (session storage)
    assert page.evaluate("localStorage.length") == 0
    other_tab = browser.new_page()  # another tab starts without it
    other_tab.goto(f"{gateway.url}/")
    assert other_tab.input_value("#token") == ""


def test_one_evaluated_step_is_a_level_line_and_head_only_rate_says_so(make_gateway, browser, layout,
                                                                        redis_url):
    gateway = make_gateway(tensorboard_url="http://127.0.0.1:6006/")
    job_id = "flowers-20260101-000001-abcdef"
    run = layout.run(job_id)
    write_json_atomic(run.spec, {"dataset": "flowers", "model_name": "tiny", "max_steps": 20})
    write_json_atomic(run.eval_result(10), {
        "job_id": job_id, "step": 10, "accuracy": 0.6, "recall_at_5": 1.0, "loss": 0.4,
        "class_names": CLASSES, "confusion_matrix": [[4, 1, 0], [0, 5, 0], [1, 0, 4]]})
    state = JobState(connect(redis_url))
    state.create(job_id, max_steps=20)
    state.set_state(job_id, "running", step=0, path="head_only", images_per_sec=6732.6)
    page = browser.new_page()
    page.goto(f"{gateway.url}/#token={TOKEN}")
    page.goto(f"{gateway.url}/#jobs/{job_id}")  # the address opens the job
    page.wait_for_selector("#job:not([hidden])")
    assert "6732.6 images/s (heads over cached features)" in page.inner_text("#job-progress")
    assert page.get_attribute("#job-tensorboard", "href") == (
        f"http://127.0.0.1:6006/?runFilter={job_id}#timeseries")
    assert page.inner_text("#phases li.current").startswith("features")
    assert page.locator("#phases li").count() == 5  # a head-only job has a feature pass
    # A trainer that reports its phase and the feature pass's progress: shown as it comes.
    time.sleep(0.5)
    state.advance_phase(job_id, "features")  # as the trainer reports its feature pass
    state.emit(job_id, "features", {"done": 50, "total": 200, "images_per_sec": 9.0, "eta_s": 30})
    page.wait_for_function("document.querySelector('#phases li.current').textContent"
                           ".includes('50 of 200 images, 9.0 img/s, ETA 30 s')")
    # The bar and the line below it follow the feature pass while it runs.
    assert page.inner_text("#job-progress") == "features: 50 of 200 images · 9.0 img/s · ETA 30 s"
    assert page.get_attribute("#job-progress-track", "aria-valuenow") == "25"
    assert page.get_attribute("#job-progress-track", "aria-label") == "feature pass progress"
    state.advance_phase(job_id, "training")
    page.wait_for_function("document.querySelector('#job-progress').textContent.startsWith('step 0')")
    assert page.get_attribute("#job-progress-track", "aria-label") == "training progress"
    level = page.locator("#accuracy-chart line.level.s0")
    assert level.count() == 1
    x1, x2 = (float(level.get_attribute(a)) for a in ("x1", "x2"))
    assert x2 - x1 > 300  # across the chart, not a dot
    assert "60%" in page.get_attribute("#accuracy-chart", "aria-label")


@pytest.mark.parametrize("protect", [True, False])
def test_page_with_and_without_protected_predictions(make_gateway, browser, images, protect):
    gateway = make_gateway(protect_predict=protect)
    page = browser.new_page()
    page.goto(gateway.url + "/")
    if protect:  # no token: a clear message where the models would be
        page.wait_for_selector("#predict-error:not([hidden])")
        assert "needs an API token" in page.inner_text("#predict-error")
        page.fill("#token", "not-the-token")
        page.dispatch_event("#token", "change")
        page.wait_for_function("document.querySelector('#predict-error').textContent"
                               ".includes('does not accept this token')")
        page.fill("#token", TOKEN)
        page.dispatch_event("#token", "change")
    page.wait_for_function("document.querySelectorAll('#model option').length === 2")
    assert page.is_hidden("#predict-error")
    page.set_input_files("#file", files=[{"name": "photo.jpg", "mimeType": "image/jpeg",
                                          "buffer": images[0]}])
    page.wait_for_selector("#result:not([hidden])")
    assert page.locator("#bars .bar").count() == len(CLASSES)
    # The jobs always need the token: without it the page says so.
    page.fill("#token", "")
    page.dispatch_event("#token", "change")
    page.click("#tab-jobs")
    page.wait_for_selector("#jobs-error:not([hidden])")
    assert "needs an API token" in page.inner_text("#jobs-error")


def _class_folders(root: Path, images_per_class: int = 5) -> Path:
    """shapes/<class>/*.jpg from generated images, plus two files the converter skips."""
    import numpy as np

    from incept.data.synthetic import class_image
    from tests.services.gateway.conftest import encode

    rng = np.random.default_rng(1)
    src = root / "shapes"
    for label, name in enumerate(CLASSES):
        (src / name).mkdir(parents=True)
        for i in range(images_per_class):
            (src / name / f"{i}.jpg").write_bytes(encode(class_image(label, 3, (40, 40), rng)))
    (src / "daisy" / "truncated.jpg").write_bytes((src / "daisy" / "0.jpg").read_bytes()[:60])
    (src / "roses" / "notes.txt").write_text("not a photo")
    return src


def _convert_queued(layout, redis_url) -> None:
    env = {**os.environ, "INCEPT_DATA_ROOT": str(layout.root), "INCEPT_REDIS_URL": redis_url}
    subprocess.run([sys.executable, "-m", "rq.cli", "worker", "--burst", "-u", redis_url,
                    "--serializer", "rq.serializers.JSONSerializer", "datasets"],
                   env=env, check=True, capture_output=True, timeout=300, cwd=ARTIFACTS.parent)


def test_upload_a_folder_and_see_the_converted_dataset(gateway, browser, layout, redis_url, tmp_path):
    src = _class_folders(tmp_path)
    page = browser.new_page(viewport={"width": 1100, "height": 900})
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(f"{gateway.url}/#token={TOKEN}")
    page.click("#tab-datasets")
    # Pick the folder: the page packs it into a tar and uploads it with progress.
    page.set_input_files("#dataset-folder", str(src))
    page.wait_for_selector("#dataset:not([hidden])")
    assert page.input_value("#dataset-name") == ""  # taken from the folder, then cleared
    assert "shapes" in page.inner_text("#dataset-title")
    assert "100%" in page.inner_text("#upload-state") or "converting" in page.inner_text("#upload-state")
    page.wait_for_function("document.querySelector('#dataset-title').textContent.includes('converting')")
    _convert_queued(layout, redis_url)  # a real rq worker converts it; the page polls
    page.wait_for_function("document.querySelector('#dataset-title').textContent.includes('ready')",
                           timeout=60_000)
    rows = page.locator("#dataset-classes tbody tr")
    assert rows.count() == len(CLASSES)
    train, val = (int(page.inner_text(f"#dataset-classes tbody tr:first-child td:nth-of-type({i})"))
                  for i in (1, 2))
    assert train + val == 5  # daisy: five good photos, the truncated one skipped
    page.wait_for_function("[...document.querySelectorAll('#dataset-classes img')]"
                           ".filter(i => i.naturalWidth > 0).length >= 3 * 4")
    skipped = page.inner_text("#dataset-skipped")
    assert "daisy/truncated.jpg" in skipped and "roses/notes.txt" in skipped
    assert "Skipped files (2)" in page.inner_text("#dataset-skipped-title")
    page.wait_for_selector("#datasets tbody tr[data-dataset='shapes']")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "gateway-page-datasets.png"), full_page=True)
    assert_accessible(page, "datasets")
    assert errors == []


def test_upload_an_archive_refused_with_a_clear_message(gateway, browser, layout):
    page = browser.new_page()
    page.goto(f"{gateway.url}/#token={TOKEN}")
    page.click("#tab-datasets")
    page.fill("#dataset-name", "junk")
    page.set_input_files("#dataset-archive", files=[{"name": "junk.zip", "mimeType": "application/zip",
                                                     "buffer": b"this is not a zip file"}])
    page.wait_for_selector("#datasets-error:not([hidden])")
    assert "not a zip or tar archive" in page.inner_text("#datasets-error")
    assert not (layout.datasets / "junk").exists()


def test_new_job_from_a_preset_with_reasons_beside_fields_then_cancel(gateway, browser, layout,
                                                                      redis_url):
    d = layout.dataset("shapes")
    d.mkdir(parents=True)
    write_json_atomic(d / "dataset.json", {"class_names": CLASSES, "counts": {"train": 9}})
    page = browser.new_page(viewport={"width": 1100, "height": 1000})
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(f"{gateway.url}/#token={TOKEN}")
    page.click("#tab-newjob")
    page.wait_for_selector("#presets button[data-preset='tiny']")
    # Every field of the spec's schema is on the form.
    from incept.spec import JobSpec

    for name in JobSpec.model_json_schema()["properties"]:
        assert page.locator(f"#field-{name}").count() == 1, name
    page.click("#presets button[data-preset='tiny']")
    assert page.input_value("#field-model_name") == "tiny"
    assert page.input_value("#field-max_steps") == "300"
    # Bad values: the gateway's reasons appear beside their fields.
    page.fill("#field-dataset", "shapes")
    page.fill("#field-learning_rate", "-1")
    page.fill("#field-epochs", "3")  # and max_steps from the preset: one too many
    page.click("#job-submit")
    page.wait_for_selector("#job-form-error:not([hidden])")
    assert "greater than 0" in page.inner_text("#err-learning_rate")
    assert page.get_attribute("#field-learning_rate", "aria-invalid") == "true"
    assert "exactly one of max_steps or epochs" in page.inner_text("#err-epochs")
    assert "exactly one of max_steps or epochs" in page.inner_text("#job-form-error")
    page.screenshot(path=str(ARTIFACTS / "gateway-page-newjob.png"), full_page=True)
    assert_accessible(page, "new job with problems")
    # Fixed: submit lands on the new job.
    page.fill("#field-learning_rate", "")
    page.fill("#field-epochs", "")
    page.click("#job-submit")
    page.wait_for_function("location.hash.startsWith('#jobs/shapes-')")
    job_id = page.evaluate("decodeURIComponent(location.hash.split('/')[1])")
    page.wait_for_selector("#job:not([hidden])")
    assert page.inner_text("#job-title") == f"{job_id} — queued"
    spec = json.loads(layout.run(job_id).spec.read_text())
    assert spec["model_name"] == "tiny" and spec["max_steps"] == 300 and spec["learning_rate"] == 0.01
    # Cancel asks first: dismissed, nothing happens; accepted, the job is cancelled.
    page.once("dialog", lambda dialog: dialog.dismiss())
    page.click("#job-cancel")
    assert JobState(connect(redis_url)).get(job_id)["state"] == "queued"
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("#job-cancel")
    page.wait_for_function("document.querySelector('#job-title').textContent.endsWith('cancelled')")
    assert JobState(connect(redis_url)).get(job_id)["state"] == "cancelled"
    assert page.is_hidden("#job-cancel")
    assert errors == []


def test_every_view_on_a_phone_by_keyboard_alone(gateway, browser, images, layout, redis_url):
    job_id = _running_job(layout, redis_url)
    page = browser.new_page(viewport={"width": 390, "height": 844}, has_touch=True, is_mobile=True)
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(f"{gateway.url}/#token={TOKEN}")
    page.wait_for_function("document.querySelectorAll('#model option').length === 2")
    # Keyboard: Tab reaches the tabs, arrows move between views, Enter follows links.
    page.focus("#tab-predict")
    for view in ("datasets", "newjob", "jobs"):
        page.keyboard.press("ArrowRight")
        assert page.evaluate("document.activeElement.id") == f"tab-{view}"
        page.wait_for_selector(f"#view-{view}:not([hidden])")
        assert page.evaluate("document.documentElement.scrollWidth") <= 390, view
        assert_accessible(page, f"{view} at 390 px")
    link = page.locator(f"#jobs tbody tr[data-job-id='{job_id}'] a")
    link.focus()
    page.keyboard.press("Enter")
    page.wait_for_selector("#job:not([hidden])")
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    assert_accessible(page, "a job at 390 px")
    page.screenshot(path=str(ARTIFACTS / "gateway-page-phone-job.png"), full_page=True)
    # Back to classify by keyboard; the photo picker is reachable and works by keyboard.
    page.focus("#tab-jobs")
    for _ in range(3):
        page.keyboard.press("ArrowLeft")
    assert page.evaluate("document.activeElement.id") == "tab-predict"
    page.focus("#file")
    assert page.evaluate("document.activeElement.id") == "file"
    page.set_input_files("#file", files=[{"name": "photo.jpg", "mimeType": "image/jpeg",
                                          "buffer": images[0]}])
    page.wait_for_selector("#result:not([hidden])")
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    assert_accessible(page, "classify at 390 px")
    page.screenshot(path=str(ARTIFACTS / "gateway-page-phone-predict.png"), full_page=True)
    assert errors == []


def test_models_view_pins_and_unpins_a_version(make_gateway, browser, layout):
    from tests.services.gateway.test_gateway_registry import second_version

    gateway = make_gateway(model_poll_s=0.1)
    second_version(layout)
    page = browser.new_page(viewport={"width": 1100, "height": 800})
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(f"{gateway.url}/#token={TOKEN}")
    page.click("#tab-models")
    row = "#models [data-model='flowers'] tr[data-version='{}']"
    page.wait_for_function(f"document.querySelector(\"{row.format(2)} .state\")?.textContent === 'serving'")
    assert "accuracy 0.9 beats 0.8" in page.inner_text(row.format(2))
    assert "flowers-20260101-000000-abcdef, step 20" in page.inner_text(row.format(2))
    assert "newest version serves" in page.inner_text("#models [data-model='flowers']")
    # Roll back to version 1: the backend loads it, the page says so.
    page.click(f"{row.format(1)} button.pin")
    page.wait_for_function(f"document.querySelector(\"{row.format(1)} .state\")?.textContent === 'serving'")
    assert "1 (pinned)" in page.inner_text(row.format(1))
    assert json.loads((layout.model("flowers") / "serving.json").read_text())["pinned"] == 1
    page.screenshot(path=str(ARTIFACTS / "gateway-page-models.png"), full_page=True)
    assert_accessible(page, "models")
    # Unpin: the newest serves again.
    page.click("#models [data-model='flowers'] button.unpin")
    page.wait_for_function(f"document.querySelector(\"{row.format(2)} .state\")?.textContent === 'serving'")
    assert not (layout.model("flowers") / "serving.json").exists()
    assert errors == []


def test_readme_shows_each_view_with_a_small_screenshot():
    import re

    readme = (ARTIFACTS.parent / "README.md").read_text()
    shots = re.findall(r"!\[[^\]]*\]\((docs/page-[a-z-]+\.(?:png|jpg))\)", readme)
    assert {s.split("page-")[1].split(".")[0] for s in shots} >= {
        "classify", "datasets", "newjob", "jobs", "models"}
    for shot in shots:
        assert (ARTIFACTS.parent / shot).stat().st_size < 200_000, shot
