"""What every process must agree on: a SIGTERM (preemption), a non-finite loss, bad input found by one.

A signal may reach one rank only, and a NaN may appear on one rank only; each step the flags are
summed over all processes, so every rank sees the same answer at the same step and none hangs
in a collective the others have left.
"""

from __future__ import annotations

import signal
from typing import Callable, Optional, TypeVar

import torch

from hf_finetune.errors import UserError

Result = TypeVar("Result")

NON_FINITE = "non-finite loss"
PREEMPTED = "SIGTERM"


class StopGuard:
    def __init__(self):
        self.stop_requested = False
        self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)

    def _on_sigterm(self, signum, frame) -> None:
        self.stop_requested = True

    def check(self, accelerator, loss: Optional[torch.Tensor] = None) -> Optional[str]:
        """NON_FINITE, PREEMPTED or None, the same on every process."""
        non_finite = loss is not None and not bool(torch.isfinite(loss.detach()).all())
        flags = torch.tensor([float(non_finite), float(self.stop_requested)], device=accelerator.device)
        if accelerator.num_processes > 1:
            flags = accelerator.reduce(flags, reduction="sum")
        if flags[0] > 0:
            return NON_FINITE
        return PREEMPTED if flags[1] > 0 else None

    def close(self) -> None:
        signal.signal(signal.SIGTERM, self._previous)

    def __enter__(self) -> "StopGuard":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def leave_together(accelerator) -> None:
    """A barrier as the last collective before every process exits, at the end of a run or on an error they
    all agree on: no process leaves while the main one still saves, so a launcher that stops the others when one
    exits with an error never kills the main process mid-save. A barrier holds no tensors, so gloo's worker
    threads have less left to free as the processes exit; cli.exit_process makes the exit safe from what they do."""
    if accelerator.num_processes > 1:
        accelerator.wait_for_everyone()


def main_process_checks(state, check: Callable[[], None]) -> None:
    """`check()` on the main process only, for what only it needs (the Hub token: only it pushes, so the other
    machines need no login). Its UserError reaches every process (Accelerate's `state`: the Accelerator or a
    PartialState) and is raised there too, so all exit with the same one line; none waits for a partner that left."""
    from accelerate.utils import broadcast_object_list

    failure = [None]
    if state.is_main_process:
        try:
            check()
        except UserError as error:
            failure = [str(error)]
    if state.num_processes > 1:
        broadcast_object_list(failure)
    if failure[0] is not None:
        leave_together(state)
        raise UserError(failure[0])


def node_main_first(accelerator, work: Callable[[], Result]) -> Result:
    """`work()` on each machine's local main process, then on its other processes, which load what it cached
    on that machine's disk (Accelerate's local_main_process_first: no shared filesystem is assumed). A
    UserError on any machine (a missing split, too many bad images) reaches every process through a
    collective and is raised there too, so each exits with the same one-line error instead of the others
    dying at a barrier with a gloo traceback."""
    from accelerate.utils import gather_object

    if accelerator.num_processes == 1:
        return work()
    failure = None
    if accelerator.is_local_main_process:
        try:
            result = work()
        except UserError as error:
            failure = str(error)
    failures = [message for message in gather_object([failure]) if message is not None]
    if failures:
        leave_together(accelerator)
        raise UserError(failures[0])
    if not accelerator.is_local_main_process:
        result = work()
    accelerator.wait_for_everyone()  # as Accelerate's: nobody goes on while another process still builds
    return result
