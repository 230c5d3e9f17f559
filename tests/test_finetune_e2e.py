"""End to end through scripts/finetune.py, as a user runs it: tiny folders first, then real photos."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from conftest import HOTDOG_MINI, LITE0_WEIGHTS, REPO_ROOT, make_image_folder, run_script

TINY = ["--model", "test_resnet", "--no-pretrained", "--batch-size", "4", "--num-workers", "0"]
TINY_D2L = [*TINY, "--recipe", "d2l"]  # the chapter's constant learning rates


def _metrics(output_dir):
    return json.loads((output_dir / "metrics.json").read_text())


def test_one_epoch_saves_a_model_that_reloads_with_identical_logits(tiny_folder, tmp_path):
    out = tmp_path / "out"
    # --calibrate none: the saved weights are the checkpoint's bit for bit (tests/evaluate/test_calibration_run.py
    # checks the calibrated head).
    result = run_script("finetune.py", "--data-dir", tiny_folder, *TINY, "--epochs", "1", "--calibrate", "none",
                        "--output-dir", out)
    assert "loss " in result.stdout and "train acc" in result.stdout and "examples/sec on [cpu]" in result.stdout
    for name in ("config.json", "model.safetensors", "metrics.json", "training_curves.png", "run_config.json"):
        assert (out / name).is_file(), name
    reloaded = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    assert reloaded.pretrained_cfg["label_names"] == ["cat", "dog"]
    # The checkpoint holds the same final weights through Accelerate's own writer: same logits.
    from safetensors.torch import load_file

    reference = timm.create_model("test_resnet", num_classes=2)
    reference.load_state_dict(load_file(out / "checkpoints" / "epoch-0001-step-000000" / "model.safetensors"))
    images = torch.randn(3, 3, 160, 160, generator=torch.Generator().manual_seed(0))
    assert torch.equal(reloaded(images), reference.eval()(images))
    metrics = _metrics(out)
    assert metrics["final"]["eval_count"] == 8 and len(metrics["history"]) == 1
    run_config = json.loads((out / "run_config.json").read_text())
    # The default recipe on a random backbone (issue 18.5): no layer-wise LR decay, so one backbone group, then the
    # head at 10x the base LR; the run records why (a pretrained one gets a group per depth:
    # tests/model/test_techniques.py).
    backbone, head = run_config["param_groups"]
    assert head["name"] == "head" and not backbone["name"].startswith("backbone.depth")
    assert head["lr"] == pytest.approx(10 * run_config["config"]["lr"]) == pytest.approx(10 * backbone["lr"])
    assert "layer_decay" in run_config["recipe"]["adjusted"]


@pytest.mark.slow
def test_compile_trains_the_same_model_as_eager_and_saves_its_own_parameter_names(tiny_folder, tmp_path):
    """--compile goes through Accelerate's dynamo_backend (inductor; ~1 min to compile on 2 cores)."""
    from safetensors.torch import load_file

    weights, metrics = {}, {}
    for flags in ([], ["--compile"]):
        out = tmp_path / ("compiled" if flags else "eager")
        # fp32: the tolerance below is for fused float32 kernels, not for bf16's 8-bit mantissa.
        run_script("finetune.py", "--data-dir", tiny_folder, *TINY, "--epochs", "1", "--batch-size", "8", *flags,
                   "--mixed-precision", "no",
                   "--output-dir", out)
        weights[bool(flags)], metrics[bool(flags)] = load_file(out / "model.safetensors"), _metrics(out)["final"]
    assert weights[True].keys() == weights[False].keys()  # no "_orig_mod." prefixes from the compiled wrapper
    for name, tensor in weights[False].items():  # inductor fuses kernels: float rounding differs, nothing else
        assert torch.allclose(weights[True][name].float(), tensor.float(), rtol=1e-3, atol=1e-4), name
    assert metrics[True]["train_loss"] == pytest.approx(metrics[False]["train_loss"], rel=1e-3)
    assert metrics[True]["eval_acc"] == metrics[False]["eval_acc"]


def test_resume_latest_continues_after_the_last_checkpoint(tiny_folder, tmp_path):
    out = tmp_path / "out"
    run_script("finetune.py", "--data-dir", tiny_folder, *TINY_D2L, "--epochs", "1", "--output-dir", out)
    result = run_script("finetune.py", "--data-dir", tiny_folder, *TINY_D2L, "--epochs", "2", "--output-dir", out,
                        "--resume", "latest")
    assert "resumed from" in result.stdout and "epoch 1:" not in result.stdout and "epoch 2:" in result.stdout
    assert [row["epoch"] for row in _metrics(out)["history"]] == [1, 2]
    assert sorted(p.name for p in (out / "checkpoints").iterdir() if not p.name.startswith("best-")) == [
        "epoch-0001-step-000000", "epoch-0002-step-000000"]
    assert len(list((out / "checkpoints").glob("best-epoch-*"))) == 1  # the best weights, the one folder kept
    # A changed --lr would not be the run the command names: refused before anything trains.
    result = run_script("finetune.py", "--data-dir", tiny_folder, *TINY_D2L, "--epochs", "3", "--lr", "0.1",
                        "--output-dir", out, check=False)
    trained_lr = json.loads((out / "run_config.json").read_text())["config"]["lr"]  # d2l's, scaled to the batch
    assert result.returncode == 2 and f"--lr {trained_lr:g} (now 0.1)" in result.stderr
    assert "--resume none" in result.stderr
    assert [row["epoch"] for row in _metrics(out)["history"]] == [1, 2]


@pytest.mark.parametrize("args, message", [
    (["--data-dir", "/nonexistent/photos"], "no such folder"),
    (["--model", "resnet19x"], "closest timm names: resnet18"),
    (["--batch-size", "0"], "--batch-size must be at least 1"),
    (["--optimizer", "adam"], "invalid choice"),
    (["--select-metric", "f1"], "--select-metric f1: unknown; use one of eval_loss, accuracy, macro_f1"),
    (["--select-metric", "top5"], "--select-metric top5 needs at least 5 classes, the data has 2"),
    (["--patience", "0"], "--patience must be at least 1 epoch"),
    (["--tta", "five-crop"], "invalid choice"),
])
def test_bad_input_is_one_clear_line_not_a_traceback(tiny_folder, tmp_path, args, message):
    argv = ["--data-dir", tiny_folder, *TINY, "--output-dir", tmp_path / "out"]
    result = run_script("finetune.py", *argv, *args, check=False)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out" / "model.safetensors").exists()


def test_single_class_folder_is_a_clear_error(tmp_path):
    folder = make_image_folder(tmp_path / "one", classes=("only",), per_class=(3, 1))
    result = run_script("finetune.py", "--data-dir", folder, *TINY, "--output-dir", tmp_path / "out", check=False)
    assert result.returncode == 2 and "at least two" in result.stderr and "Traceback" not in result.stderr


def test_default_command_offline_fails_fast_naming_data_dir(tmp_path):
    result = run_script("finetune.py", "--output-dir", tmp_path / "out", check=False, timeout=120,
                        env={**os.environ, "HF_FINETUNE_CACHE": str(tmp_path / "cache")})
    assert result.returncode == 2 and "--data-dir" in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_readmes_main_command_offline_is_one_line_from_us(tmp_path):
    """README: `accelerate config default` once, then `accelerate launch -q scripts/finetune.py`. Offline, the
    only line of ours is the error, and the launcher adds no traceback."""
    accelerate = str(Path(sys.executable).parent / "accelerate")  # the console script of this environment
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf_home"), "HF_FINETUNE_CACHE": str(tmp_path / "cache")}
    env.pop("OMP_NUM_THREADS", None)
    subprocess.run([accelerate, "config", "default"], env=env, check=True, capture_output=True, timeout=120)
    result = subprocess.run([accelerate, "launch", "-q", str(REPO_ROOT / "scripts" / "finetune.py"), "--output-dir",
                             str(tmp_path / "out")], env=env, capture_output=True, text=True, timeout=300)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode != 0 and lines, result.stderr
    assert lines[-1].startswith("error: could not download") and "--data-dir" in lines[-1]
    assert "Traceback" not in result.stderr and "CalledProcessError" not in result.stderr
    # What else may show is accelerate's notice that it chose the CPU thread count (CPU-only machines; the README
    # says how to silence it), never its "values were not passed" list of defaults; at the floor versions the
    # stack's own imports add a torch.jit deprecation warning.
    assert all("num_cpu_threads_per_process" in line or line.startswith(("The following values", "To avoid"))
               or "Warning: " in line or line.strip() == "warnings.warn(" for line in lines[:-1]), lines
    assert "--num_processes` was set" not in result.stderr


def test_no_eval_split_uses_a_seeded_holdout(tmp_path):
    folder = make_image_folder(tmp_path / "flat", classes=("a", "b"), per_class=(10,), splits=(None,))
    out = tmp_path / "out"
    run_script("finetune.py", "--data-dir", folder, *TINY, "--epochs", "1", "--val-fraction", "0.2",
               "--output-dir", out)
    run_config = json.loads((out / "run_config.json").read_text())
    assert run_config["data"]["eval_split"] == "holdout" and run_config["data"]["eval_size"] == 4
    assert _metrics(out)["final"]["eval_count"] == 4


def test_two_processes_count_every_eval_image_once_and_push_once(tmp_path, hub, hub_env):
    folder = make_image_folder(tmp_path / "data", per_class=(8, 5))  # 10 eval images: uneven over 2 x 4
    common = ["--data-dir", folder, *TINY, "--batch-size", "8", "--epochs", "1"]
    run_script("finetune.py", *common, "--output-dir", tmp_path / "one")
    # The main process pushes alone, after every process has left the process group.
    result = run_script("finetune.py", *common, "--output-dir", tmp_path / "two", "--push-to-hub", "tester/two",
                        env=hub_env, processes=2)
    pushed, created = hub.commits("tester/two")  # one commit of ours on the repo's initial one
    assert result.stdout.count("pushed: ") == 1 and created["parent"] is None
    assert {"model.safetensors", "config.json", "README.md"} <= set(pushed["files"])
    one, two = _metrics(tmp_path / "one"), _metrics(tmp_path / "two")
    assert two["num_processes"] == 2 and two["devices"] == ["cpu", "cpu"]
    assert one["final"]["eval_count"] == two["final"]["eval_count"] == 10
    run_config = json.loads((tmp_path / "two" / "run_config.json").read_text())
    assert run_config["per_device_batch_size"] == 4


def test_bad_data_found_by_the_main_process_stops_every_process_with_the_same_line(tmp_path):
    folder = make_image_folder(tmp_path / "data", per_class=(8, 4))
    (folder / "train" / "cat" / "broken.jpg").write_bytes(b"not a jpeg")
    result = run_script("finetune.py", "--data-dir", folder, *TINY, "--batch-size", "8", "--output-dir",
                        tmp_path / "out", check=False, processes=2)
    assert result.returncode != 0
    # Each rank says why (only rank 0 scanned the images), none dies at a barrier with a gloo error.
    assert result.stderr.count("error: 1 of 17 train images are unreadable") == 2, result.stderr
    assert "gloo" not in result.stderr.lower() and "DistBackendError" not in result.stderr
    assert "exitcode  : 2" in result.stderr  # torchrun's own summary of the failed ranks


LITE0 = ["--model", f"local-dir:{LITE0_WEIGHTS}", "--data-dir", HOTDOG_MINI, "--img-size", "160",
         "--epochs", "4", "--batch-size", "32", "--lr", "2e-3", "--momentum", "0.9", "--mixed-precision", "auto"]


@pytest.mark.slow
def test_hotdog_mini_pretrained_beats_scratch(tmp_path):
    """Real photos, real ImageNet weights: fine-tuning reaches >= 0.85 and scratch is >= 0.15 below.

    200 training photos are two SGD steps an epoch at the chapter's batch: here the new head trains on the
    frozen backbone (BatchNorm statistics kept), which is stable on so little data (measured 0.86-0.88 on
    this set; full fine-tuning at this size swings between 0.82 and 0.88 from epoch to epoch)."""
    # The chapter's recipe (constant LR, no smoothing), which these numbers were measured with.
    probe = [*LITE0, "--recipe", "d2l", "--epochs", "2", "--freeze-epochs", "2", "--freeze-bn", "--no-reuse-classifier"]
    run_script("finetune.py", *probe, "--output-dir", tmp_path / "pretrained")
    run_script("finetune.py", *probe, "--no-pretrained", "--output-dir", tmp_path / "scratch")
    pretrained = _metrics(tmp_path / "pretrained")["final"]["eval_acc"]
    scratch = _metrics(tmp_path / "scratch")["final"]["eval_acc"]
    assert pretrained >= 0.85, pretrained
    assert scratch <= pretrained - 0.15, (pretrained, scratch)


@pytest.mark.slow
def test_default_recipe_reaches_the_linear_probe_on_hotdog_mini(tmp_path):
    """The default recipe (2 head-only epochs, then every layer with layer-wise LR decay; see ACCURACY.md) on 200
    real photos reaches >= 0.88, what the linear probe reaches (seed 0 measured: 0.88 in bf16, 0.90 in fp32).
    One seed (a run is ~35 s at 128 px on 2 idle cores): the mean of 3 seeds in ACCURACY.md is the claim, this
    guards against a regression below it."""
    out = tmp_path / "default"
    run_script("finetune.py", "--model", f"local-dir:{LITE0_WEIGHTS}", "--data-dir", HOTDOG_MINI, "--img-size", "128",
               "--seed", "0", "--output-dir", out)
    assert json.loads((out / "run_config.json").read_text())["recipe"]["name"] == "lp-ft"
    assert _metrics(out)["final"]["eval_acc"] >= 0.88
