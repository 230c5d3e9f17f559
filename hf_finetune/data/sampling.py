"""Training order and augmentation as pure functions of (seed, epoch, sample index).

With torch's defaults the random crop of a sample depends on the global RNG of whichever process
decodes it: the number of DataLoader workers, their persistence across epochs, the batch prefetched
ahead of the step and the number of training processes all change it, so a resumed run or a run
on more processes sees other augmentations. Hand-written because neither torch nor Accelerate seeds
per sample: here the sampler tags every index with its epoch and the dataset seeds each sample's
augmentation from (seed, epoch, index), so the same sample gets the same crop everywhere.
"""

from __future__ import annotations

import torch
from torch.utils.data import Dataset, Sampler


class EpochShuffleSampler(Sampler[int]):
    """A permutation seeded by (seed, epoch), each index tagged with the epoch as `epoch * n + index`."""

    def __init__(self, num_samples: int, seed: int):
        self.num_samples, self.seed, self.epoch = num_samples, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        offset = self.epoch * self.num_samples
        return iter((torch.randperm(self.num_samples, generator=generator) + offset).tolist())


class SeededAugmentation(Dataset):
    """Reads `dataset[index]` with torch's RNG seeded from (seed, epoch, index) and then restored."""

    def __init__(self, dataset, seed: int):
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, tagged_index: int):
        epoch, index = divmod(tagged_index, len(self.dataset))
        with torch.random.fork_rng(devices=[]):  # the caller's RNG stream (e.g. dropout) is left as it was
            # The CPU generator only: torch.manual_seed would also reseed CUDA, which fork_rng([]) does not
            # restore, and costs a stack-trace format per call for lazy CUDA seeding.
            torch.default_generator.manual_seed(hash((self.seed, epoch, index)) & 0xFFFF_FFFF_FFFF)
            return self.dataset[index]
