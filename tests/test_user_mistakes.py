"""User mistakes get one line and never lose work: every option of every script, given a wrong type, an
out-of-range value or a missing path, exits 2 with one `error:` line naming it, before anything is loaded.

The options are read from the parsers themselves (FinetuneConfig's fields, each script's `build_parser()`), so a
new option without a row here fails `test_every_option_of_every_script_has_a_row`.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import REPO_ROOT, make_image_folder, run_script

from hf_finetune.config import FinetuneConfig

# {placeholder} values, made by the `places` fixture: an existing file, a missing path, an image, a folder.
BAD_BOOL = "maybe"
FINETUNE_ROWS = {
    "data_dir": [["--data-dir", "{missing}"]],
    "train_file": [["--train-file", "{missing}.csv"], ["--train-file", "{file}"]],
    "eval_file": [["--eval-file", "{file}"]],
    "test_file": [["--test-file", "{file}"]],
    "label_delimiter": [["--label-delimiter", ""]],
    "task": [["--task", "both"]],
    "dataset_name": [["--dataset-name", "user/food", "--data-dir", "{folder}"]],
    "val_fraction": [["--val-fraction", "1.5"], ["--val-fraction", "x"]],
    "streaming": [["--streaming", BAD_BOOL], ["--streaming", "--data-dir", "{folder}"]],
    "data_files": [["--data-files", "shards/*.parquet"]],
    "eval_data_files": [["--streaming", "--dataset-name", "user/food", "--eval-data-files", "val.parquet"]],
    "label_names": [["--label-names", "a,b"]],
    "shuffle_buffer": [["--shuffle-buffer", "0"]],
    "max_steps": [["--max-steps", "0"], ["--max-steps", "5"]],
    "checkpoint_every": [["--checkpoint-every", "x"], ["--checkpoint-every", "10"]],
    "cache_dir": [["--cache-dir", "{file}"]],
    "cache": [["--cache", BAD_BOOL]],
    "max_bad_fraction": [["--max-bad-fraction", "2"]],
    "num_workers": [["--num-workers", "-1"], ["--num-workers", "x"]],
    "model": [["--model", "local-dir:{missing}"]],
    "pretrained": [["--pretrained", BAD_BOOL]],
    "pretrained_path": [["--pretrained-path", "{missing}"]],
    "reuse_classifier": [["--reuse-classifier", BAD_BOOL]],
    "label_map": [["--label-map", "{missing}.json"]],
    "img_size": [["--img-size", "8"], ["--img-size", "x"]],
    "channels_last": [["--channels-last", BAD_BOOL]],
    "freeze_fraction": [["--freeze-fraction", "1.5"]],
    "freeze_epochs": [["--freeze-epochs", "-1"]],
    "freeze_bn": [["--freeze-bn", BAD_BOOL]],
    "layer_decay": [["--layer-decay", "0"]],
    "recipe": [["--recipe", "nope"]],
    "optimizer": [["--optimizer", "adam"]],
    "lr": [["--lr", "0"], ["--lr", "x"]],
    "head_lr_mult": [["--head-lr-mult", "-1"]],
    "param_group": [["--param-group", BAD_BOOL]],
    "weight_decay": [["--weight-decay", "-1"]],
    "momentum": [["--momentum", "-0.5"]],
    "lr_scheduler": [["--lr-scheduler", "linear"]],
    "warmup_steps": [["--warmup-steps", "-1"]],
    "label_smoothing": [["--label-smoothing", "1"]],
    "loss": [["--loss", "focal"]],
    "mixup": [["--mixup", "-1"]],
    "cutmix": [["--cutmix", "-1"]],
    "auto_augment": [["--auto-augment", "auto"]],
    "drop_path": [["--drop-path", "1"]],
    "class_weights": [["--class-weights", "inverse"]],
    "epochs": [["--epochs", "0"], ["--epochs", "x"]],
    "batch_size": [["--batch-size", "0"]],
    "max_train_samples": [["--max-train-samples", "0"]],
    "max_eval_samples": [["--max-eval-samples", "0"]],
    "gradient_accumulation_steps": [["--gradient-accumulation-steps", "0"]],
    "mixed_precision": [["--mixed-precision", "fp8"]],
    "seed": [["--seed", "-1"], ["--seed", "x"]],
    "output_dir": [["--output-dir", "{file}"]],
    "resume": [["--resume", "{missing}"]],
    "keep_checkpoints": [["--keep-checkpoints", "-1"]],
    "compile": [["--compile", BAD_BOOL]],
    "select_metric": [["--select-metric", "f1"]],
    "save_last": [["--save-last", BAD_BOOL]],
    "patience": [["--patience", "0"]],
    "min_delta": [["--min-delta", "-1"]],
    "model_ema": [["--model-ema", BAD_BOOL]],
    "ema_decay": [["--ema-decay", "1"]],
    "ema_warmup": [["--ema-warmup", BAD_BOOL]],
    "tta": [["--tta", "rotate"]],
    "calibrate": [["--calibrate", "platt"]],
    "threshold": [["--threshold", "1.5"]],
    "push_to_hub": [["--push-to-hub", "not a repo!"]],
    "hub_public": [["--hub-public", BAD_BOOL]],
    "report_to": [["--report-to", "tensorbored"]],
    "config": [["--config", "{missing}.yaml"], ["--config", "{bad_json}"]],
}
# Names that only the data or the model can check, once loaded (each has its own test of the error line).
FINETUNE_CHECKED_ON_LOAD = {
    "dataset_config": "a configuration of the Hub dataset (tests/data/test_data.py)",
    "train_split": "a split of the data (tests/data/test_data.py)",
    "eval_split": "a split of the data (tests/data/test_data.py)",
    "image_column": "a column of the Hub dataset (tests/data/test_data.py)",
    "label_column": "a column of the Hub dataset (tests/data/test_data.py)",
    "freeze": "group names of the model's group_matcher (tests/model/test_techniques.py)",
}
SCRIPT_ROWS = {
    "predict.py": {
        "model": [["{missing}", "{image}"]],
        "inputs": [["user/model", "{missing}.jpg"]],
        "top_k": [["user/model", "{image}", "--top-k", "0"], ["user/model", "{image}", "--top-k", "x"]],
        "batch_size": [["user/model", "{image}", "--batch-size", "0"]],
        "output": [["user/model", "{image}", "--output", "p.txt"],
                   ["user/model", "{image}", "--output", "{file}/p.csv"]],
        "tta": [["user/model", "{image}", "--tta", "rotate"]],
        "onnx": [["user/model", "{image}", "--onnx=yes"]],
        "int8": [["user/model", "{image}", "--int8"]],
    },
    "evaluate.py": {
        "model": [["{missing}", "{folder}"]],
        "data": [["user/model", "{missing}"], ["user/model", "{image}"]],
        "label_delimiter": [["user/model", "{folder}", "--label-delimiter", ""]],
        "output_dir": [["user/model", "{folder}", "--output-dir", "{file}"]],
        "overwrite": [["user/model", "{folder}", "--overwrite=yes"]],
        "tta": [["user/model", "{folder}", "--tta", "rotate"]],
        "mixed_precision": [["user/model", "{folder}", "--mixed-precision", "fp8"]],
        "batch_size": [["user/model", "{folder}", "--batch-size", "0"]],
        "mistakes": [["user/model", "{folder}", "--mistakes", "-1"], ["user/model", "{folder}", "--mistakes", "x"]],
    },
    "export.py": {
        "source": [["{missing}", "--format", "onnx"]],
        "format": [["user/model", "--format", "tflite"]],
        "output_dir": [["user/model", "--format", "onnx", "--output-dir", "{file}"]],
        "check_images": [["user/model", "--format", "onnx", "--check-images", "{missing}.jpg"]],
        "push_to_hub": [["user/model", "--format", "onnx", "--push-to-hub", "not a repo!"]],
        "quantize": [["user/model", "--format", "onnx", "--quantize", "int4"]],
    },
    "demo.py": {
        "model": [["{missing}"]],
        "host": [["{folder}", "--host"]],
        "port": [["{folder}", "--port", "x"], ["{folder}", "--port", "70000"]],
        "push_space": [["{folder}", "--push-space"]],
        "private": [["{folder}", "--private=yes"]],
    },
    "sweep.py": {
        "n_trials": [["--n-trials", "0"], ["--n-trials", "x"]],
        "timeout": [["--timeout", "soon"]],
        "storage": [["--storage"], ["--storage", "nosuchdb://sweep"]],
        "study_name": [["--study-name"]],
        "output_dir": [["--output-dir", "{file}"]],
        "space": [["--space", "{missing}.yaml"]],
        "seed": [["--seed", "x"]],
        "prune_startup_trials": [["--prune-startup-trials", "-1"]],
        "prune_warmup_epochs": [["--prune-warmup-epochs", "x"]],
        "heartbeat": [["--heartbeat", "0"]],
    },
    "push.py": {
        "output_dir": [["{missing}", "user/model"]],
        "repo_id": [["{folder}", "not a repo!"]],
        "hub_public": [["{folder}", "user/model", "--hub-public=yes"]],
    },
    "compare.py": {
        "output_dir": [["--output-dir", "{file}"]],
        "variants": [["--variants", "finetune,nope"]],
    },
    "find_lr.py": {
        "plot": [["--plot", "lr.txt"], ["--plot", "{file}/lr.png"]],
        "steps": [["--steps", "0"], ["--steps", "x"]],
        "start_lr": [["--start-lr", "0"], ["--start-lr", "x"]],
        "end_lr": [["--end-lr", "1e-8"]],
    },
}


def script_parser(script: str):
    """SCRIPT's own argparse parser (scripts/ is no package: loaded from its file)."""
    spec = importlib.util.spec_from_file_location(f"script_{Path(script).stem}", REPO_ROOT / "scripts" / script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.build_parser()


def script_options(script: str) -> set[str]:
    if script == "finetune.py":
        return {f.name for f in dataclasses.fields(FinetuneConfig) if f.init} | {"config"}
    return {action.dest for action in script_parser(script)._actions if action.dest != "help"}


def all_rows() -> list[tuple[str, str, list[str]]]:
    rows = [("finetune.py", option, argv) for option, cases in FINETUNE_ROWS.items() for argv in cases]
    rows += [(script, option, argv) for script, table in SCRIPT_ROWS.items()
             for option, cases in table.items() for argv in cases]
    # A bad training option after `--` fails compare.py and find_lr.py as it fails finetune.py.
    rows += [(script, "-- epochs", ["--", "--epochs", "0"]) for script in ("compare.py", "find_lr.py")]
    return rows


def test_every_option_of_every_script_has_a_row():
    covered = {"finetune.py": set(FINETUNE_ROWS) | set(FINETUNE_CHECKED_ON_LOAD),
               **{script: set(table) for script, table in SCRIPT_ROWS.items()}}
    scripts = sorted(path.name for path in (REPO_ROOT / "scripts").glob("*.py"))
    assert sorted(covered) == scripts
    for script in scripts:
        assert covered[script] == script_options(script), script


@pytest.fixture
def places(tmp_path) -> dict[str, str]:
    folder = make_image_folder(tmp_path / "photos", per_class=(2,), splits=("",))
    (tmp_path / "bad.json").write_text('{"epochs": 3,')
    (tmp_path / "a_file").write_text("not a folder")
    return {"missing": str(tmp_path / "missing"), "file": str(tmp_path / "a_file"), "folder": str(folder),
            "image": str(next(folder.rglob("*.jpg"))), "bad_json": str(tmp_path / "bad.json")}


def _run_row(script: str, option: str, argv: list[str], places: dict, cwd: Path) -> str | None:
    """None when SCRIPT ARGV exits 2 with one `error:` line naming the option (or its bad value), else why not."""
    args = [arg.format(**places) for arg in argv]
    result = subprocess.run([sys.executable, str(REPO_ROOT / "scripts" / script), *args], capture_output=True,
                            text=True, cwd=cwd, timeout=300)
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    named = option.split()[-1].replace("_", "-")
    line = errors[0] if errors else ""
    # The line names the option, the bad value (the row's last argument) or the missing path.
    names_it = named in line.replace("_", "-") or args[-1] in line or any(
        arg in line for arg in args if arg.startswith(places["missing"]))
    if result.returncode == 2 and len(errors) == 1 and "Traceback" not in result.stderr and names_it:
        return None
    return f"{script} {' '.join(args)} ({option}): exit {result.returncode}\n{result.stderr[-1500:]}"


@pytest.mark.slow  # minutes on the slower CI machine: CI's first step runs it, the floors step does not
def test_every_bad_option_is_one_error_line_and_exit_2(places, tmp_path):
    rows = all_rows()
    with ThreadPoolExecutor(max_workers=4) as pool:
        failures = [failure for failure in pool.map(lambda row: _run_row(*row, places, tmp_path), rows) if failure]
    assert not failures, f"{len(failures)} of {len(rows)} rows:\n" + "\n".join(failures)
    assert not (tmp_path / "output").exists() and not (tmp_path / "comparison").exists()  # nothing written


def test_a_fresh_run_refuses_a_folder_of_other_files_and_resume_none_would_move_them(places, tmp_path):
    folder = tmp_path / "repository"
    folder.mkdir()
    own = {"README.md": "# my project\n", "config.json": '{"mine": true}'}
    for name, text in own.items():
        (folder / name).write_text(text)
    result = run_script("finetune.py", "--data-dir", places["folder"], "--output-dir", folder, "--model",
                        "test_resnet", "--no-pretrained", "--epochs", "1", check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: {folder} holds config.json, README.md, which no hf_finetune run wrote there: choose an empty "
        f"--output-dir, or pass --resume none to move them aside into {folder / 'previous-run-<time>'}/")
    assert {path.name: path.read_text() for path in folder.iterdir()} == own  # nothing written, nothing lost


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    from finished_run import make_finished_run

    return make_finished_run(tmp_path_factory.mktemp("mistakes") / "run")


@pytest.fixture(scope="module")
def labelled(tmp_path_factory) -> Path:
    from finished_run import LABELS

    return make_image_folder(tmp_path_factory.mktemp("labelled") / "photos", classes=tuple(LABELS),
                             per_class=(2,), splits=("",))


def test_evaluate_keeps_a_runs_results_unless_told_to_overwrite(finished, labelled, tmp_path):
    run = tmp_path / "run"
    import shutil

    shutil.copytree(finished, run)
    before = {name: (run / name).read_bytes() for name in ("metrics.json", "confusion_matrix.png")}
    refused = run_script("evaluate.py", run, labelled, "--output-dir", run, check=False)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert refused.stderr.strip().splitlines()[-1] == (
        f"error: {run} holds metrics.json, confusion_matrix.png that no evaluation wrote (a training run's?): "
        "choose another --output-dir, or pass --overwrite to replace them")
    assert {name: (run / name).read_bytes() for name in before} == before
    # An evaluation's own folder is its to rewrite; --overwrite allows any folder.
    for _ in range(2):
        run_script("evaluate.py", run, labelled, "--output-dir", tmp_path / "evaluation")
    run_script("evaluate.py", run, labelled, "--output-dir", run, "--overwrite")
    assert "mistakes" in json.loads((run / "metrics.json").read_text())


def test_predict_makes_the_output_folder_before_predicting(finished, labelled, tmp_path):
    output = tmp_path / "not" / "yet" / "predictions.jsonl"
    result = run_script("predict.py", finished, labelled, "--output", output)
    assert "6 predictions written" in result.stdout
    assert len(output.read_text().splitlines()) == 6
