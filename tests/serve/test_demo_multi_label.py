"""The demo page and its Space for a multi-label model (issue 23.3): sigmoid scores, one per label, as bars, and
the labels at or above their thresholds, with examples from the eval manifest; the Space's app.py reads
problem_type and thresholds from config.json."""

from __future__ import annotations

import json
import os
import sys
import urllib.request
from pathlib import Path

import pytest
from conftest import REPO_ROOT, run_script
from finished_run import MULTI_LABELS, make_finished_multi_label_run
from test_demo import CHROMIUM, CHROMIUM_FLAGS, serve, stop

from hub_server import free_port

pytestmark = pytest.mark.slow  # a trained run, Gradio servers and a Space push

pytest.importorskip("gradio", reason='the demo extra: pip install -e ".[demo]"')


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    run, data = make_finished_multi_label_run(tmp_path_factory.mktemp("demo-multi-label") / "run")
    return run, sorted((data / "val").glob("*.jpg"))[6]  # "red green blue": at least one label decided present


def predict_py(model, image: Path, tmp_path: Path, env=None) -> tuple[dict[str, float], list[str]]:
    """scripts/predict.py's score of every label for `image`, and the labels it predicts present."""
    output = tmp_path / "predict.jsonl"
    run_script("predict.py", model, image, "--top-k", len(MULTI_LABELS), "--output", output, env=env)
    row = json.loads(output.read_text())
    return dict(zip(row["labels"], row["probabilities"])), row["predicted"]


def classify_with_client(url: str, image: Path) -> tuple[dict[str, float], str]:
    from gradio_client import Client, handle_file

    scores, decided = Client(url, verbose=False).predict(handle_file(str(image)), api_name="/classify")
    return {entry["label"]: entry["confidence"] for entry in scores["confidences"]}, decided


def decided_labels(text: str) -> list[str]:
    """The label names of the page's 'Predicted labels' text ('red: 0.9120 (threshold 0.4100)' lines)."""
    return [] if text.startswith("none") else [line.split(":")[0] for line in text.splitlines()]


def test_the_page_gives_predict_py_sigmoid_scores_and_decisions(trained, tmp_path):
    run, image = trained
    expected, predicted = predict_py(run, image, tmp_path)
    port = free_port()
    process = serve([sys.executable, str(REPO_ROOT / "scripts" / "demo.py"), str(run), "--port", str(port)],
                    os.environ.copy(), tmp_path / "demo.log", port)
    try:
        scores, decided = classify_with_client(f"http://127.0.0.1:{port}/", image)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/config") as response:
            page = json.loads(response.read())
    finally:
        stop(process)
    texts = " ".join(str(component.get("props", {}).get("value")) for component in page["components"])
    assert f"**mAP:** {json.loads((run / 'metrics.json').read_text())['selected']['eval']['map']:.4f}" in texts
    examples = [component for component in page["components"] if component.get("type") == "dataset"]
    assert examples and "0.jpg" in json.dumps(examples[0]["props"])  # the first rows of the eval manifest
    assert sorted(scores) == sorted(MULTI_LABELS)
    assert scores == pytest.approx(expected, abs=1e-6)
    assert abs(sum(scores.values()) - 1) > 1e-3  # a sigmoid per label, not a softmax
    assert predicted and sorted(decided_labels(decided)) == sorted(predicted)
    thresholds = dict(zip(json.loads((run / "config.json").read_text())["label_names"],
                          json.loads((run / "config.json").read_text())["thresholds"]))
    for label in predicted:
        assert f"{label}: {expected[label]:.4f} (threshold {thresholds[label]:.4f})" in decided


def test_the_space_scores_with_a_sigmoid_and_the_thresholds_of_config_json(trained, hub, hub_env, tmp_path):
    run, image = trained
    run_script("push.py", run, "tester/multi-label-model", env=hub_env)
    run_script("demo.py", "tester/multi-label-model", "--push-space", "tester/multi-label-space", env=hub_env)
    files = hub.files("tester/multi-label-space", repo_type="space")
    space = tmp_path / "space"  # the Space as the Hub serves it, started the way Spaces start it
    space.mkdir()
    for name, data in files.items():
        (space / name).write_bytes(data)
    port = free_port()
    process = serve([sys.executable, str(space / "app.py")], hub_env, tmp_path / "space.log", port)
    try:
        scores, decided = classify_with_client(f"http://127.0.0.1:{port}/", image)
    finally:
        stop(process)
    expected, _ = predict_py(run, image, tmp_path)
    # timm's PIL eval transform, not hf_finetune's uint8 one: the scores within rounding.
    assert scores == pytest.approx(expected, abs=0.02)
    assert abs(sum(scores.values()) - 1) > 1e-3  # a sigmoid per label, not a softmax
    config = json.loads((run / "config.json").read_text())
    thresholds = dict(zip(config["label_names"], config["thresholds"]))
    assert sorted(decided_labels(decided)) == sorted(label for label in scores if scores[label] >= thresholds[label])


def test_a_real_browser_uploads_a_mosaic_and_sees_its_decided_labels(trained, tmp_path):
    """Headless Debian chromium (Playwright): the page's 'Predicted labels' box lists what predict.py decides."""
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing: .ci/run installs Debian's chromium package")
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)")
    import re

    from playwright.sync_api import expect, sync_playwright

    run, image = trained
    expected, predicted = predict_py(run, image, tmp_path)
    port, screenshot = free_port(), tmp_path / "demo-multi-label.png"
    process = serve([sys.executable, str(REPO_ROOT / "scripts" / "demo.py"), str(run), "--port", str(port)],
                    os.environ.copy(), tmp_path / "demo.log", port)
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
            try:
                page = browser.new_page()
                page.goto(f"http://127.0.0.1:{port}/")
                page.locator("input[type=file]").first.set_input_files(str(image))
                box = page.locator("textarea").last  # the 'Predicted labels' box (Gradio gives it no aria label)
                for label in predicted:
                    expect(box).to_have_value(re.compile(rf"(^|\n){label}: {expected[label]:.4f} "), timeout=60_000)
                decided = box.input_value()
                page.screenshot(path=str(screenshot), full_page=True)
            finally:
                browser.close()
    finally:
        stop(process)
    print(f"screenshot: {screenshot}")
    assert sorted(decided_labels(decided)) == sorted(predicted) and screenshot.stat().st_size > 10_000
