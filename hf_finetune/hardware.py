"""What the machine offers the run: its CPU cores, how per-image tensor work uses them, and the precision
that is fast on it."""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Mapping, Optional



def available_cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


# How many processes a launcher started on this machine: torchrun's (so accelerate launch's), then the MPIs',
# the counterparts of the local ranks Accelerate reads (LOCAL_RANK, MPI_LOCALRANKID, OMPI_/MV2_COMM_WORLD_LOCAL_RANK).
LOCAL_SIZE_VARIABLES = ("LOCAL_WORLD_SIZE", "MPI_LOCALNRANKS", "OMPI_COMM_WORLD_LOCAL_SIZE",
                        "MV2_COMM_WORLD_LOCAL_SIZE")


def processes_on_this_machine(num_processes: int, environ: Mapping[str, str] = os.environ) -> int:
    """How many of a launch's `num_processes` (all machines together) share this machine's cores: what the
    launcher says in `environ`, else all of them (one machine). 8 machines x 8 GPUs: 8, not 64."""
    for name in LOCAL_SIZE_VARIABLES:
        if environ.get(name, "").isdigit() and int(environ[name]) > 0:
            return min(int(environ[name]), num_processes)
    return num_processes


def cores_per_process(num_processes: int, environ: Mapping[str, str] = os.environ,
                      cpus: Optional[int] = None) -> int:
    """This machine's cores (`cpus`, default `available_cpus()`) shared by the launch's processes on it."""
    cpus = available_cpus() if cpus is None else cpus
    return cpus // processes_on_this_machine(num_processes, environ)


def cpu_only_launch() -> bool:
    """A multi-process launch (torch.distributed.run) on a machine without a GPU: Accelerate picks gloo for it
    only when told it runs on the CPU (`cpu=True`)."""
    import torch  # here, not at the top: config imports this module, and --help must not load torch

    return int(os.environ.get("WORLD_SIZE", 1)) > 1 and not torch.cuda.is_available()


@contextmanager
def one_thread():
    """Run per-image tensor ops on one thread, as DataLoader workers always do. Split between threads, an op
    on one image saves little and stalls whenever another process holds a core: on a busy 2-core machine
    the loader without workers fell from ~1100 to ~30 images/s."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def cpu_model() -> str:
    """The CPU's marketing name (`lscpu`'s "Model name"), for speed figures and the run's records."""
    import platform

    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_has_native_bf16() -> bool:
    """Whether oneDNN runs bf16 natively here (AVX512-BF16 / AMX). Without it, bf16 autocast on the CPU is
    emulated and measured 10-14x slower than fp32 (AMD EPYC, AVX2 only). torch has no public query for this:
    `torch.ops.mkldnn._is_mkldnn_bf16_supported` is the check torch's own bf16 CPU paths use."""
    import torch

    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


@dataclass(frozen=True)
class Precision:
    """The autocast precision a run uses (Accelerate's `mixed_precision` value) and why it was chosen."""

    mixed_precision: str  # "no" (fp32), "bf16" or "fp16"
    reason: str
    slow_warning: Optional[str] = None  # set when an explicit choice is known to be slow on this machine

    @property
    def name(self) -> str:
        """"fp32", "bf16" or "fp16": what the run computes in, as people name it."""
        return "fp32" if self.mixed_precision == "no" else self.mixed_precision

    def describe(self) -> str:
        return f"{self.name} ({self.reason})"


def cuda_has_native_bf16(capability: tuple[int, int], hip: bool = False) -> bool:
    """Whether a GPU of this compute capability computes bf16 natively: from Ampere (8.0) on, and any ROCm GPU
    torch runs. Older ones (V100 7.0, T4 7.5) emulate it, though `torch.cuda.is_bf16_supported()` says True;
    this is the rule of `is_bf16_supported(including_emulation=False)` (torch >= 2.4), with the capability as
    an input and for the older torch we accept."""
    return hip or tuple(capability) >= (8, 0)


def resolve_precision(requested: str, device_type: str, bf16_native: bool) -> Precision:
    """`--mixed-precision auto` -> bf16 where the device runs it natively (a GPU from Ampere on, a CPU with
    AVX512-BF16/AMX); on an older GPU fp16, which Accelerate trains with a gradient scaler (the usual answer:
    bf16 emulated there is the slow path auto exists to avoid); else fp32. `bf16_native` is
    `cuda_has_native_bf16` on a GPU and `cpu_has_native_bf16()` on the CPU (see `machine_precision`)."""
    device = "GPU" if device_type == "cuda" else device_type.upper()
    if requested != "auto":
        slow = None
        if requested == "bf16" and device_type == "cpu" and not bf16_native:
            slow = (f"--mixed-precision bf16 on a CPU without native bf16 ({cpu_model()}) is emulated and much "
                    "slower than fp32 here (measured 10-14x): use --mixed-precision auto or no")
        return Precision(requested, "as asked", slow)
    if device_type in ("cuda", "cpu") and bf16_native:
        native = ("the GPU runs bf16 natively (compute capability 8.0 or later)" if device_type == "cuda"
                  else "this CPU runs bf16 natively (AVX512-BF16/AMX)")
        return Precision("bf16", f"auto: {native}")
    if device_type == "cuda":
        return Precision("fp16", "auto: the GPU has no native bf16 (compute capability below 8.0): fp16 with a "
                                 "gradient scaler")
    if device_type == "cpu":
        return Precision("no", "auto: this CPU has no native bf16, where bf16 would be emulated and slower")
    return Precision("no", f"auto: no bf16 support found on the {device}; --mixed-precision fp16 to ask for fp16")


def machine_precision(requested: str, use_cpu: bool = False) -> Precision:
    """`resolve_precision` for the device this process will train on."""
    import torch

    if torch.cuda.is_available() and not use_cpu:
        native = cuda_has_native_bf16(torch.cuda.get_device_capability(), hip=bool(torch.version.hip))
        return resolve_precision(requested, "cuda", native)
    return resolve_precision(requested, "cpu", cpu_has_native_bf16())
