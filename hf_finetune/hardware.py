"""What the machine offers the run: its usable CPU cores and how per-image tensor work uses them."""

from __future__ import annotations

import os
from contextlib import contextmanager

import torch


def available_cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@contextmanager
def one_thread():
    """Run per-image tensor ops on one thread, as DataLoader workers always do. Split between threads, an op
    on one image saves little and stalls whenever another process holds a core: on a busy 2-core machine
    the loader without workers fell from ~1100 to ~30 images/s."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
