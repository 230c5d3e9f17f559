"""Killed, preempted, diverging and re-run jobs, on real processes: resume must be exact and safe."""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import REPO_ROOT, TORCHRUN, make_image_folder, run_script
from hub_server import free_port
from safetensors.torch import load_file

from hf_finetune.train.checkpoints import list_checkpoints

SCRIPT = str(REPO_ROOT / "scripts" / "finetune.py")


@pytest.fixture
def photos(tmp_path):
    return make_image_folder(tmp_path / "photos", per_class=(24, 4))  # 48 train images: 12 batches of 4


def _args(photos, out, *extra, workers=0):
    return ["--data-dir", str(photos), "--model", "test_resnet", "--no-pretrained", "--batch-size", "4",
            "--num-workers", str(workers), "--img-size", "64", "--output-dir", str(out), *map(str, extra)]


def _start(argv, launcher=(sys.executable,), new_session=False):
    # TQDM_MININTERVAL=0: the progress bar shows every batch, so _signal_when_progress sees the count it waits
    # for even when a whole epoch takes less than tqdm's default 0.1 s between refreshes (seen on a fast idle CPU).
    # new_session: the run leads its own process group, as a job under SLURM or in a container does.
    return subprocess.Popen([*launcher, SCRIPT, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1", "TQDM_MININTERVAL": "0"},
                            start_new_session=new_session)


def _signal_when_progress(process, batches: int, sig=signal.SIGTERM, target_pid=None, group=False) -> str:
    """Send `sig` once the progress bar shows `batches` done in epoch 1 (to the process's whole group with
    `group`, as SLURM and Kubernetes do); return everything stderr said."""
    seen = ""
    while process.poll() is None:
        seen += process.stderr.read(1)
        progress = re.findall(r"epoch 1:\s+\d+%\|[^|]*\|\s*(\d+)/", seen)
        if progress and int(progress[-1]) >= batches:
            if group:
                os.killpg(os.getpgid(process.pid), sig)
            else:
                os.kill(target_pid or process.pid, sig)
            break
    out, err = process.communicate(timeout=300)
    return seen + err


def _same_state(first: Path, second: Path, stateful_optimizer: bool = True) -> None:
    """Model and optimizer state bitwise equal. A stateful optimizer (momentum, AdamW) must have state to
    compare: plain SGD has none, and a comparison over nothing proves nothing."""
    a, b = load_file(first / "model.safetensors"), load_file(second / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), "model.safetensors differs"
    a, b = (torch.load(folder / "optimizer.pt", weights_only=True) for folder in (first, second))
    assert a["state"].keys() == b["state"].keys()
    tensors = [(name, x, b["state"][index][name]) for index, state in a["state"].items()
               for name, x in state.items() if isinstance(x, torch.Tensor)]
    assert len(tensors) >= len(a["state"]) >= (1 if stateful_optimizer else 0), "no optimizer state compared"
    for name, x, y in tensors:
        assert torch.equal(x, y), f"optimizer state {name} differs"


def _same_history(first: Path, second: Path) -> None:
    """Every per-epoch metric of two runs' metrics.json agrees (timings aside)."""
    keys = ("epoch", "train_loss", "train_acc", "eval_loss", "eval_acc", "train_count", "eval_count")
    a, b = (json.loads((out / "metrics.json").read_text())["history"] for out in (first, second))
    assert len(a) == len(b)
    for row_a, row_b in zip(a, b):
        assert {k: row_a[k] for k in keys} == pytest.approx({k: row_b[k] for k in keys}, rel=1e-9, abs=1e-12)


# Stateful optimizers: momentum buffers and AdamW's moments must resume bitwise too; so must every regularizer
# that draws random numbers (Mixup/CutMix from numpy, RandAugment per sample, drop path from torch), in one case
# to keep the suite's time: the whole model trains from epoch 1 there, the AdamW case warms up the head first.
OPTIMIZERS = {"regularizers": ["--momentum", "0.9", "--freeze-epochs", "0", "--label-smoothing", "0.1",
                               "--mixup", "0.2", "--cutmix", "1.0", "--auto-augment", "rand", "--drop-path", "0.1",
                               "--class-weights", "balanced"],
              "adamw": ["--optimizer", "adamw", "--lr", "1e-3", "--freeze-epochs", "1"]}


@pytest.mark.slow
@pytest.mark.parametrize("workers, optimizer", [(0, "regularizers"), (2, "adamw")])
def test_sigterm_mid_epoch_then_resume_is_bitwise_identical(photos, tmp_path, workers, optimizer):
    # Batch 2: 24 steps an epoch, so a SIGTERM sent once 3 are done still lands mid-epoch when this test, reading
    # the progress bar under a loaded machine, lags many steps behind the run (seen at batch 4: 9 steps late).
    argv = lambda out: _args(photos, out, "--epochs", "2", "--batch-size", "2", *OPTIMIZERS[optimizer],  # noqa: E731
                             workers=workers)
    sigterm_mid_epoch_then_resume_matches_straight(argv, tmp_path)


def sigterm_mid_epoch_then_resume_matches_straight(argv, tmp_path) -> None:
    """Train argv(tmp_path/"straight") through; SIGTERM argv(tmp_path/"resumed") after 3 batches of epoch 0, run it
    again, and check both end with the same checkpointed state and history."""
    run_script("finetune.py", *argv(tmp_path / "straight"))
    interrupted = _start(argv(tmp_path / "resumed"))
    stderr = _signal_when_progress(interrupted, batches=3)
    assert interrupted.returncode == 75, stderr[-2000:]
    assert "stopped by SIGTERM" in stderr
    [checkpoint] = list_checkpoints(tmp_path / "resumed")
    assert re.match(r"epoch-0000-step-0000(0[3-9]|1\d|2[0-3])$", checkpoint.name), checkpoint.name
    result = run_script("finetune.py", *argv(tmp_path / "resumed"))
    assert "resumed from" in result.stdout
    _same_state(list_checkpoints(tmp_path / "straight")[-1], list_checkpoints(tmp_path / "resumed")[-1])
    _same_history(tmp_path / "straight", tmp_path / "resumed")


def test_sigterm_to_the_whole_process_group_with_loader_workers_saves_and_resumes(photos, tmp_path):
    """SLURM and Kubernetes signal every process of the job, DataLoader workers too: the workers must outlive
    it, so that the main process finishes its step, saves the checkpoint and exits 75."""
    argv = _args(photos, tmp_path / "out", "--epochs", "1", "--batch-size", "2", workers=2)
    interrupted = _start(argv, new_session=True)
    stderr = _signal_when_progress(interrupted, batches=3, group=True)
    assert interrupted.returncode == 75, stderr[-3000:]
    assert "stopped by SIGTERM" in stderr and "Traceback" not in stderr, stderr[-3000:]
    [checkpoint] = list_checkpoints(tmp_path / "out")
    assert re.match(r"epoch-0000-step-0000(0[3-9]|1\d|2[0-3])$", checkpoint.name), checkpoint.name
    result = run_script("finetune.py", *argv)
    assert "resumed from" in result.stdout and checkpoint.name in result.stdout
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["history"][0]["train_count"] == 48


@pytest.mark.slow
def test_sigterm_to_a_torchrun_jobs_process_group_saves_on_both_ranks_and_resumes(photos, tmp_path):
    """The same under torchrun, as a SLURM job step runs it: agent, ranks and their workers all get SIGTERM (the
    agent sends the ranks another, and exits 1 with its own SignalException: torchrun's, not ours)."""
    argv = _args(photos, tmp_path / "out", "--epochs", "1", workers=2)
    launcher = _start(argv, launcher=[*TORCHRUN, "2"], new_session=True)
    stderr = _signal_when_progress(launcher, batches=2, group=True)
    assert stderr.count("stopped by SIGTERM") == 2 and "DataLoader worker" not in stderr, stderr[-3000:]
    [checkpoint] = list_checkpoints(tmp_path / "out")
    assert checkpoint.name.startswith("epoch-0000-step-")
    assert {p.name for p in checkpoint.glob("rng-*.pt")} == {"rng-0.pt", "rng-1.pt"}
    result = run_script("finetune.py", *argv, processes=2)
    assert "resumed from" in result.stdout and checkpoint.name in result.stdout


def test_sigterm_to_one_rank_stops_both_and_resume_matches(photos, tmp_path):
    """Each rank's metric sums of the interrupted epoch are its own: the resumed metrics.json matches too."""
    argv = _args(photos, tmp_path / "two", "--epochs", "1", "--batch-size", "8", "--momentum", "0.9")
    launcher = _start(argv, launcher=[*TORCHRUN, "2"])
    seen = ""
    while launcher.poll() is None and not re.search(r"epoch 1:\s+\d+%\|[^|]*\|\s*[1-9]\d*/", seen):
        seen += launcher.stderr.read(1)
    os.kill(_worker_pids(launcher.pid)[-1], signal.SIGTERM)  # one rank only, as a preemption notice may
    started = time.time()
    launcher.communicate(timeout=120)
    assert launcher.returncode != 0 and time.time() - started < 60
    [checkpoint] = list_checkpoints(tmp_path / "two")
    assert {p.name for p in checkpoint.glob("rng-*.pt")} == {"rng-0.pt", "rng-1.pt"}, "both ranks stopped together"
    run_script("finetune.py", *argv, processes=2)
    run_script("finetune.py", *_args(photos, tmp_path / "straight", "--epochs", "1", "--batch-size", "8",
                                     "--momentum", "0.9"), processes=2)
    _same_state(list_checkpoints(tmp_path / "straight")[-1], list_checkpoints(tmp_path / "two")[-1])
    _same_history(tmp_path / "straight", tmp_path / "two")


def _worker_pids(parent: int) -> list[int]:
    """The launcher's child processes (the ranks), from /proc: whichever of its threads started them."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == parent:
            pids.append(int(stat.parent.name))
    return sorted(pids)


def _epochs_done(out: Path) -> int:
    checkpoints = list_checkpoints(out)
    return int(checkpoints[-1].name.split("-")[1]) if checkpoints else 0


@pytest.mark.slow
def test_sigkill_at_random_moments_and_mid_save_always_resumes(photos, tmp_path):
    out = tmp_path / "out"
    argv = _args(photos, out, "--epochs", "30", "--keep-checkpoints", "1")  # long enough to be killed 6 times
    chooser = random.Random(0)
    kills = 0
    for attempt in range(6):
        process = _start(argv)
        if attempt % 2 == 0:  # in the middle of a save: as soon as a staging folder appears
            while process.poll() is None and not list((out / "checkpoints").glob(".staging-*")):
                time.sleep(0.001)
        else:  # at a random moment of training, paced by its progress, not by how fast this machine is
            target = _epochs_done(out) + chooser.randint(1, 3)
            while process.poll() is None and _epochs_done(out) < target:
                time.sleep(0.01)
            time.sleep(chooser.uniform(0, 0.3))
        if process.poll() is None:
            process.kill()
            kills += 1
        process.communicate()
        for checkpoint in list_checkpoints(out):
            assert (checkpoint / "progress.json").is_file() and (checkpoint / "model.safetensors").is_file()
    assert kills >= 5
    run_script("finetune.py", *argv)
    assert len(json.loads((out / "metrics.json").read_text())["history"]) == 30


def test_broken_newest_checkpoint_is_skipped_loudly(photos, tmp_path):
    out = tmp_path / "out"
    run_script("finetune.py", *_args(photos, out, "--epochs", "2"))
    newest = list_checkpoints(out)[-1]
    (newest / "model.safetensors").write_bytes(b"torn write")
    (out / "metrics.json").unlink()
    result = run_script("finetune.py", *_args(photos, out, "--epochs", "2"))
    assert "SKIPPING BROKEN CHECKPOINT" in result.stderr and newest.name in result.stderr
    assert "1 epoch(s) and 0 batch(es) done" in result.stdout


@pytest.mark.parametrize("change", ["classes", "processes"])
def test_resume_with_other_classes_or_process_count_is_refused(photos, tmp_path, change):
    out = tmp_path / "out"
    run_script("finetune.py", *_args(photos, out, "--epochs", "1", "--batch-size", "8"))
    if change == "classes":
        other = make_image_folder(tmp_path / "other", classes=("cat", "dog", "emu"), per_class=(4, 2))
        result = run_script("finetune.py", *_args(other, out, "--epochs", "2", "--batch-size", "8"), check=False)
    else:
        result = run_script("finetune.py", *_args(photos, out, "--epochs", "2", "--batch-size", "8"), check=False,
                            processes=2)
    assert result.returncode != 0
    assert "cannot resume" in result.stderr and ("label_names" in result.stderr or "num_processes" in result.stderr)


def test_non_finite_loss_stops_every_rank_keeps_the_checkpoint_and_pushes_nothing(photos, tmp_path, hub, hub_env):
    tiny = make_image_folder(tmp_path / "tiny")
    out = tmp_path / "out"
    # A warm-up towards an absurd LR: finite for a few epochs, then the loss blows up.
    argv = ["--data-dir", tiny, "--model", "test_vit", "--no-pretrained", "--batch-size", "4", "--num-workers", "0",
            "--lr", "1e5", "--warmup-steps", "100", "--epochs", "6", "--output-dir", out,
            "--push-to-hub", "tester/diverged"]
    result = run_script("finetune.py", *argv, env=hub_env, check=False)
    assert result.returncode == 2 and "non-finite loss" in result.stderr and "Traceback" not in result.stderr
    assert not (out / "model.safetensors").exists() and not (out / "metrics.json").exists()
    assert list_checkpoints(out) and all((c / "progress.json").is_file() for c in list_checkpoints(out))
    assert not any("tester/diverged" in path for _, path, _ in hub.requests), "nothing may be pushed"
    both = run_script("finetune.py", *argv[:-2], "--batch-size", "8", "--output-dir", tmp_path / "two",
                      check=False, processes=2)
    assert both.returncode != 0 and both.stderr.count("non-finite loss") >= 2, both.stderr


def test_rerunning_a_finished_command_trains_and_pushes_nothing(photos, tmp_path, hub, hub_env):
    out = tmp_path / "out"
    argv = [*_args(photos, out, "--epochs", "1"), "--push-to-hub", "tester/idempotent"]
    run_script("finetune.py", *argv, env=hub_env)
    commits, model_mtime = len(hub.commits("tester/idempotent")), (out / "model.safetensors").stat().st_mtime_ns
    again = run_script("finetune.py", *argv, env=hub_env)
    assert "nothing to train" in again.stdout and "nothing to push" in again.stdout
    assert "epoch 1:" not in again.stdout
    assert len(hub.commits("tester/idempotent")) == commits
    assert (out / "model.safetensors").stat().st_mtime_ns == model_mtime


def test_a_malicious_pickle_in_a_checkpoint_cannot_run_code(photos, tmp_path):
    out = tmp_path / "out"
    # d2l: a constant schedule, so the run may continue to 2 epochs (the resume identity refuses that on cosine)
    # and reaches the checkpoint's optimizer.pt.
    run_script("finetune.py", *_args(photos, out, "--epochs", "1", "--recipe", "d2l"))
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    checkpoint = list_checkpoints(out)[-1]
    torch.save({"state": Exploit()}, checkpoint / "optimizer.pt")
    (out / "metrics.json").unlink()
    result = run_script("finetune.py", *_args(photos, out, "--epochs", "2", "--recipe", "d2l"), check=False)
    assert not marker.exists(), "unpickling ran code"
    assert result.returncode == 2 and "optimizer.pt" in result.stderr and "Traceback" not in result.stderr


def test_two_processes_match_one_with_double_batch_or_accumulation(tmp_path):
    folder = make_image_folder(tmp_path / "data", per_class=(8, 5))  # 16 train images: 2 updates of 8
    # fp32: the claim is float-tolerance agreement; bf16 rounds the differently-summed gradients far coarser.
    common = ["--data-dir", folder, "--model", "test_vit", "--no-pretrained", "--num-workers", "0", "--epochs", "2",
              "--img-size", "32", "--batch-size", "8", "--lr-scheduler", "cosine", "--warmup-steps", "1",
              "--mixed-precision", "no"]
    run_script("finetune.py", *common, "--output-dir", tmp_path / "one")
    run_script("finetune.py", *common, "--gradient-accumulation-steps", "2", "--output-dir", tmp_path / "accumulated")
    run_script("finetune.py", *common, "--output-dir", tmp_path / "two", processes=2)
    reference = load_file(tmp_path / "one" / "model.safetensors")
    for run in ("accumulated", "two"):
        weights = load_file(tmp_path / run / "model.safetensors")
        for key, value in reference.items():
            assert torch.allclose(weights[key], value, rtol=1e-4, atol=1e-6), (run, key)
    trajectories = {run: [row["lr"] for row in json.loads((tmp_path / run / "metrics.json").read_text())["history"]]
                    for run in ("one", "accumulated", "two")}
    assert trajectories["one"] == trajectories["accumulated"] == trajectories["two"]
    counts = {run: json.loads((tmp_path / run / "metrics.json").read_text())["final"]["eval_count"]
              for run in ("one", "accumulated", "two")}
    assert set(counts.values()) == {10}


def test_training_metrics_count_each_image_once_when_the_last_batch_is_padded(tmp_path):
    """18 train images, global batch 8: two processes' last round holds 2 images, which Accelerate pads to 8
    with repeats from the start of the epoch. The epoch's training metrics are measured before each update,
    on weights both runs share until that last update, so they must be one process's: 18 images, same loss."""
    folder = make_image_folder(tmp_path / "data", per_class=(9, 2))
    common = ["--data-dir", folder, "--model", "test_vit", "--no-pretrained", "--num-workers", "0", "--epochs", "1",
              "--img-size", "32", "--batch-size", "8", "--mixed-precision", "no", "--freeze-epochs", "0"]
    run_script("finetune.py", *common, "--output-dir", tmp_path / "one")
    run_script("finetune.py", *common, "--output-dir", tmp_path / "two", processes=2)
    one, two = (json.loads((tmp_path / run / "metrics.json").read_text())["history"][0] for run in ("one", "two"))
    assert one["train_count"] == two["train_count"] == 18
    assert two["train_loss"] == pytest.approx(one["train_loss"], rel=1e-5)
    assert two["train_acc"] == one["train_acc"]


def test_resume_none_moves_the_previous_run_aside_and_owns_the_folder(photos, tmp_path):
    out = tmp_path / "out"
    run_script("finetune.py", *_args(photos, out, "--epochs", "3"))  # an earlier run: checkpoints of epochs 2, 3
    old_metrics = (out / "metrics.json").read_text()
    # The d2l recipe's constant schedule: a later command may ask for more epochs of the same run.
    fresh = run_script("finetune.py", *_args(photos, out, "--epochs", "1", "--seed", "1", "--recipe", "d2l",
                                             "--resume", "none"))
    moved = re.search(r"moved the previous run's checkpoints and results to (\S+)", fresh.stderr)
    assert moved, fresh.stderr
    aside = Path(moved.group(1))
    assert aside.parent == out and (aside / "metrics.json").read_text() == old_metrics
    assert [path.name for path in list_checkpoints(aside)] == ["epoch-0002-step-000000", "epoch-0003-step-000000"]
    assert [path.name for path in list_checkpoints(out)] == ["epoch-0001-step-000000"], "the new run's own"
    first_epoch = json.loads((out / "metrics.json").read_text())["history"][0]
    # A later --resume auto continues the new run, not the old one.
    later = run_script("finetune.py", *_args(photos, out, "--epochs", "2", "--seed", "1", "--recipe", "d2l"))
    assert "resumed from" in later.stdout and "epoch-0001-step-000000" in later.stdout
    history = json.loads((out / "metrics.json").read_text())["history"]
    assert [row["epoch"] for row in history] == [1, 2] and history[0] == first_epoch


def _node_args(photos: Path, tmp_path: Path, run: str, node: int) -> list:
    """One simulated machine: its own copy of the photos, output folder and cache (no shared disk)."""
    disk = tmp_path / f"node{node}"
    if not (disk / "photos").is_dir():
        shutil.copytree(photos, disk / "photos")
    return _args(disk / "photos", disk / run, "--epochs", "2", "--batch-size", "8", "--momentum", "0.9",
                 "--cache-dir", disk / "cache")


def _start_two_nodes(photos: Path, tmp_path: Path, run: str) -> list[subprocess.Popen]:
    """Two torch.distributed.run agents, one process each, meeting at a c10d TCPStore on 127.0.0.1."""
    port = free_port()
    agents = []
    for node in (0, 1):
        launcher = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
                    "--node-rank", str(node), "--master-addr", "127.0.0.1", "--master-port", str(port)]
        agents.append(_start(_node_args(photos, tmp_path, run, node), launcher=launcher))
    return agents


def _finish(agents: list[subprocess.Popen]) -> list[str]:
    outputs = [agent.communicate(timeout=600) for agent in agents]
    for agent, (out, err) in zip(agents, outputs):
        assert agent.returncode == 0, f"stdout:\n{out}\nstderr:\n{err}"
    return [out for out, _ in outputs]


@pytest.mark.slow
def test_two_nodes_without_a_shared_disk_train_stop_and_resume_exactly(photos, tmp_path):
    _finish(_start_two_nodes(photos, tmp_path, "straight"))
    node0, node1 = tmp_path / "node0", tmp_path / "node1"
    assert (node0 / "straight" / "model.safetensors").is_file() and list_checkpoints(node0 / "straight")
    assert not list_checkpoints(node1 / "straight") and not (node1 / "straight" / "model.safetensors").exists()
    assert any((node1 / "cache").iterdir()), "node 1 decoded its own images into its own cache"

    agents = _start_two_nodes(photos, tmp_path, "stopped")
    seen = ""  # node 1's progress bar: its worker is its local main process
    while agents[1].poll() is None and not re.search(r"epoch 1:\s+\d+%\|[^|]*\|\s*[2-9]/", seen):
        seen += agents[1].stderr.read(1)
    os.kill(_worker_pids(agents[1].pid)[-1], signal.SIGTERM)  # preemption of the second machine
    outputs = [agent.communicate(timeout=300) for agent in agents]
    for agent, (_, err) in zip(agents, outputs):
        assert agent.returncode != 0 and re.search(r"exitcode\s*:\s*75", err), err[-3000:]
    [checkpoint] = list_checkpoints(node0 / "stopped")
    assert checkpoint.name.startswith("epoch-0000-step-")  # mid-epoch, on node 0 only
    assert not list_checkpoints(node1 / "stopped")

    _finish(_start_two_nodes(photos, tmp_path, "stopped"))  # the same two commands again
    _same_state(list_checkpoints(node0 / "straight")[-1], list_checkpoints(node0 / "stopped")[-1])
    _same_history(node0 / "straight", node0 / "stopped")


def test_resume_none_moves_an_earlier_export_and_push_record_aside(tmp_path):
    from hf_finetune.train.resume import move_previous_run_aside

    out = tmp_path / "out"
    out.mkdir()
    names = ("model.safetensors", "metrics.json", "model.onnx", "preprocessor.json", "push.json")
    for name in names:
        (out / name).write_text(name)
    (out / "notes.txt").write_text("the user's own")
    aside = move_previous_run_aside(out)
    assert sorted(path.name for path in aside.iterdir()) == sorted(names)
    assert sorted(path.name for path in out.iterdir()) == sorted(["notes.txt", aside.name])
