"""Run under torchrun (one process per rank, gloo): read a streamed split whose labels are record ids through the
run's own stream loader, in two launches. `first OUT BATCHES`: read BATCHES batches per rank, save every rank's
loader state (gathered on rank 0, as the checkpoint does) and the ids read. `second OUT`: load the states, read on
to the end of the stream's epoch, save the ids read. The test compares them."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import datasets.config
import torch
from accelerate import PartialState
from accelerate.utils import broadcast_object_list, gather_object

from hf_finetune.config import FinetuneConfig
from hf_finetune.data.images import ImageSettings
from hf_finetune.data.loaders import create_transforms
from hf_finetune.data.sources import load_image_data
from hf_finetune.data.stream_loader import create_stream_loader

# datasets sleeps this long each time a stream's pass over its shards ends (a pyarrow thread-shutdown workaround):
# nothing in a long stream, most of a test's time here.
datasets.config.SLEEP_TIME_ON_THREADS_SHUTDOWN = 0
SETTINGS = ImageSettings.from_data_config({"input_size": (3, 32, 32), "crop_pct": 0.875, "interpolation": "bilinear",
                                           "mean": (0.5,) * 3, "std": (0.5,) * 3})


def stream_loader(shards: Path, rank: int, world_size: int, workers: int = 0, rounds=(10_000,)):
    config = FinetuneConfig(streaming=True, data_files=str(shards / "train-*.parquet"),
                            eval_data_files=str(shards / "val-*.parquet"), max_eval_samples=2)
    data = load_image_data(config)
    return create_stream_loader(data.train, create_transforms(SETTINGS)[0], SETTINGS, 4, workers, 0, 5, 0.01, rank,
                                world_size, "cpu", list(rounds))


def read_ids(loader, batches=None) -> list[int]:
    """Ids of `batches` batches, or of the rest of the stream's current epoch."""
    ids, epoch = [], loader.stream_epoch
    for batch in iter(loader):
        if batches is None and loader.stream_epoch != epoch:
            break  # this batch already belongs to the next epoch
        ids += batch["label"].tolist()
        if batches is not None and len(ids) >= 4 * batches:
            break
    return ids


def main(step: str, out: Path, shards: Path, batches: int = 0) -> None:
    state = PartialState(cpu=True)
    loader = stream_loader(shards, state.process_index, state.num_processes)
    if step == "first":
        ids = read_ids(loader, batches)
        states = gather_object([loader.state_dict()])
        if state.is_main_process:
            torch.save(states, out / "states.pt")
    else:
        states = [torch.load(out / "states.pt", weights_only=True) if state.is_main_process else None]
        broadcast_object_list(states)  # rank 0's disk only, as a checkpoint
        loader.load_state_dict(states[0][state.process_index])
        ids = read_ids(loader)
    every = gather_object([ids])
    if state.is_main_process:
        (out / f"{step}.json").write_text(json.dumps(every))


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), *map(int, sys.argv[4:]))
