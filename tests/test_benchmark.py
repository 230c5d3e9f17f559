"""`python -m benchmarks.run` runs on any photo folder and records what it measured, `python -m benchmarks.precision`
times each number format; both with the machine they ran on (not how fast: that is BENCHMARKS.md)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
from conftest import REPO_ROOT, make_image_folder

from hf_finetune.hardware import cpu_has_native_bf16, cpu_model, machine_precision

QUICK = ["--model", "test_resnet", "--img-size", "64", "--batch-size", "8", "--workers", "0", "--loader-epochs", "2",
         "--epochs", "0", "--accuracy-seeds", "0"]


def run_benchmark(*args, module="benchmarks.run", env=None, check=True) -> subprocess.CompletedProcess:
    """`python -m MODULE ARGS` from the checkout, as the README says to run it."""
    result = subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=REPO_ROOT,
                            capture_output=True, text=True, env=env or os.environ.copy(), timeout=900)
    if check and result.returncode != 0:
        raise AssertionError(f"{module} exited {result.returncode}\nstdout:\n{result.stdout}\n"
                             f"stderr:\n{result.stderr}")
    return result


def _rows(text: str, first_cell: str) -> list[list[str]]:
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in text.splitlines()
            if line.startswith(f"| {first_cell}")]


@pytest.mark.slow  # minutes on the slower CI machine: CI's first step runs it, the floors step does not
def test_benchmark_compares_both_loaders_at_each_scale_and_appends_its_command(tmp_path):
    photos = make_image_folder(tmp_path / "photos", per_class=(6, 2), size=(120, 90), splits=("train", "test"))
    output = tmp_path / "BENCHMARKS.md"
    output.write_text("# earlier runs\n")
    scratch = tmp_path / "scratch"  # the benchmark's replicated photos and caches go here, then away
    scratch.mkdir()
    run_benchmark("--data-dir", photos, *QUICK, "--scales", "1", "2", "--output", output,
                  env={**os.environ, "TMPDIR": str(scratch)})
    # (torch keeps its own compile cache there, on purpose)
    assert not list(scratch.glob("hf_finetune_benchmark_*")), "the benchmark's work folder must not outlive it"
    text = output.read_text()
    assert text.startswith("# earlier runs\n")  # appended, not overwritten
    assert f"--data-dir {photos}" in text and "load average" in text
    machine = next(line for line in text.splitlines() if line.startswith("- machine: "))
    assert cpu_model() in machine and f"native bf16: {'yes' if cpu_has_native_bf16() else 'no'}," in machine
    loaders = _rows(text, "chapter") + _rows(text, "ours")
    assert sorted((row[0], row[1]) for row in loaders) == [("chapter", "12 (1x)"), ("chapter", "24 (2x)"),
                                                           ("ours", "12 (1x)"), ("ours", "24 (2x)")]
    for row in loaders:
        assert float(row[3]) > 0 and re.fullmatch(r"\d+\.\d\dx", row[4])
        assert all(int(cell) > 0 for cell in row[-3:])  # peak RSS, PSS, anonymous (MiB)
    builds = _rows(text, "1x") + _rows(text, "2x")
    assert [row[1] for row in builds] == ["16", "28"]  # train + the 4 test images, decoded once


@pytest.mark.slow  # minutes on the slower CI machine: CI's first step runs it, the floors step does not
def test_benchmark_trains_the_chapters_loop_and_ours_side_by_side_in_the_precision_a_run_picks(tmp_path):
    photos = make_image_folder(tmp_path / "photos", per_class=(4, 2), size=(120, 90))
    output = tmp_path / "BENCHMARKS.md"
    run_benchmark("--data-dir", photos, *QUICK[:-4], "--scales", "1", "--epochs", "2",
                  "--train-images", "8", "--no-compile", "--accuracy-seeds", "1", "--accuracy-epochs", "1",
                  "--accuracy-img-size", "64", "--output", output)
    text = output.read_text()
    rows = _rows(text, "chapter-style") + _rows(text, "hf_finetune")
    precision = machine_precision("auto").name  # what a run picks here: bf16 only with native bf16
    assert [row[0] for row in rows] == ["chapter-style: fp32, NCHW, decode every epoch",
                                        f"hf_finetune: cache, channels_last, {precision} (auto)"]
    assert rows[0][3] == rows[0][5] == "1.00x"  # the chapter is the baseline of both ratios
    for row in rows:
        # Seconds print to 0.1 s: a tiny epoch can read 0.0. Images/s cannot.
        assert float(row[2]) >= 0 and float(row[4]) > 0 and len(row[6].split(", ")) == 2  # accuracy per epoch
    # The accuracy table: ours at its default precision against plain fp32 (which must ask for fp32: the default,
    # auto, is bf16 on a CPU with native bf16), each named by the precision its run recorded.
    accuracy = _rows(text, "fast") + _rows(text, "plain")
    assert [row[0] for row in accuracy] == [f"fast: cache, channels_last, {precision} (auto)",
                                            "plain: --no-cache, NCHW, fp32"]
    assert all(0 <= float(row[2]) <= 1 for row in accuracy)  # the mean final accuracy of the one seed


@pytest.mark.parametrize("layout", ["flat", "train only", "val only", "missing"])
def test_benchmark_refuses_a_folder_without_train_and_eval_splits(tmp_path, layout):
    splits = {"flat": (None,), "train only": ("train",), "val only": ("val",), "missing": ()}[layout]
    folder = make_image_folder(tmp_path / "photos", per_class=(4,), splits=splits)
    result = run_benchmark("--data-dir", folder, *QUICK, "--output", "", check=False)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "expected train/<class>/ and one of val/validation/valid/test/<class>/" in result.stderr


def test_precision_benchmark_times_every_format_and_names_the_cpu_and_what_auto_picks(tmp_path):
    output = tmp_path / "BENCHMARKS.md"
    output.write_text("# earlier runs\n")
    run_benchmark("--model", "test_resnet", "--img-size", "32", "--batch-size", "4", "--steps", "2",
                  "--output", output, module="benchmarks.precision")
    text = output.read_text()
    assert text.startswith("# earlier runs\n")  # appended, not overwritten
    assert "- command: `python -m benchmarks.precision --model test_resnet" in text and "--steps 2" in text
    machine = next(line for line in text.splitlines() if line.startswith("- machine: "))
    assert cpu_model() in machine and f"native bf16: {'yes' if cpu_has_native_bf16() else 'no'}," in machine
    assert "load average (1/5/15 min) at start" in text and "load average (1/5/15 min) at end" in text
    assert f"- `--mixed-precision auto` picks here: {machine_precision('auto').describe()}" in text
    rows = _rows(text, "fp32") + _rows(text, "bf16")
    assert [row[0] for row in rows] == ["fp32 NCHW", "fp32 channels_last", "bf16 NCHW", "bf16 channels_last"]
    baseline = float(rows[0][1])
    for name, rate, ratio in rows:
        assert float(rate) > 0 and float(ratio.rstrip("x")) == pytest.approx(float(rate) / baseline, rel=0.05, abs=0.01)


def test_the_grid_replays_early_stopping_on_its_finished_runs(tmp_path):
    """`recipe_grid --replay-patience`: where each rule would have stopped a finished run, and the model (best eval
    loss among the epochs it ran) it would have saved instead of the run's own."""
    import json

    losses = {"lp-ft": [5, 4, 3, 2.5, 2.6, 2.7, 2.8, 2.4, 2.45, 2.5],
              "d2l": [5, 4, 3, 2.9, 2.8, 2.7, 2.6, 2.5, 2.4, 2.3]}
    results = tmp_path / "grid.jsonl"
    for variant, curve in losses.items():
        folder = tmp_path / variant
        folder.mkdir()
        history = [{"epoch": epoch, "eval_loss": loss, "eval_acc": epoch / 100} for epoch, loss in enumerate(curve, 1)]
        (folder / "metrics.json").write_text(json.dumps({"history": history}))
        row = {"data": "toy", "img_size": 64, "epochs": 10, "variant": "default" if variant == "lp-ft" else "d2l",
               "seed": 0, "metric": "eval_acc", "selected_epoch": 1 + curve.index(min(curve)),
               "command": f"-m hf_finetune --output-dir {folder} --seed 0"}
        with results.open("a") as file:
            file.write(json.dumps(row) + "\n")
    text = run_benchmark("--results", results, "--replay-patience", "3", "5", "25%",
                         module="benchmarks.recipe_grid").stdout
    rows = {(row[0], row[1]): row[3:] for row in _rows(text, "") if row[0] in ("3", "5", "25%")}
    # Patience 3 stops lp-ft after epoch 7 (best: epoch 4), 3 of 10 epochs saved; it keeps epoch 4, not the run's 8.
    assert rows["3", "lp-ft"] == ["1", "1", "3 of 10 (30%)", "1: toy 64 px default seed 0 0.080 -> 0.040",
                                  "-4.00 pts"]
    assert rows["25%", "lp-ft"] == rows["3", "lp-ft"]  # 25% of 10 epochs, rounded up
    assert rows["5", "lp-ft"] == ["1", "0", "0 of 10 (0%)", "0", "+0.00 pts"]
    assert rows["3", "d2l"] == ["1", "0", "0 of 10 (0%)", "0", "+0.00 pts"]  # improving every epoch: never stops
