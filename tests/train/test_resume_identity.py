"""A resumed or re-run command is the run it says it is: every option that changes what is trained is part of the
checkpoint's identity, and the best weights travel with the checkpoint they belong to."""

from __future__ import annotations

import json
import re
import shutil

import pytest
import torch
from conftest import make_image_folder, run_script
from safetensors.torch import load_file

from hf_finetune.train.checkpoints import list_checkpoints


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("identity") / "photos", per_class=(12, 4))


@pytest.fixture(scope="module")
def finished(photos, tmp_path_factory):
    """One finished 2-epoch run (the default recipe, SGD), its folder copied by each test that changes it."""
    out = tmp_path_factory.mktemp("finished") / "out"
    run_script("finetune.py", *_args(photos, out))
    return out


def _args(photos, out, *extra):
    return ["--data-dir", photos, "--model", "test_resnet", "--no-pretrained", "--batch-size", "4",
            "--num-workers", "0", "--img-size", "64", "--epochs", "2", "--output-dir", out, *extra]


def _copy(finished, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(finished, out)
    return out


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


# option -> (flags that change it, what the error must say: the option, the checkpoint's value, the new one).
CHANGES = {
    "optimizer": (["--optimizer", "adamw"], "--optimizer sgd (now adamw)"),
    "layer-decay": (["--layer-decay", "0.5"], "--layer-decay 1 (now 0.5)"),
    "param-group": (["--param-group", "false"], "--param-group True (now False)"),
    "freeze": (["--freeze", "stem"], "--freeze None (now stem)"),
    "label-smoothing": (["--label-smoothing", "0"], "--label-smoothing 0.1 (now 0"),
    "mixup": (["--mixup", "0.2"], "--mixup 0 (now 0.2)"),
    "recipe": (["--recipe", "d2l"], "--recipe lp-ft (now d2l)"),
    "seed": (["--seed", "3"], "--seed 0 (now 3)"),
}


@pytest.mark.parametrize("change", list(CHANGES))
def test_a_changed_training_option_is_one_error_line_naming_it_with_both_values(photos, finished, tmp_path, change):
    """Today: --optimizer ends in KeyError 'step', --layer-decay/--param-group/--freeze in a ValueError traceback,
    and the others return the finished run's results as if they were the new settings'."""
    out = _copy(finished, tmp_path)
    metrics = (out / "metrics.json").read_text()
    flags, named = CHANGES[change]
    result = run_script("finetune.py", *_args(photos, out, *flags), check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    [line] = _error_lines(result.stderr)
    assert named in line and "--resume none" in line and "original flags" in line, line
    assert (out / "metrics.json").read_text() == metrics, "nothing already produced is touched"


def test_several_changed_options_are_all_named_in_the_one_line(photos, finished, tmp_path):
    out = _copy(finished, tmp_path)
    result = run_script("finetune.py", *_args(photos, out, "--optimizer", "adamw",
                                              "--mixup", "0.2"), check=False)
    [line] = _error_lines(result.stderr)
    assert "--optimizer sgd (now adamw)" in line and "--mixup 0 (now 0.2)" in line


def test_options_that_cannot_change_the_result_may_differ(photos, finished, tmp_path):
    out = _copy(finished, tmp_path)
    result = run_script("finetune.py", *_args(photos, out, "--keep-checkpoints", "5",
                                              "--no-cache", "--report-to", "none", "--no-channels-last"))
    assert "already holds this finished run" in result.stdout


def test_more_epochs_than_a_finished_cosine_run_is_refused_with_the_way_out(photos, finished, tmp_path):
    """The cosine schedule (and the recipe's warm-up) were planned for 2 epochs: a third would not be the 3-epoch
    run the command asks for. Today the run goes on with a schedule that has already reached zero."""
    out = _copy(finished, tmp_path)
    result = run_script("finetune.py", *_args(photos, out, "--epochs", "3"), check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    [line] = _error_lines(result.stderr)
    assert "--epochs 2 (now 3)" in line and "--resume none" in line, line
    assert len(json.loads((out / "metrics.json").read_text())["history"]) == 2


def test_resuming_another_folders_checkpoint_ends_with_its_best_weights(photos, tmp_path):
    """--resume OTHER/checkpoints/epoch-N into a new --output-dir: the best epoch's weights come along. Today the
    run trains to the end, then fails with FileNotFoundError on OUTPUT_DIR/checkpoints/best-epoch-N."""
    straight, first, second = tmp_path / "straight", tmp_path / "first", tmp_path / "second"
    # --min-delta 100: no epoch after the first counts as better, so the selected weights are epoch 1's.
    d2l = ("--recipe", "d2l", "--min-delta", "100")
    run_script("finetune.py", *_args(photos, straight, "--epochs", "3", *d2l))
    run_script("finetune.py", *_args(photos, first, "--epochs", "2", *d2l))
    [checkpoint] = [path for path in list_checkpoints(first) if path.name == "epoch-0002-step-000000"]
    result = run_script("finetune.py", *_args(photos, second, "--epochs", "3", *d2l, "--resume", checkpoint))
    assert "resumed from" in result.stdout
    a, b = (json.loads((out / "metrics.json").read_text()) for out in (straight, second))
    assert a["final"]["selected_epoch"] == b["final"]["selected_epoch"] == 1
    x, y = load_file(straight / "model.safetensors"), load_file(second / "model.safetensors")
    assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def test_a_checkpoint_whose_best_weights_are_gone_is_refused_before_training(photos, tmp_path):
    """Epoch 2's checkpoint names epoch 1's weights as the best: without best-epoch-0001 beside it (and not being
    epoch 1's own checkpoint, whose weights they are) the resume is refused before it trains."""
    first, second = tmp_path / "first", tmp_path / "second"
    d2l = ("--recipe", "d2l", "--min-delta", "100")  # epoch 2 is never better: epoch 1's weights are the best
    run_script("finetune.py", *_args(photos, first, "--epochs", "2", *d2l))
    shutil.rmtree(first / "checkpoints" / "best-epoch-0001")
    checkpoint = list_checkpoints(first)[-1]
    assert checkpoint.name == "epoch-0002-step-000000"
    result = run_script("finetune.py", *_args(photos, second, "--epochs", "3", *d2l, "--resume", checkpoint),
                        check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    [line] = _error_lines(result.stderr)
    assert "best-epoch-0001" in line and "--resume none" in line, line
    assert not re.search(r"^epoch 3:", result.stdout, re.M), "refused before any training"


def test_toggling_save_last_on_resume_is_refused_before_training(photos, tmp_path):
    """Today: --save-last on the first run, off on the resume: FileNotFoundError after all the training."""
    out = tmp_path / "out"
    run_script("finetune.py", *_args(photos, out, "--epochs", "1", "--recipe", "d2l", "--save-last"))
    result = run_script("finetune.py", *_args(photos, out, "--epochs", "2", "--recipe", "d2l"), check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    [line] = _error_lines(result.stderr)
    assert "--save-last True (now False)" in line, line
    assert "epoch 2:" not in result.stdout


def test_a_comparison_rerun_with_other_options_is_refused_not_answered_with_the_old_results(photos, tmp_path):
    """compare.py runs each variant as a command in its own folder: rerun with another --seed, the old variant's
    checkpoint is refused. Today the rerun reports the first comparison's numbers as the new seed's."""
    out = tmp_path / "cmp"
    user = ["--data-dir", photos, "--model", "test_resnet", "--img-size", "64", "--batch-size", "4", "--num-workers",
            "0", "--epochs", "1"]
    run_script("compare.py", "--output-dir", out, "--variants", "scratch", "--", *user)
    table = (out / "comparison.json").read_text()
    result = run_script("compare.py", "--output-dir", out, "--variants", "scratch", "--", *user, "--seed", "1",
                        check=False)
    assert result.returncode == 2 and "--seed 0 (now 1)" in result.stderr and "Traceback" not in result.stderr
    assert (out / "comparison.json").read_text() == table
