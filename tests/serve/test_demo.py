"""The demo page (scripts/demo.py) as a real server process: driven by gradio_client and by a real headless
Chromium, and published as a Space to the local Hub, whose app.py is then started and queried too."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import HOTDOG_MINI, REPO_ROOT, run_script
from finished_run import LABELS, make_finished_run

from hub_server import free_port

# A Gradio server, a browser and a Space push (a minute and more): CI's first step runs them, its floors step
# does not.
pytestmark = pytest.mark.slow

pytest.importorskip("gradio", reason='the demo extra: pip install -e ".[demo]"')

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]
PHOTO = sorted((HOTDOG_MINI / "val" / "hotdog").glob("*.jpg"))[0]  # a real photo, uploaded as a person would


def serve(command: list[str], env: dict, log: Path, port: int) -> subprocess.Popen:
    """Start `command` (a gradio app on `port`) and wait until it answers; its output goes to `log`."""
    env = {**env, "GRADIO_ANALYTICS_ENABLED": "False", "GRADIO_SERVER_PORT": str(port)}
    process = subprocess.Popen(command, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env, cwd=REPO_ROOT)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"{command} exited {process.returncode}:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5):
                return process
        except OSError:
            time.sleep(0.5)
    process.terminate()
    raise AssertionError(f"{command} did not answer within 180 s:\n{log.read_text()}")


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return make_finished_run(tmp_path_factory.mktemp("demo") / "run")


@pytest.fixture(scope="module")
def demo_url(run, tmp_path_factory):
    port = free_port()
    log = tmp_path_factory.mktemp("demo-log") / "demo.log"
    process = serve([sys.executable, str(REPO_ROOT / "scripts" / "demo.py"), str(run), "--port", str(port)],
                    os.environ.copy(), log, port)
    yield f"http://127.0.0.1:{port}/"
    stop(process)


def predict_py(model, image: Path, tmp_path: Path, env=None) -> dict[str, float]:
    """scripts/predict.py's probability of every label for `image`."""
    output = tmp_path / "predict.jsonl"
    run_script("predict.py", model, image, "--top-k", len(LABELS), "--output", output, env=env)
    row = json.loads(output.read_text())
    return dict(zip(row["labels"], row["probabilities"]))


def classify_with_client(url: str, image: Path) -> dict[str, float]:
    from gradio_client import Client, handle_file

    result = Client(url, verbose=False).predict(handle_file(str(image)), api_name="/classify")
    return {entry["label"]: entry["confidence"] for entry in result["confidences"]}


def test_the_page_gives_predict_py_probabilities_and_shows_the_card_and_eval_examples(run, demo_url, tmp_path):
    expected = predict_py(run, PHOTO, tmp_path)
    shown = classify_with_client(demo_url, PHOTO)
    assert sorted(shown) == sorted(LABELS)
    assert shown == pytest.approx(expected, abs=1e-6)
    with urllib.request.urlopen(demo_url + "config") as response:
        config = json.loads(response.read())
    texts = " ".join(str(component.get("props", {}).get("value")) for component in config["components"])
    accuracy = json.loads((run / "metrics.json").read_text())["selected"]["eval"]["accuracy"]
    assert "**Task:** image-classification" in texts and f"**Accuracy:** {accuracy:.4f}" in texts
    examples = [component for component in config["components"] if component.get("type") == "dataset"]
    assert examples and "hot dog_0.jpg" in json.dumps(examples[0]["props"])  # from the run's eval split


def test_a_real_browser_uploads_a_photo_and_sees_its_label(run, demo_url, tmp_path):
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing: .ci/run installs Debian's chromium package")
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    expected = predict_py(run, PHOTO, tmp_path)
    top_label = max(expected, key=expected.get)
    screenshot = tmp_path / "demo.png"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page()
            page.goto(demo_url)
            page.locator("input[type=file]").first.set_input_files(str(PHOTO))
            heading = page.get_by_test_id("label-output-value")
            heading.wait_for(timeout=60_000)
            page.wait_for_function("([el, text]) => el.textContent.trim() === text",
                                   arg=[heading.element_handle(), top_label], timeout=60_000)
            page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()
    print(f"screenshot: {screenshot}")
    assert screenshot.stat().st_size > 10_000


def test_the_space_holds_exactly_its_files_and_serves_the_model_by_its_hub_name(run, hub, hub_env, tmp_path):
    from hf_finetune.publish.space import SPACE_FILES

    run_script("push.py", run, "tester/demo-model", env=hub_env)
    pushed = run_script("demo.py", "tester/demo-model", "--push-space", "tester/demo-space", env=hub_env).stdout
    assert "/spaces/tester/demo-space/commit/" in pushed
    files = hub.files("tester/demo-space", repo_type="space")
    assert sorted(files) == sorted(SPACE_FILES)
    assert "MODEL_ID = 'tester/demo-model'" in files["app.py"].decode()
    readme = files["README.md"].decode()
    assert "sdk: gradio" in readme and "app_file: app.py" in readme and "- tester/demo-model" in readme
    assert files["requirements.txt"].decode().split() == ["torch", "timm>=1.0.20"]

    space = tmp_path / "space"  # the Space as the Hub serves it, started the way Spaces start it
    space.mkdir()
    for name, data in files.items():
        (space / name).write_bytes(data)
    port = free_port()
    assert "hf_finetune." not in files["app.py"].decode()  # the Space has no hf_finetune to import
    process = serve([sys.executable, str(space / "app.py")], hub_env, tmp_path / "space.log", port)
    try:
        shown = classify_with_client(f"http://127.0.0.1:{port}/", PHOTO)
    finally:
        stop(process)
    expected = predict_py(run, PHOTO, tmp_path)
    # timm's PIL eval transform, not hf_finetune's uint8 one: the same ranking, probabilities within rounding.
    assert max(shown, key=shown.get) == max(expected, key=expected.get)
    assert shown == pytest.approx(expected, abs=0.02)


def test_a_space_for_a_local_folder_is_refused_with_one_line(run, hub_env):
    result = run_script("demo.py", run, "--push-space", "tester/nope", env=hub_env, check=False)
    assert result.returncode == 2 and result.stderr.strip().startswith("error:")
    assert "scripts/push.py" in result.stderr and "Traceback" not in result.stderr
