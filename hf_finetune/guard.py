"""Stop conditions every process must agree on: a SIGTERM (preemption) and a non-finite loss.

A signal may reach one rank only, and a NaN may appear on one rank only; each step the flags are
summed over all processes, so every rank sees the same answer at the same step and none hangs
in a collective the others have left.
"""

from __future__ import annotations

import signal
from typing import Optional

import torch

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
