"""A sweep on several processes: the ranks share Accelerate's state between trials and hear the main process.

Every trial is a whole run in this process, so each starts from a fresh Accelerate state and process group.
"""

from __future__ import annotations

import os


def shared_state():
    """Accelerate's process state, made as the runs' Accelerator makes it (gloo on a CPU-only multi-process
    launch), so that the sweep can talk to its ranks between trials."""
    import torch
    from accelerate import PartialState

    multi_process = int(os.environ.get("WORLD_SIZE", 1)) > 1
    if multi_process and not torch.distributed.is_initialized():
        reset_accelerate_state()
        new_process_group()
    return PartialState(cpu=multi_process and not torch.cuda.is_available())


_RENDEZVOUS: dict = {}  # this process's connection to the launcher's store, and how many groups it has made


def new_process_group() -> None:
    """A process group for the next trial. A finished run's end_training destroys the group, and a second
    env:// initialization hangs in the launcher's store on keys the first one left (seen with torchrun); each
    group therefore gets its own key prefix on one store connection. Accelerate then uses the group as it is."""
    import torch
    import torch.distributed as dist

    if not _RENDEZVOUS:
        store, rank, world_size = next(dist.rendezvous("env://"))
        _RENDEZVOUS.update(store=store, rank=rank, world_size=world_size, groups=0)
    _RENDEZVOUS["groups"] += 1
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo", rank=_RENDEZVOUS["rank"],
                            world_size=_RENDEZVOUS["world_size"],
                            store=dist.PrefixStore(f"hf_finetune-sweep-{_RENDEZVOUS['groups']}", _RENDEZVOUS["store"]))


def reset_accelerate_state() -> None:
    """Forget the last trial's Accelerate state (one per process, shared by every Accelerator), so that each trial
    sets up as a fresh run would. Accelerate has no public call for several runs in one process; `_reset_state`
    is the one its own tests use between Accelerators."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def send(objects: list) -> list:
    """The main process's `objects`, on every process (a no-op with one)."""
    from accelerate.utils import broadcast_object_list

    if shared_state().num_processes > 1:
        broadcast_object_list(objects)
    return objects


def receive():
    return send([None])[0]
