"""Augmentation on uint8 tensors from the backbone's own data config, and the DataLoaders that apply it.

The model's pretrained_cfg (input size, mean/std, interpolation, crop_pct, crop_mode), resolved by timm,
drives every transform, so a backbone with other normalization (e.g. mean = std = 0.5) is fed correctly.
Train: RandomResizedCrop (timm's and torchvision's default scale (0.08, 1) and ratio (3/4, 4/3)) + flip,
the chapter's augmentation (timm's colour jitter off). Eval: timm's resize by crop_pct + center crop.
Both run with torchvision.transforms.v2 on uint8 images, from the decode-once cache (cache.prepare_images)
or, with --no-cache, decoded every epoch. Batches leave the loader as uint8; conversion to float and
normalization happen once per batch on its device, in the training step (Normalize).
"""

from __future__ import annotations

import atexit
import multiprocessing.util  # registers multiprocessing's exit hook before ours (below)
import signal
from functools import partial
from typing import Callable, Optional

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from hf_finetune.data.sources import ImageData
from hf_finetune.hardware import cores_per_process, one_thread
from hf_finetune.data.images import ImageSettings, decode_for_model
from hf_finetune.data.sampling import EpochShuffleSampler, SeededAugmentation


def create_transforms(settings: ImageSettings, auto_augment: Optional[str] = None) -> tuple[Callable, Callable]:
    """(train, eval) transforms: CHW uint8 image in, CHW uint8 crop of settings.input_size out. `auto_augment`
    'rand' / 'trivial' appends RandAugment / TrivialAugmentWide after the flip, as timm orders them; they
    draw from torch's RNG, which sampling.SeededAugmentation seeds per (seed, epoch, sample)."""
    from timm.data.transforms import str_to_interp_mode
    from torchvision.transforms import v2

    interpolation = str_to_interp_mode(settings.interpolation)
    steps = [v2.RandomResizedCrop(settings.input_size, interpolation=interpolation, antialias=True),
             v2.RandomHorizontalFlip()]
    # Bilinear for their rotations and shears (as timm's RandAugment): torch's tensor affine has no bicubic.
    bilinear = v2.InterpolationMode.BILINEAR
    if auto_augment == "rand":
        steps.append(v2.RandAugment(num_ops=2, magnitude=9, interpolation=bilinear))
    elif auto_augment == "trivial":
        steps.append(v2.TrivialAugmentWide(interpolation=bilinear))
    train = v2.Compose(steps)
    return train, partial(_resize_and_center_crop, settings=settings, interpolation=interpolation)


def _resize_and_center_crop(image: torch.Tensor, settings: ImageSettings, interpolation) -> torch.Tensor:
    """timm's eval transform (transforms_imagenet_eval) for crop modes 'center' and 'squash'."""
    from torchvision.transforms.v2 import functional as F

    height, width = image.shape[-2:]
    scale_height, scale_width = settings.scale_size
    if settings.crop_mode == "squash":
        size = [scale_height, scale_width]
    elif scale_height == scale_width:
        size = [scale_height]  # shorter side, as torchvision's Resize(int) that timm uses
    else:  # timm's ResizeKeepRatio: the smallest keep-ratio size covering scale_size
        ratio = min(height / scale_height, width / scale_width)
        size = [round(height / ratio), round(width / ratio)]
    image = F.resize(image, size, interpolation=interpolation, antialias=True)
    return F.center_crop(image, list(settings.input_size))


class Normalize:
    """timm's ToTensor + Normalize with the model's mean/std, as one multiply-add on a whole uint8 batch
    where it already is. The training step calls it after the batch reached its device: on a GPU it costs
    the loader nothing and the host sends a quarter of the bytes; on the CPU it takes ~0.25 ms per 224-px
    image on 2 cores, ~1% of a resnet18 training step. The batch stays NCHW: a channels_last model's
    first convolution takes it as it is (measured: the same step time as a channels_last input on CPU)."""

    def __init__(self, settings: ImageSettings):
        mean, std = (torch.tensor(values).view(1, 3, 1, 1) for values in (settings.mean, settings.std))
        self.scale, self.shift = 1 / (std * 255), -mean / std

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if self.scale.device != images.device:
            self.scale, self.shift = self.scale.to(images.device), self.shift.to(images.device)
        return images.float().mul_(self.scale).add_(self.shift)


def create_normalize(model: nn.Module) -> Normalize:
    """What turns the loaders' uint8 batches into `model`'s input (see Normalize)."""
    return Normalize(ImageSettings.from_model(model))


def default_num_workers(num_processes: int) -> int:
    """With a GPU the CPU only feeds it: every core a process has, up to 8, loads. On the CPU the training
    step already keeps every core busy and a worker steals cycles from its threads (measured on 2 cores:
    0 workers trains fastest, see BENCHMARKS.md), while loading from the cache costs ~1 ms per image, a
    few percent of a step: no workers below 8 cores per process, then one per 8 (an estimate, unmeasured).
    `num_processes` is the launch's; the cores are shared by the processes on this machine only."""
    cores = cores_per_process(num_processes)
    return min(8, cores if torch.cuda.is_available() else cores // 8)


class ImageSamples(Dataset):
    """{"pixel_values": CHW uint8 crop, "label"} for each row of a split as cache.prepare_images left it: the
    decoded image read from the memory-mapped cache, or with --no-cache the same decode and resize the cache
    stores, every epoch. Rows are read as Arrow, without datasets' per-row formatting (~10x cheaper)."""

    def __init__(self, dataset, transform: Callable, settings: ImageSettings, encode_label: Optional[Callable] = None):
        self.rows, self.transform, self.settings = dataset.with_format("arrow"), transform, settings
        self.encode_label = encode_label  # the task's (a multi-label row's class indices -> multi-hot target)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict:
        row = self.rows[index].to_pylist()[0]
        if "pixels" in row:
            # HWC bytes viewed as CHW: channels-last strides are what torch's uint8 resize kernels are fastest on.
            pixels = np.frombuffer(row["pixels"], np.uint8).reshape(row["height"], row["width"], 3).copy()
        else:
            pixels = decode_for_model(row["image"], self.settings)
        label = row["label"] if self.encode_label is None else self.encode_label(row["label"])
        with one_thread():
            return {"pixel_values": self.transform(torch.from_numpy(pixels).permute(2, 0, 1)), "label": label}


def leave_sigterm_to_the_main_process(worker_id: int) -> None:
    """Every loader's worker_init_fn. SLURM and Kubernetes send SIGTERM to the whole process group, workers
    included, and torch's worker handler then dies of it: the main process stopped at its next batch with
    "DataLoader worker is killed by signal: Terminated" instead of saving its preemption checkpoint. Ignored
    here, the signal is the main process's alone (train.guard.StopGuard): it finishes the step, saves and exits,
    and torch shuts the workers down; they still leave with a killed main process (torch's parent watchdog)."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _end_loader_workers_at_exit() -> None:
    """At interpreter exit multiprocessing ends daemonic children with SIGTERM and waits for them; loader workers
    ignore it (above), and torch shuts them down only from a loader iterator's __del__, never during exit. A
    process exiting while an iterator was still referenced (a resumed run's, or one in an error's traceback) then
    waited forever. The workers hold nothing to save: they get SIGKILL first. Registered after multiprocessing's
    own exit hook (imported above), so it runs before it."""
    for child in multiprocessing.active_children():
        if child.daemon:
            child.kill()


atexit.register(_end_loader_workers_at_exit)


def create_dataloaders(data: ImageData, model: nn.Module, per_device_batch_size: int, num_workers: Optional[int],
                       num_processes: int = 1, seed: int = 0,
                       auto_augment: Optional[str] = None,
                       encode_label: Optional[Callable] = None) -> tuple[DataLoader, DataLoader]:
    """Loaders of {"pixel_values": uint8 batch (create_normalize makes it the model's input), "label"} from
    `data` as cache.prepare_images left it (decoded uint8 images, or with --no-cache the image files);
    `encode_label`, the task's, turns each row's label into its target (see ImageSamples)."""
    settings = ImageSettings.from_model(model)
    train_transform, eval_transform = create_transforms(settings, auto_augment)
    workers = default_num_workers(num_processes) if num_workers is None else num_workers
    # torch's default collate: it stacks the uint8 crops straight into shared memory in a worker process.
    common = dict(batch_size=per_device_batch_size, num_workers=workers, persistent_workers=workers > 0,
                  pin_memory=torch.cuda.is_available(), worker_init_fn=leave_sigterm_to_the_main_process)
    train = ImageSamples(data.train, train_transform, settings, encode_label)
    evaluation = ImageSamples(data.eval, eval_transform, settings, encode_label)
    # Order and augmentation depend on (seed, epoch, index) only: see sampling.py.
    train_loader = DataLoader(SeededAugmentation(train, seed), sampler=EpochShuffleSampler(len(train), seed), **common)
    return train_loader, DataLoader(evaluation, shuffle=False, **common)


def create_eval_loader(dataset, model: nn.Module, per_device_batch_size: int, num_workers: Optional[int],
                       num_processes: int = 1, encode_label: Optional[Callable] = None) -> DataLoader:
    """A loader of another evaluated split (the test split), exactly as the eval split's."""
    settings = ImageSettings.from_model(model)
    workers = default_num_workers(num_processes) if num_workers is None else num_workers
    samples = ImageSamples(dataset, create_transforms(settings)[1], settings, encode_label)
    return DataLoader(samples, batch_size=per_device_batch_size,
                      shuffle=False, num_workers=workers, pin_memory=torch.cuda.is_available(),
                      worker_init_fn=leave_sigterm_to_the_main_process)
