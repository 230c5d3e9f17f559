"""ONNX export: checked against onnxruntime, all-or-nothing, published in one commit, usable with --onnx."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO_ROOT, run_script
from finished_run import LABELS, make_finished_run
from paths import HOTDOG_MINI, LITE0_WEIGHTS

from hf_finetune.publish import export
from hf_finetune.errors import UserError
from hf_finetune.publish.export import export_onnx
from hf_finetune.serve.predict import load_classifier, predict

ort = pytest.importorskip("onnxruntime")
REAL_IMAGES = sorted((HOTDOG_MINI / "val" / "hotdog").iterdir())[:3]


def _onnx_logits(folder: Path, batch: torch.Tensor) -> np.ndarray:
    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    return session.run(None, {"pixel_values": batch.numpy()})[0]


@pytest.mark.parametrize("model_name", ["test_resnet", "test_efficientnet", "test_vit"])
def test_export_runs_in_onnxruntime_like_pytorch(model_name, tmp_path):
    run = make_finished_run(tmp_path / "run", model_name=model_name)
    result = export_onnx(str(run), check_images=REAL_IMAGES)
    assert result.checked_images == 3 and result.max_abs_difference <= export.ATOL
    config = json.loads((run / "preprocessor.json").read_text())
    model = load_classifier(run).model
    assert config["label_names"] == LABELS
    assert config["input_size"] == list(model.pretrained_cfg["input_size"]) == [3, 160, 160]
    assert (config["mean"], config["interpolation"]) == (list(model.pretrained_cfg["mean"]),
                                                         model.pretrained_cfg["interpolation"])
    # A batch size the export never saw: the batch axis is dynamic.
    batch = torch.randn(5, 3, 160, 160, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model(batch).numpy()
    np.testing.assert_allclose(_onnx_logits(run, batch), expected, rtol=export.RTOL, atol=export.ATOL)
    assert not list(run.glob(".onnx-export-*"))  # the staging folder is gone


def test_a_failed_check_keeps_nothing(tmp_path, monkeypatch):
    run = make_finished_run(tmp_path / "run")
    before = sorted(path.name for path in run.iterdir())
    # No tolerance at all: onnxruntime's float rounding (~1e-7 here) now fails the check, as a wrong export would.
    monkeypatch.setattr(export, "ATOL", 0.0)
    monkeypatch.setattr(export, "RTOL", 0.0)
    with pytest.raises(UserError, match="onnxruntime's logits differ from PyTorch's .* nothing was written"):
        export_onnx(str(run), check_images=[])
    assert sorted(path.name for path in run.iterdir()) == before


def test_export_without_the_extra_is_one_line_naming_it(tmp_path):
    run = make_finished_run(tmp_path / "run")
    # onnxruntime made unimportable in the script's own process, as on a machine without the extra.
    code = ("import runpy, sys; sys.modules['onnxruntime'] = None; "
            f"sys.argv = ['export.py', {str(run)!r}, '--format', 'onnx']; "
            f"runpy.run_path({str(REPO_ROOT / 'scripts' / 'export.py')!r}, run_name='__main__')")
    import subprocess

    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        'error: onnxruntime is not installed: ONNX export and --onnx need the onnx extra, `pip install -e ".[onnx]"`']
    assert not (run / "model.onnx").exists()


def test_export_script_push_adds_onnx_and_card_in_one_commit(hub, hub_env, tmp_path):
    from hf_finetune.publish.hub import push_to_hub

    run = make_finished_run(tmp_path / "run")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_TOKEN", hub_env["HF_TOKEN"])
        push_to_hub(run, "tester/export-model")
    commits_before = len(hub.commits("tester/export-model"))
    result = run_script("export.py", run, "--format", "onnx", "--check-images", *REAL_IMAGES,
                        "--push-to-hub", "tester/export-model", env=hub_env)
    assert "pushed: " in result.stdout and "3 real image(s)" in result.stdout
    commits = hub.commits("tester/export-model")
    assert len(commits) == commits_before + 1
    # One commit: the ONNX pair added and the card replaced, the model itself untouched.
    added, before = commits[0]["files"], commits[1]["files"]
    assert sorted(added) == sorted({*before, "model.onnx", "preprocessor.json"})
    assert added["README.md"] != before["README.md"] and added["model.safetensors"] == before["model.safetensors"]
    files = hub.files("tester/export-model")
    assert files["model.onnx"] == (run / "model.onnx").read_bytes()
    assert "onnxruntime.InferenceSession" in files["README.md"].decode()
    assert "onnxruntime" not in (REPO_ROOT / "model_cards" / "template.md").read_text().split("{%- if onnx %}")[0]
    # The pushed export runs by repo id with --onnx, and agrees with PyTorch on real photos.
    printed = run_script("predict.py", "tester/export-model", *REAL_IMAGES, "--onnx", "--top-k", "3",
                         env=hub_env).stdout.splitlines()
    expected = predict(load_classifier(run), REAL_IMAGES, top_k=3)
    for index, top in enumerate(expected):
        rows = [line.split(maxsplit=1) for line in printed[4 * index + 1: 4 * index + 4]]
        assert [label for _, label in rows] == [label for label, _ in top]
        assert [float(p) for p, _ in rows] == pytest.approx([p for _, p in top], abs=1e-4)


def test_export_from_a_hub_id_needs_an_output_dir(hub, tmp_path):
    with pytest.raises(UserError, match="--output-dir"):
        export_onnx("timm/tf_efficientnet_lite0.in1k")
    result = export_onnx("timm/tf_efficientnet_lite0.in1k", tmp_path / "lite0", check_images=REAL_IMAGES)
    # Real ImageNet weights at 224 px: logits of magnitude ~10 still within the stated tolerance.
    assert result.max_abs_difference <= export.ATOL
    config = json.loads((tmp_path / "lite0" / "preprocessor.json").read_text())
    assert config["input_size"] == [3, 224, 224] and config["crop_pct"] == 0.875
    assert len(config["label_names"]) == 1000 and LITE0_WEIGHTS.is_dir()


@pytest.mark.slow
def test_lite0_finetuned_on_hotdog_mini_exports_and_predicts_the_same_with_onnx(tmp_path):
    output = tmp_path / "out"
    run_script("finetune.py", "--model", f"local-dir:{LITE0_WEIGHTS}", "--data-dir", HOTDOG_MINI, "--epochs", "1",
               "--img-size", "160", "--batch-size", "32", "--freeze-epochs", "1", "--num-workers", "0",
               "--output-dir", output)
    # The run's own data folder supplies the real images the export is checked on.
    exported = run_script("export.py", output, "--format", "onnx").stdout
    assert "3 real image(s)" in exported
    val = HOTDOG_MINI / "val"
    common = ["--top-k", "2", "--batch-size", "16"]
    run_script("predict.py", output, val, "--output", tmp_path / "torch.jsonl", *common)
    run_script("predict.py", output, val, "--output", tmp_path / "onnx.jsonl", "--onnx", *common)
    rows = [[json.loads(line) for line in (tmp_path / name).read_text().splitlines()]
            for name in ("torch.jsonl", "onnx.jsonl")]
    assert len(rows[0]) == len(rows[1]) == 50
    for ours, theirs in zip(*rows):
        assert ours["path"] == theirs["path"] and ours["labels"] == theirs["labels"]
        assert ours["probabilities"] == pytest.approx(theirs["probabilities"], abs=1e-4)


def test_an_export_records_its_weights_and_a_stale_one_is_refused(tmp_path):
    import hashlib

    from hf_finetune.serve.onnx_model import load_onnx_classifier

    run = make_finished_run(tmp_path / "run", seed=0)
    export_onnx(str(run), check_images=[])
    config = json.loads((run / "preprocessor.json").read_text())
    assert config["weights_sha256"] == hashlib.sha256((run / "model.safetensors").read_bytes()).hexdigest()
    load_onnx_classifier(run)  # the export of these very weights
    make_finished_run(run, seed=1)  # retrained into the same folder: the export is now of the old weights
    with pytest.raises(UserError, match="model.onnx was exported from other weights than .*model.safetensors.*"
                                        "scripts/export.py"):
        load_onnx_classifier(run)
    result = run_script("predict.py", run, REAL_IMAGES[0], "--onnx", check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert [line for line in result.stderr.splitlines() if line.startswith("error:")] == \
        result.stderr.strip().splitlines()[-1:]
    assert "exported from other weights" in result.stderr


def _pushed_with_export(hub_env, run: Path, repo_id: str) -> None:
    from hf_finetune.publish.hub import push_onnx, push_to_hub

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_TOKEN", hub_env["HF_TOKEN"])
        push_to_hub(run, repo_id)
        export_onnx(str(run), check_images=[])
        push_onnx(run, repo_id, run)


def test_a_push_of_other_weights_removes_the_stale_export_in_the_same_commit(hub, hub_env, tmp_path):
    from hf_finetune.publish.hub import PUSHED_FILES, push_to_hub

    run = make_finished_run(tmp_path / "run", seed=0)
    _pushed_with_export(hub_env, run, "tester/stale-export")
    assert {"model.onnx", "preprocessor.json"} <= set(hub.files("tester/stale-export"))
    make_finished_run(run, seed=1)  # retrained: the folder still holds the old export
    commits_before = len(hub.commits("tester/stale-export"))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_TOKEN", hub_env["HF_TOKEN"])
        push_to_hub(run, "tester/stale-export")
    commits = hub.commits("tester/stale-export")
    assert len(commits) == commits_before + 1  # the new model in and the old export out, in one commit
    assert sorted(commits[0]["files"]) == sorted(set(PUSHED_FILES) - {"per_label_ap.png"})  # a single-label run
    assert hub.files("tester/stale-export")["model.safetensors"] == (run / "model.safetensors").read_bytes()
    assert "onnxruntime.InferenceSession" not in (run / "README.md").read_text()  # the card shows no export


def test_a_push_of_the_exported_weights_keeps_the_export_and_its_card(hub, hub_env, tmp_path):
    from hf_finetune.publish.hub import push_to_hub

    run = make_finished_run(tmp_path / "run", seed=0)
    _pushed_with_export(hub_env, run, "tester/kept-export")
    exported = hub.files("tester/kept-export")["model.onnx"]
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_TOKEN", hub_env["HF_TOKEN"])
        push_to_hub(run, "tester/kept-export")  # the same weights again (e.g. a re-push)
    files = hub.files("tester/kept-export")
    assert files["model.onnx"] == exported
    assert "onnxruntime.InferenceSession" in files["README.md"].decode()


def test_an_export_of_other_weights_than_the_repos_is_not_pushed(hub, hub_env, tmp_path):
    from hf_finetune.publish.hub import push_onnx, push_to_hub

    run = make_finished_run(tmp_path / "run", seed=0)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_TOKEN", hub_env["HF_TOKEN"])
        push_to_hub(run, "tester/other-weights")
        make_finished_run(run, seed=1)  # trained again, not pushed
        export_onnx(str(run), check_images=[])
        commits_before = len(hub.commits("tester/other-weights"))
        with pytest.raises(UserError, match="tester/other-weights holds other weights than the export .*"
                                            "scripts/push.py"):
            push_onnx(run, "tester/other-weights", run)
    assert len(hub.commits("tester/other-weights")) == commits_before
    assert "model.onnx" not in hub.files("tester/other-weights")
