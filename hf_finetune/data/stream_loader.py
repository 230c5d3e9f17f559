"""The streamed training split as batches: read, shuffled, decoded and augmented in the DataLoader workers, in
rounds of a fixed number of steps, resumable exactly from a checkpoint (--streaming).

Each rank reads its own shards (`datasets.distributed.split_dataset_by_node`), each of its workers its own part of
those (datasets shards a stream over torch's workers), and datasets orders the shards per (seed, epoch) (`shuffle`
+ `set_epoch`). datasets' record buffer cannot resume: its contents are not saved, so the records in it at a
checkpoint would be lost. Records are therefore shuffled here, in blocks (hand-written for that reason): a block
of --shuffle-buffer records is read, permuted by (seed, epoch, rank, worker, block) and yielded; the state is the
stream's position at the block's start and how many of the block were yielded. torchdata's StatefulDataLoader
carries each worker's state with the batches it yields, so a checkpoint resumes at the first record not trained
on. Augmentation is seeded per record from the same key, as sampling.py does for map-style data.
"""

from __future__ import annotations

import itertools
import logging
import warnings
from typing import Callable, Optional

import numpy as np
import torch
from torch.utils.data import IterableDataset

from hf_finetune.data.images import BadImageError, ImageSettings, decode_for_model
from hf_finetune.errors import UserError
from hf_finetune.hardware import one_thread

logger = logging.getLogger(__name__)

# The bad-record rule's floor: up to this fraction of the first MIN_RECORDS records may be bad before the stream
# has shown enough records for the fraction to mean anything.
MIN_RECORDS = 1000


class _NoBufferWarning(logging.Filter):
    """datasets warns on every resume that its shuffle buffer's contents are lost; with the one-record buffer used
    here (shard order only) there is nothing to lose, and the warning would say otherwise."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "shuffle buffer" not in record.getMessage()


logging.getLogger("datasets.iterable_dataset").addFilter(_NoBufferWarning())
# torchdata 0.11 calls a torch API that torch 2.14 deprecates, once per iterator: nothing a user can act on.
warnings.filterwarnings("ignore", message="'set_vital' is deprecated")


class StreamSamples(IterableDataset):
    """{"pixel_values": CHW uint8 crop, "label"} of each streamed record of this rank's part, block-shuffled;
    unreadable records are reported and skipped under the --max-bad-fraction rule (per worker)."""

    def __init__(self, stream, transform: Callable, settings: ImageSettings, encode_label: Optional[Callable],
                 seed: int, block_size: int, max_bad_fraction: float, rank: int):
        self.stream, self.transform, self.settings, self.encode_label = stream, transform, settings, encode_label
        self.seed, self.block_size, self.max_bad_fraction, self.rank = seed, block_size, max_bad_fraction, rank
        self.epoch, self._resume, self._state = 0, None, None

    def set_epoch(self, epoch: int) -> None:
        """Called in the main process before each epoch's workers start. datasets' set_epoch is `_epoch += epoch -
        _epoch` on a tensor every loader worker shares: were the workers to call it, two at once could leave one on
        another epoch's shard order."""
        self.epoch = epoch
        self.stream.set_epoch(epoch)

    def state_dict(self) -> dict:
        return self._state or self._epoch_start()

    def _epoch_start(self) -> dict:
        return {"epoch": self.epoch, "stream": None, "block": 0, "yielded": 0, "seen": 0, "bad": 0}

    def load_state_dict(self, state: dict) -> None:
        self._resume = state

    def __iter__(self):
        worker = torch.utils.data.get_worker_info()
        worker_id = worker.id if worker is not None else 0
        state, self._resume = self._resume or self._epoch_start(), None
        epoch = state["epoch"]
        if state["stream"] is not None:
            self.stream.load_state_dict(state["stream"])
        records, start = iter(self.stream), state["stream"]
        block, skip, seen, bad = state["block"], state["yielded"], state["seen"], state["bad"]
        while rows := list(itertools.islice(records, self.block_size)):
            order = np.random.default_rng([self.seed, epoch, self.rank, worker_id, block]).permutation(len(rows))
            for position in range(skip, len(rows)):
                seen += 1
                self._state = {"epoch": epoch, "stream": start, "block": block, "yielded": position + 1,
                               "seen": seen, "bad": bad}
                sample = self._sample(rows[order[position]], (self.seed, epoch, self.rank, worker_id, block, position))
                if sample is None:
                    bad += 1
                    self._check_bad(seen, bad)
                    continue
                yield sample
            block, skip, start = block + 1, 0, self.stream.state_dict()

    def _sample(self, record: dict, key: tuple) -> Optional[dict]:
        try:
            pixels = decode_for_model(record["image"], self.settings)
        except BadImageError as error:
            where = record["image"].get("path") if isinstance(record["image"], dict) else None
            logger.warning("skipping unreadable streamed record %s: %s", where or f"#{key[-1]} of block {key[-2]}",
                           error)
            return None
        label = record["label"] if self.encode_label is None else self.encode_label(record["label"])
        with torch.random.fork_rng(devices=[]), one_thread():
            torch.default_generator.manual_seed(hash(key) & 0xFFFF_FFFF_FFFF)
            return {"pixel_values": self.transform(torch.from_numpy(pixels).permute(2, 0, 1)), "label": label}

    def _check_bad(self, seen: int, bad: int) -> None:
        if bad > self.max_bad_fraction * max(seen, MIN_RECORDS):
            raise UserError(f"{bad} of the first {seen} streamed records are unreadable (listed above), more than "
                            f"--max-bad-fraction {self.max_bad_fraction:g}: fix or remove them, or raise "
                            "--max-bad-fraction")


class StreamLoader:
    """The training loader of a stream, in rounds: round r (the run's 'epoch' r) yields exactly round_batches[r-1]
    batches on every rank, whatever its shards hold (an uneven stream cannot hang DDP: a rank whose part ends
    starts its next pass, with the next epoch's order). Batches reach the run's device here: the loader is not
    Accelerate-prepared, whose IterableDataset handling reads the whole stream on every process or dispatches it
    from the first."""

    def __init__(self, samples: StreamSamples, loader, device, round_batches: list[int]):
        self.samples, self.loader, self.device, self.round_batches = samples, loader, device, round_batches
        self.round, self.done, self.stream_epoch, self._batches, self._yielded = 1, 0, 0, None, 0

    def set_epoch(self, round_number: int) -> None:
        self.round, self.done = round_number, 0

    def __len__(self) -> int:
        return self.round_batches[min(self.round, len(self.round_batches)) - 1]

    def resume_at(self, step: int) -> None:
        """The round was interrupted after `step` batches; the loader's state already continues after them."""
        self.done = step

    def __iter__(self):
        from accelerate.utils import send_to_device

        for _ in range(len(self) - self.done):
            yield send_to_device(self._next_batch(), self.device)

    def _next_batch(self) -> dict:
        while True:
            if self._batches is None:
                self.samples.set_epoch(self.stream_epoch)
                self._batches, self._yielded = iter(self.loader), 0
            try:
                batch = next(self._batches)
            except StopIteration:
                if not self._yielded:
                    raise UserError("this process's part of the stream holds no records: give the stream at least "
                                    "one shard per process and worker") from None
                self._batches, self.stream_epoch = None, self.stream_epoch + 1
                continue
            except UserError as error:  # raised in a worker: torch wraps its message in the worker's traceback
                raise UserError(str(error).strip().splitlines()[-1].split("UserError: ", 1)[-1]) from None
            self._yielded += 1
            return batch

    def state_dict(self) -> dict:
        return {"stream_epoch": self.stream_epoch, "loader": self.loader.state_dict(),
                "num_workers": self.loader.num_workers}

    def load_state_dict(self, state: dict) -> None:
        if state["num_workers"] != self.loader.num_workers:
            raise UserError(f"the checkpoint's stream was read by {state['num_workers']} loader worker(s) per "
                            f"process: resume with --num-workers {state['num_workers']}")
        self.stream_epoch, self._batches = state["stream_epoch"], None
        self.samples.set_epoch(self.stream_epoch)
        self.loader.load_state_dict(state["loader"])


# Before datasets 5.1 its shuffle buffer, even of one record, held that record back until the next one was read:
# a checkpoint's stream state was one record past what was yielded, and a resumed run skipped it.
EXACT_RESUME_DATASETS = (5, 1)


def check_exact_resume_support() -> None:
    import datasets

    major_minor = tuple(int(part) for part in datasets.__version__.split(".")[:2])
    if major_minor < EXACT_RESUME_DATASETS:
        raise UserError(f"--streaming needs datasets >= 5.1 (this is {datasets.__version__}): older ones skip a "
                        "record when a stream resumes; pip install 'hf_finetune[stream]'")


def round_batches(max_steps: int, steps_per_round: int, accumulation: int) -> list[int]:
    """Micro-batches of each round: --checkpoint-every optimizer steps, the last round what is left."""
    rounds = -(-max_steps // steps_per_round)
    return [min(steps_per_round, max_steps - index * steps_per_round) * accumulation for index in range(rounds)]


def create_stream_loader(stream, transform: Callable, settings: ImageSettings, batch_size: int, num_workers: int,
                         seed: int, block_size: int, max_bad_fraction: float, rank: int, world_size: int,
                         device, batches: list[int], encode_label: Optional[Callable] = None,
                         worker_init_fn: Optional[Callable] = None) -> StreamLoader:
    """This rank's StreamLoader of `stream` (undecoded `image`, encoded `label`)."""
    from datasets.distributed import split_dataset_by_node

    try:
        from torchdata.stateful_dataloader import StatefulDataLoader
    except ImportError:
        raise UserError("--streaming needs torchdata's StatefulDataLoader: pip install 'hf_finetune[stream]'") from None
    check_exact_resume_support()

    readers = world_size * max(num_workers, 1)
    if stream.num_shards % readers:
        logger.warning("the stream has %d shard(s), not a multiple of %d process(es) x %d loader worker(s): %s; "
                       "reshard it into a multiple of %d files", stream.num_shards, world_size, max(num_workers, 1),
                       f"datasets then makes every process read every record and keep 1 in {world_size}"
                       if stream.num_shards % world_size else "some workers read more shards than others", readers)
    # A one-record buffer: datasets orders the shards per (seed, epoch); the records are shuffled by StreamSamples.
    part = split_dataset_by_node(stream.shuffle(seed=seed, buffer_size=1), rank=rank, world_size=world_size)
    samples = StreamSamples(part, transform, settings, encode_label, seed, block_size, max_bad_fraction, rank)
    # Its own generator: creating an iterator draws the workers' base seed from it, not from torch's global RNG
    # that dropout and drop path use (augmentation is seeded per record anyway).
    loader = StatefulDataLoader(samples, batch_size=batch_size, num_workers=num_workers,
                                pin_memory=torch.cuda.is_available(), worker_init_fn=worker_init_fn,
                                generator=torch.Generator().manual_seed(seed))
    return StreamLoader(samples, loader, device, batches)
