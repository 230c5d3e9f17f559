"""--streaming runs end to end: resolution of their length, labels a stream cannot be scanned for, exact resume
after a SIGTERM, webdataset multi-label shards, and nothing written to disk but checkpoints and results."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import STREAMS_RESUME_EXACTLY, needs_stream_loader, resolved, run_script
from stream_data import image_records, write_parquet_shards, write_webdataset_shards
from test_reliability import sigterm_mid_epoch_then_resume_matches_straight

from hf_finetune.config import FinetuneConfig
from hf_finetune.data.sources import load_image_data
from hf_finetune.errors import UserError

NAMES = ["cat", "dog"]


def _parquet(folder: Path, shards=4, per_shard=12) -> Path:
    write_parquet_shards(folder, image_records(shards * per_shard, NAMES), shards, NAMES)
    write_parquet_shards(folder, image_records(6, NAMES, first=1000), 1, NAMES, split="val")
    return folder


def _args(shards: Path, out: Path, *extra, workers=0) -> list:
    return list(map(str, ["--streaming", "--data-files", shards / "train-*.parquet", "--eval-data-files",
                          shards / "val-*.parquet", "--model", "test_resnet", "--no-pretrained", "--img-size", "64",
                          "--num-workers", workers, "--output-dir", out, "--calibrate", "none", "--shuffle-buffer",
                          "8", *extra]))


def test_the_length_is_max_steps_or_epochs_of_a_known_size_resolved_once():
    stream = dict(streaming=True, dataset_name="org/photos", batch_size=16)
    config = resolved(FinetuneConfig(**stream, max_steps=100, checkpoint_every=30), train_size=None)
    assert (config.max_steps, config.checkpoint_every, config.epochs) == (100, 30, 4)  # rounds: 30, 30, 30, 10
    assert config.warmup_steps == 10  # the lp-ft recipe's 10% of --max-steps
    assert config.recipe_values["epochs"] == 4 and config.recipe_values["warmup_steps"] == 10
    config = resolved(FinetuneConfig(**stream, epochs=3), train_size=160)
    assert (config.max_steps, config.checkpoint_every, config.epochs) == (30, 10, 3)  # 10 steps a pass
    with pytest.raises(UserError, match="size is unknown .* give --max-steps N"):
        resolved(FinetuneConfig(**stream), train_size=None)
    with pytest.raises(UserError, match="--max-steps: for --streaming runs"):
        FinetuneConfig(max_steps=5).validate()
    with pytest.raises(UserError, match="cannot be counted or subsampled"):
        FinetuneConfig(**stream, max_train_samples=10).validate()


def test_labels_that_are_no_classlabel_need_label_names_since_a_stream_cannot_be_scanned(tmp_path):
    first_class_only = lambda i: [0]  # noqa: E731
    write_webdataset_shards(tmp_path, image_records(6, label_of=first_class_only), 2)
    write_webdataset_shards(tmp_path, image_records(2, first=10, label_of=first_class_only), 1, split="val")
    options = dict(streaming=True, data_files=str(tmp_path / "train-*.tar"),
                   eval_data_files=str(tmp_path / "val-*.tar"), max_eval_samples=2)
    with pytest.raises(UserError, match="a stream cannot be scanned for its label names: give --label-names"):
        load_image_data(FinetuneConfig(**options))
    data = load_image_data(FinetuneConfig(**options, label_names="a,b"))
    assert data.task == "multi-label" and data.label_names == ["a", "b"] and data.eval["label"] == [[0], [0]]


@pytest.mark.skipif(STREAMS_RESUME_EXACTLY, reason="the refusal is for datasets < 5.1 (the floors step's 4.0)")
def test_streaming_on_a_datasets_that_cannot_resume_a_stream_exactly_is_refused_in_one_line(tmp_path):
    """Before datasets 5.1 a checkpoint's stream state was one record past what was trained on: a resumed run
    skipped it (found by the resume test on the floors' datasets 4.0)."""
    shards = _parquet(tmp_path / "shards")
    result = run_script("finetune.py", *_args(shards, tmp_path / "out", "--max-steps", "2"), check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert "error: --streaming needs datasets >= 5.1" in result.stderr


@needs_stream_loader
def test_a_webdataset_multi_label_stream_trains_with_a_streamed_eval_split(tmp_path):
    labels = lambda i: [[0], [1], [0, 2]][i % 3]  # noqa: E731  (a, b, a c)
    write_webdataset_shards(tmp_path / "shards", image_records(12, label_of=labels), 2)
    write_webdataset_shards(tmp_path / "shards", image_records(6, first=100, label_of=labels), 1, split="val")
    result = run_script("finetune.py", "--streaming", "--data-files", tmp_path / "shards/train-{000000..000001}.tar",
                        "--eval-data-files", tmp_path / "shards/val-*.tar", "--label-names", "a,b,c",
                        "--max-eval-samples", "4", "--model", "test_resnet", "--no-pretrained", "--img-size", "48",
                        "--batch-size", "4", "--max-steps", "4", "--checkpoint-every", "2", "--num-workers", "0",
                        "--output-dir", tmp_path / "out", "--calibrate", "none")
    run = json.loads((tmp_path / "out" / "run_config.json").read_text())
    assert run["task"] == "multi_label" and run["data"]["streaming"] and run["data"]["eval_size"] == 4
    history = json.loads((tmp_path / "out" / "metrics.json").read_text())["history"]
    assert [row["train_count"] for row in history] == [8, 8], result.stdout  # 2 rounds of 2 steps of 4


@pytest.mark.slow
@needs_stream_loader
def test_sigterm_mid_round_then_resume_is_bitwise_identical(tmp_path):
    shards = _parquet(tmp_path / "shards")  # 48 records: 24 batches of 2, read by 2 workers
    argv = lambda out: _args(shards, out, "--batch-size", "2", "--max-steps", "48", "--checkpoint-every", "24",  # noqa
                             "--momentum", "0.9", "--freeze-epochs", "0", "--auto-augment", "rand", workers=2)
    sigterm_mid_epoch_then_resume_matches_straight(argv, tmp_path)


def _tree(*folders: Path) -> dict:
    return {str(path): path.stat().st_size for folder in folders for path in sorted(folder.rglob("*"))
            if path.is_file()}


@pytest.mark.slow
@needs_stream_loader
def test_four_times_the_steps_write_nothing_more_than_checkpoints(tmp_path):
    shards = _parquet(tmp_path / "shards")
    cache, hf_home = tmp_path / "cache", Path(os.environ["HF_HOME"])
    hf_home.mkdir(parents=True, exist_ok=True)
    run_script("finetune.py", *_args(shards, tmp_path / "short", "--batch-size", "4", "--max-steps", "4",
                                     "--cache-dir", cache))
    before = _tree(cache, hf_home, shards)
    run_script("finetune.py", *_args(shards, tmp_path / "long", "--batch-size", "4", "--max-steps", "16",
                                     "--checkpoint-every", "4", "--cache-dir", cache))
    assert _tree(cache, hf_home, shards) == before, "the stream wrote to the caches or beside its shards"
    outputs = [{path.relative_to(tmp_path / run).parts[0] for path in (tmp_path / run).rglob("*") if path.is_file()}
               for run in ("short", "long")]
    assert outputs[0] == outputs[1] and "checkpoints" in outputs[1]


def test_the_readmes_folder_to_parquet_snippet_makes_shards_a_stream_reads(tmp_path, monkeypatch):
    from conftest import REPO_ROOT, make_image_folder

    readme = (REPO_ROOT / "README.md").read_text()
    section = readme[readme.index("## Data larger than the disk"):]
    snippet = section[section.index("```python\n") + 10:section.index("```\n", section.index("```python"))]
    make_image_folder(tmp_path / "photos", per_class=(4, 2))
    monkeypatch.chdir(tmp_path)
    exec(snippet, {})
    options = dict(streaming=True, data_files="shards/train-*.parquet", eval_data_files="shards/validation-*.parquet")
    data = load_image_data(FinetuneConfig(**options))
    records = list(data.train)
    assert data.label_names == ["cat", "dog"] and len(records) == 8 and len(data.eval) == 4
    assert all(record["image"]["bytes"] and record["label"] in (0, 1) for record in records)


@pytest.mark.slow
@needs_stream_loader
def test_two_processes_on_shards_that_do_not_divide_run_the_same_steps_and_warn(tmp_path):
    """3 shards over 2 ranks: datasets gives each rank every other record (15), so passes end mid-batch at other
    steps on each rank; the run must neither hang nor miscount."""
    shards = _parquet(tmp_path / "shards", shards=3, per_shard=10)
    result = run_script("finetune.py", *_args(shards, tmp_path / "out", "--batch-size", "4", "--max-steps", "10",
                                              "--checkpoint-every", "5"), processes=2)
    assert "not a multiple of 2 process(es)" in result.stderr and "every process read every record" in result.stderr
    history = json.loads((tmp_path / "out" / "metrics.json").read_text())["history"]
    assert [row["epoch"] for row in history] == [1, 2]
    assert sum(row["train_count"] for row in history) == 38  # 2 x (15 + 4): each rank's pass ends on a batch of 1


@pytest.mark.slow
@needs_stream_loader
def test_two_processes_stopped_by_sigterm_resume_their_streams_bitwise(tmp_path):
    """torchrun, 2 ranks: SIGTERM to the job's process group mid-round; both ranks save their loader state into
    the checkpoint, and the rerun ends bitwise equal to an uninterrupted 2-process run."""
    import re

    from conftest import TORCHRUN
    from test_reliability import _same_history, _same_state, _signal_when_progress, _start

    from hf_finetune.train.checkpoints import list_checkpoints

    shards = _parquet(tmp_path / "shards")  # 4 shards: 2 a rank, 24 records, 12 steps of 2 per rank and pass
    argv = lambda out: _args(shards, out, "--batch-size", "4", "--max-steps", "16", "--checkpoint-every", "8",  # noqa
                             "--momentum", "0.9", "--freeze-epochs", "0")
    run_script("finetune.py", *argv(tmp_path / "straight"), processes=2)
    launcher = _start(argv(tmp_path / "stopped"), launcher=[*TORCHRUN, "2"], new_session=True)
    stderr = _signal_when_progress(launcher, batches=2, group=True)
    assert stderr.count("stopped by SIGTERM") == 2, stderr[-3000:]
    [checkpoint] = list_checkpoints(tmp_path / "stopped")
    assert re.match(r"epoch-0000-step-00000[2-7]$", checkpoint.name), checkpoint.name
    assert {p.name for p in checkpoint.glob("loader-*.pt")} == {"loader-0.pt", "loader-1.pt"}
    result = run_script("finetune.py", *argv(tmp_path / "stopped"), processes=2)
    assert "resumed from" in result.stdout
    _same_state(list_checkpoints(tmp_path / "straight")[-1], list_checkpoints(tmp_path / "stopped")[-1])
    _same_history(tmp_path / "straight", tmp_path / "stopped")


@needs_stream_loader
def test_a_hub_dataset_streams_over_http_into_a_run(tmp_path, hub, hub_dataset, hub_env):
    """--dataset-name with --streaming, the way hf://datasets/... is read: shards fetched by Range from the local
    Hub, labels from the repo's ClassLabel feature, the validation split through the decode-once cache."""
    repo = hub_dataset("tests/photos-run", train=24, validation=6, num_shards=2)
    seen = len(hub.requests)
    run_script("finetune.py", "--streaming", "--dataset-name", repo, "--model", "test_resnet", "--no-pretrained",
               "--img-size", "48", "--batch-size", "4", "--max-steps", "6", "--checkpoint-every", "3",
               "--num-workers", "0", "--output-dir", tmp_path / "out", "--cache-dir", tmp_path / "cache",
               "--calibrate", "none", env=hub_env)
    run = json.loads((tmp_path / "out" / "run_config.json").read_text())
    assert run["data"]["streaming"] and run["label_names"] == ["cat", "dog", "bird"]
    history = json.loads((tmp_path / "out" / "metrics.json").read_text())["history"]
    assert [row["train_count"] for row in history] == [12, 12] and history[-1]["eval_count"] == 6
    shard_reads = [(method, path, status) for method, path, status in hub.requests[seen:]
                   if "/datasets/tests/photos-run/resolve/" in path and "train-" in path]
    assert shard_reads and all(status in (200, 206) for _, _, status in shard_reads)
