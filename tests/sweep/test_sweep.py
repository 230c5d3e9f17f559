"""scripts/sweep.py on real processes: a tiny model on a tiny generated folder, 2 epochs, a few trials, one
decode-once cache for the whole session (conftest's HF_HOME)."""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml
from conftest import HERMETIC_ROOT, REPO_ROOT, make_image_folder, run_script

from hf_finetune.errors import UserError
from hf_finetune.train.checkpoints import list_checkpoints

SCRIPT = str(REPO_ROOT / "scripts" / "sweep.py")
# Two LRs far apart: 0.05 learns the colour-coded classes, 1e-9 does not, so the median pruner has a hopeless
# trial to stop once the sampler repeats it.
SPACE = {"lr": {"choices": [0.05, 1.0e-9]}, "batch_size": {"choices": [8]}, "weight_decay": None,
         "layer_decay": None, "freeze_epochs": None, "label_smoothing": None, "mixup": None, "cutmix": None}


@pytest.fixture(scope="module")
def photos() -> Path:
    return make_image_folder(HERMETIC_ROOT / "sweep-photos")


@pytest.fixture(scope="module")
def space_file() -> Path:
    path = HERMETIC_ROOT / "sweep-space.yaml"
    path.write_text(yaml.safe_dump(SPACE))
    return path


def finetune_flags(photos: Path) -> list[str]:
    # --freeze-bn: the lp-ft recipe's value, which a random backbone no longer gets by default (issue 18.5); with
    # BatchNorm statistics trained, 2 epochs at lr 0.05 on this tiny folder end above lr 1e-9's eval loss.
    return ["--data-dir", str(photos), "--model", "test_resnet", "--no-pretrained", "--epochs", "2",
            "--img-size", "64", "--num-workers", "0", "--mixed-precision", "no", "--freeze-bn"]


def sweep_args(output_dir: Path, photos: Path, space_file: Path, n_trials: int, *extra) -> list[str]:
    return ["--n-trials", str(n_trials), "--output-dir", str(output_dir), "--space", str(space_file),
            "--storage", f"sqlite:///{output_dir.parent / (output_dir.name + '.db')}", "--prune-startup-trials", "1",
            *map(str, extra), "--", *finetune_flags(photos)]


def trials_table(output_dir: Path) -> list[dict]:
    with open(output_dir / "trials.csv", newline="") as file:
        return list(csv.DictReader(file))


def started_trials(stdout: str) -> list[int]:
    return [int(line.split()[2].rstrip(":")) for line in stdout.splitlines() if line.startswith("== trial ")]


@pytest.fixture(scope="module")
def finished_sweep(photos, space_file) -> tuple[Path, subprocess.CompletedProcess]:
    output_dir = HERMETIC_ROOT / "sweep-finished"
    return output_dir, run_script("sweep.py", *sweep_args(output_dir, photos, space_file, 4))


def test_sweep_runs_prunes_and_writes_results(finished_sweep):
    output_dir, result = finished_sweep
    rows = trials_table(output_dir)
    assert [row["trial"] for row in rows] == ["0", "1", "2", "3"]
    states = [row["state"] for row in rows]
    assert "PRUNED" in states and "COMPLETE" in states, states
    for row in rows:  # each trial is an ordinary run folder; a pruned one stopped after its first epoch
        run = Path(row["run_dir"])
        assert run == output_dir / f"trial-{row['trial']}"
        assert json.loads((run / "run_config.json").read_text())["config"]["lr"] == float(row["lr"])
        assert (run / "metrics.json").is_file() == (row["state"] == "COMPLETE")
        assert row["epochs"] == ("1" if row["state"] == "PRUNED" else "2")
    best = min((row for row in rows if row["state"] == "COMPLETE"), key=lambda row: float(row["value"]))
    assert best["lr"] == "0.05"  # eval_loss: lower is better
    assert f"| {best['trial']} (best) |" in (output_dir / "trials.md").read_text()
    assert yaml.safe_load((output_dir / "best.yaml").read_text())["lr"] == 0.05
    for plot in ("optimization_history.png", "param_importances.png"):
        assert (output_dir / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert started_trials(result.stdout) == [0, 1, 2, 3]


def test_best_yaml_reproduces_the_best_trial(finished_sweep, tmp_path):
    output_dir, _ = finished_sweep
    best = min((row for row in trials_table(output_dir) if row["state"] == "COMPLETE"),
               key=lambda row: float(row["value"]))
    run_script("finetune.py", "--config", output_dir / "best.yaml", "--output-dir", tmp_path / "again")
    metrics = json.loads((tmp_path / "again" / "metrics.json").read_text())
    trial = json.loads((Path(best["run_dir"]) / "metrics.json").read_text())
    assert metrics["selected"]["eval"]["loss"] == pytest.approx(float(best["value"]), abs=1e-6)
    assert [row["eval_loss"] for row in metrics["history"]] == pytest.approx(
        [row["eval_loss"] for row in trial["history"]], abs=1e-6)


def _start(args: list[str], log: Path) -> subprocess.Popen:
    with open(log, "w") as file:
        return subprocess.Popen([sys.executable, SCRIPT, *args], stdout=file, stderr=subprocess.STDOUT, text=True)


def _wait_for(log: Path, text: str, process: subprocess.Popen, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while text not in log.read_text():
        assert process.poll() is None, f"sweep exited {process.returncode} before {text!r}:\n{log.read_text()}"
        assert time.monotonic() < deadline, f"no {text!r} after {timeout} s:\n{log.read_text()}"
        time.sleep(0.2)


def _cache_files() -> set[str]:
    return {str(path) for path in (HERMETIC_ROOT / "hf_home").rglob("cache-*.arrow")}


@pytest.mark.slow
@pytest.mark.parametrize("stop", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_sweep_resumes_after_a_kill_without_repeating_finished_trials(photos, space_file, tmp_path, stop):
    """SIGKILL: the killed trial's heartbeat goes stale and Optuna queues it again; SIGTERM (preemption): the run
    checkpoints, the sweep queues the trial again and exits 75. Either way the next sweep goes on in its folder."""
    output_dir = tmp_path / "sweep"
    args = sweep_args(output_dir, photos, space_file, 3, "--heartbeat", 1)
    args[args.index("--epochs") + 1] = "3"  # two epochs left after the first checkpoint: time to kill trial 1
    killed = _start(args, tmp_path / "killed.log")
    _wait_for(tmp_path / "killed.log", "== trial 1", killed)  # trial 0 finished, trial 1 running
    deadline = time.monotonic() + 600
    while not list_checkpoints(output_dir / "trial-1"):  # kill it mid-trial, after its first epoch
        assert killed.poll() is None and time.monotonic() < deadline, (tmp_path / "killed.log").read_text()
        time.sleep(0.02)
    killed.send_signal(stop)
    assert killed.wait() == (75 if stop == signal.SIGTERM else -signal.SIGKILL), (tmp_path / "killed.log").read_text()
    first_model = (output_dir / "trial-0" / "model.safetensors").stat().st_mtime_ns
    cache = _cache_files()
    assert cache  # the decode-once cache of the trials so far

    result = run_script("sweep.py", *args)

    assert 0 not in started_trials(result.stdout), result.stdout  # a finished trial is not run again
    assert "(goes on in " + str(output_dir / "trial-1") + ")" in result.stdout  # the killed one goes on
    assert "resumed from " + str(output_dir / "trial-1" / "checkpoints") in result.stdout  # from its checkpoint
    assert (output_dir / "trial-0" / "model.safetensors").stat().st_mtime_ns == first_model
    rows = trials_table(output_dir)
    finished = [row for row in rows if row["state"] in ("COMPLETE", "PRUNED")]
    assert len(finished) == 3, rows
    assert [row["state"] for row in rows if row["trial"] == "1"] == ["FAIL"]  # stale: failed, then retried
    assert str(output_dir / "trial-1") in [row["run_dir"] for row in finished]
    assert len({row["run_dir"] for row in finished}) == 3
    assert _cache_files() == cache  # the trials after the kill decoded nothing again


@pytest.mark.slow
def test_two_sweeps_on_one_study_do_not_run_the_same_trial(photos, space_file, tmp_path):
    output_dir = tmp_path / "sweep"
    args = sweep_args(output_dir, photos, space_file, 4)
    processes = [_start(args, tmp_path / f"sweep{index}.log") for index in range(2)]
    logs = []
    for index, process in enumerate(processes):
        assert process.wait(timeout=900) == 0, (tmp_path / f"sweep{index}.log").read_text()
        logs.append((tmp_path / f"sweep{index}.log").read_text())
    ran = [started_trials(log) for log in logs]
    assert all(ran), logs  # both worked on the study
    assert not set(ran[0]) & set(ran[1]), ran
    rows = trials_table(output_dir)
    assert sorted(int(row["trial"]) for row in rows) == sorted(ran[0] + ran[1])
    assert len([row for row in rows if row["state"] in ("COMPLETE", "PRUNED")]) >= 4
    assert len({row["run_dir"] for row in rows}) == len(rows)


def test_space_file_replaces_and_removes_options(tmp_path):
    from hf_finetune.config import parse_config
    from hf_finetune.sweep.space import load_space, recipe_centre

    base = parse_config(["--epochs", "3"])
    path = tmp_path / "space.yaml"
    path.write_text("lr: {low: 1e-4, high: 1e-2, log: true}\nmixup: null\nfreeze_epochs: {low: 0, high: 1}\n")
    space = load_space(base, str(path))
    assert space["lr"] == {"low": 1e-4, "high": 1e-2, "log": True}  # YAML's 1e-4 string read as a number
    assert "mixup" not in space and space["freeze_epochs"] == {"low": 0, "high": 1}
    assert space["weight_decay"]["low"] == pytest.approx(recipe_centre(base).weight_decay / 10)  # untouched
    for bad in ("output_dir: {choices: [a]}", "lr: 0.1", "no_such_option: {choices: [1]}",
                "lr: {low: 0.1, high: 0.01}"):
        path.write_text(bad)
        with pytest.raises(UserError):
            load_space(base, str(path))


def test_sweep_refuses_a_trial_output_dir_or_push_in_one_line(tmp_path):
    for flags in (["--output-dir", tmp_path / "x"], ["--push-to-hub", "me/x"]):
        result = run_script("sweep.py", "--output-dir", tmp_path / "sweep", "--", *flags, check=False)
        assert result.returncode == 2
        assert result.stderr.strip().splitlines() == [result.stderr.strip()] and result.stderr.startswith("error: ")
        assert flags[0] in result.stderr


@pytest.mark.slow
def test_a_sweep_on_two_processes_prunes_on_both(photos, space_file, tmp_path):
    """torchrun (gloo): each trial trains on both ranks; a pruned trial stops after the same epoch on each (a rank
    that went on alone would hang in the next collective), and the next trial starts on both."""
    output_dir = tmp_path / "sweep"
    result = run_script("sweep.py", *sweep_args(output_dir, photos, space_file, 4), processes=2, timeout=600)
    rows = trials_table(output_dir)
    assert [row["state"] for row in rows].count("PRUNED") >= 1, rows
    assert all(row["state"] in ("COMPLETE", "PRUNED") for row in rows), rows
    for row in rows:
        config = json.loads((Path(row["run_dir"]) / "run_config.json").read_text())
        assert config["num_processes"] == 2
        assert (Path(row["run_dir"]) / "metrics.json").is_file() == (row["state"] == "COMPLETE")
    assert started_trials(result.stdout) == [0, 1, 2, 3]


def test_a_diverging_trial_fails_and_the_sweep_goes_on(photos, tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({**SPACE, "lr": {"choices": [1.0e6]}}))
    output_dir = tmp_path / "sweep"
    result = run_script("sweep.py", *sweep_args(output_dir, photos, space, 2))
    rows = trials_table(output_dir)
    assert [row["state"] for row in rows] == ["FAIL", "FAIL"], rows
    study = optuna.load_study(study_name="sweep", storage=f"sqlite:///{tmp_path / 'sweep.db'}")
    assert all(trial.user_attrs["failure"].startswith("non-finite loss") for trial in study.trials)
    assert not (output_dir / "best.yaml").exists() and "no trial completed" in result.stdout


def _open_study_at_once(barrier, storages: list[str], errors) -> None:
    """One sweep process's start: wait for the others, then open each study at the same moment they do."""
    from hf_finetune.sweep.search import SweepSettings, load_study

    for storage in storages:
        settings = SweepSettings(storage=storage, study_name="sweep", output_dir=Path("."), n_trials=1,
                                 timeout=None, seed=0, prune_startup_trials=1, prune_warmup_epochs=1, heartbeat=60)
        barrier.wait()
        try:
            load_study(settings, ["--epochs", "1"], "eval_loss")
        except UserError as error:
            errors.put(str(error))


def test_sweeps_that_start_together_on_a_new_storage_all_open_the_study(tmp_path):
    """Optuna creates a new storage's tables check-then-create (optuna/optuna#4621): sweeps started at once on one
    new database raced, and the losers stopped with 'table ... already exists' (CI, stop 25). Four processes open
    ten new databases together; before the fix most rounds had a loser."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    barrier, errors = context.Barrier(4), context.Queue()
    storages = [f"sqlite:///{tmp_path / f'sweep{index}.db'}" for index in range(10)]
    processes = [context.Process(target=_open_study_at_once, args=(barrier, storages, errors)) for _ in range(4)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=300)
    assert [process.exitcode for process in processes] == [0] * 4
    failures = []
    while not errors.empty():
        failures.append(errors.get())
    assert not failures, failures
    for storage in storages:  # one study in each, opened by all four
        assert [study.study_name for study in optuna.get_all_study_summaries(storage)] == ["sweep"]
