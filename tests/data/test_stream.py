"""--streaming's loader: every rank reads its own records, a resumed epoch continues exactly (no record twice,
none skipped, in the uninterrupted order), bad records are skipped under --max-bad-fraction, memory stays flat."""

from __future__ import annotations

import itertools
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO_ROOT, TORCHRUN, needs_stream_loader
from hub_server import free_port
from stream_data import image_records, write_parquet_shards
from stream_ids import read_ids, stream_loader

from hf_finetune.errors import UserError

pytestmark = needs_stream_loader
IDS = 24  # 4 train shards of 6 records; a record's label is its id
SCRIPT = str(REPO_ROOT / "tests" / "stream_ids.py")


def write_id_shards(folder: Path, train_shards: int, per_shard: int, val: int, truncated=()) -> Path:
    """train-*.parquet: train_shards x per_shard records, then val-*.parquet: `val` more; each record's label is
    its id (one class per record)."""
    ids = train_shards * per_shard
    names = [f"id{i}" for i in range(ids + val)]
    same_as_id = lambda i: i  # noqa: E731
    write_parquet_shards(folder, image_records(ids, names, label_of=same_as_id, truncated=truncated), train_shards,
                         names)
    write_parquet_shards(folder, image_records(val, names, first=ids, label_of=same_as_id), 1, names, split="val")
    return folder


@pytest.fixture
def shards(tmp_path) -> Path:
    return write_id_shards(tmp_path / "shards", 4, IDS // 4, 4)


@pytest.mark.parametrize("workers", [0, 2])
def test_a_stream_resumed_from_its_state_continues_in_the_same_order_with_the_same_crops(shards, workers):
    straight = stream_loader(shards, 0, 1, workers)
    batches = list(itertools.islice(straight, 9))  # 24 ids = 6 batches an epoch, on into the next
    first = stream_loader(shards, 0, 1, workers)
    list(itertools.islice(first, 2))  # 8 records: into the second block of 5
    state = first.state_dict()
    resumed = stream_loader(shards, 0, 1, workers)
    resumed.load_state_dict(state)
    for expected, batch in zip(batches[2:], resumed):
        assert torch.equal(expected["label"], batch["label"]) and torch.equal(expected["pixel_values"],
                                                                              batch["pixel_values"])
    epoch0 = [i for batch in batches[:6] for i in batch["label"].tolist()]
    assert sorted(epoch0) == list(range(IDS)) and epoch0 != list(range(IDS)), "every record once, shuffled"


def test_each_epoch_is_shuffled_anew_and_the_same_for_the_same_seed(shards):
    def two_epochs():  # 24 ids: 6 full batches an epoch
        ids = [batch["label"].tolist() for batch in itertools.islice(stream_loader(shards, 0, 1), 12)]
        return [[i for batch in ids[:6] for i in batch], [i for batch in ids[6:] for i in batch]]

    epochs = two_epochs()
    assert all(sorted(epoch) == list(range(IDS)) for epoch in epochs), "each record once an epoch"
    assert epochs[0] != epochs[1] and two_epochs() == epochs


def test_with_loader_workers_each_epochs_order_is_the_same_every_time(shards):
    """datasets' set_epoch adds to a counter all loader workers share: workers that each set it could leave one on
    another epoch's shard order, a few epochs in a hundred (a resumed epoch then reads other records than the
    uninterrupted one did). Each of 24 epochs must come out the same in two runs."""
    def epochs():  # 2 workers x 12 records: 6 full batches an epoch
        return [batch["label"].tolist() for batch in itertools.islice(stream_loader(shards, 0, 1, 2), 6 * 24)]

    assert epochs() == epochs()


def test_a_rank_whose_part_ends_starts_its_next_epoch_within_the_round(tmp_path):
    """3 shards over 2 ranks (a warning: uneven) still give every rank its round's batches."""
    shards = write_id_shards(tmp_path / "shards", 3, 4, 2)
    loaders = [stream_loader(shards, rank, 2, rounds=(7,)) for rank in (0, 1)]
    counts = [len(list(loader)) for loader in loaders]
    assert counts == [7, 7] and all(loader.stream_epoch >= 1 for loader in loaders)


def _launch(processes_or_node, step, out, shards, *extra, nodes=False, port=None):
    """tests/stream_ids.py STEP under torchrun: N processes here, or node N of two (nodes=True)."""
    if nodes:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
                    "--node-rank", str(processes_or_node), "--master-addr", "127.0.0.1", "--master-port", str(port)]
    else:
        launcher = [*TORCHRUN, str(processes_or_node)]
    return subprocess.Popen([*launcher, SCRIPT, step, str(out), str(shards), *map(str, extra)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait(*launched):
    for process in launched:
        out, err = process.communicate(timeout=300)
        assert process.returncode == 0, err[-3000:]


def _check_resumed_epoch(out: Path, shards: Path, world: int) -> None:
    first, second = (json.loads((out / f"{step}.json").read_text()) for step in ("first", "second"))
    for rank in range(world):
        straight = read_ids(stream_loader(shards, rank, world))
        assert first[rank] + second[rank] == straight, f"rank {rank}: the resumed epoch is the uninterrupted one"
    every = [i for rank in range(world) for i in first[rank] + second[rank]]
    assert sorted(every) == list(range(IDS)), "no record seen twice, none skipped, over all ranks"


@pytest.mark.slow
def test_two_processes_resume_their_epoch_exactly(shards, tmp_path):
    """One process: the in-process tests above; here torchrun's two ranks, each its own stream state."""
    _wait(_launch(2, "first", tmp_path, shards, 1))
    _wait(_launch(2, "second", tmp_path, shards))
    _check_resumed_epoch(tmp_path, shards, 2)


@pytest.mark.slow
def test_two_nodes_without_a_shared_disk_resume_their_epoch_exactly(shards, tmp_path):
    disks = [tmp_path / f"node{node}" for node in (0, 1)]
    for disk in disks:
        shutil.copytree(shards, disk / "shards")
    for step, extra in (("first", (1,)), ("second", ())):
        port = free_port()
        _wait(*[_launch(node, step, disks[node], disks[node] / "shards", *extra, nodes=True, port=port)
                for node in (0, 1)])
    assert not (disks[1] / "states.pt").exists()
    _check_resumed_epoch(disks[0], shards, 2)


def test_unreadable_records_are_skipped_and_too_many_stop_the_stream(tmp_path, caplog):
    loader = stream_loader(write_id_shards(tmp_path / "shards", 2, 5, 2, truncated={3}), 0, 1)
    assert sorted(read_ids(loader)) == [0, 1, 2, 4, 5, 6, 7, 8, 9]
    assert "skipping unreadable streamed record" in caplog.text
    loader.samples.max_bad_fraction = 0.0
    with pytest.raises(UserError, match=r"^1 of the first \d+ streamed records are unreadable"):
        read_ids(loader)


@pytest.mark.slow
def test_peak_memory_stays_flat_as_the_stream_runs_four_times_longer(shards):
    """The loader alone, in a fresh process each: what grows with the steps would be the stream's."""
    code = ("import resource, sys; sys.path.insert(0, 'tests'); from stream_ids import stream_loader; "
            "loader = stream_loader(__import__('pathlib').Path(sys.argv[1]), 0, 1, rounds=(int(sys.argv[2]),)); "
            "[None for _ in loader]; print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)")
    peaks = [int(subprocess.run([sys.executable, "-c", code, str(shards), str(steps)], capture_output=True,
                                text=True, check=True, cwd=REPO_ROOT).stdout.split()[-1]) for steps in (30, 120)]
    assert peaks[1] <= 1.1 * peaks[0], peaks


def test_a_state_saved_with_another_worker_count_is_refused_in_one_line(shards):
    """Workers split the shards between them: another count would read other records from each position."""
    state = stream_loader(shards, 0, 1, 0).state_dict()
    with pytest.raises(UserError, match=r"^the checkpoint's stream was read by 0 loader worker\(s\) per process: "
                                        r"resume with --num-workers 0$"):
        stream_loader(shards, 0, 1, 2).load_state_dict(state)
