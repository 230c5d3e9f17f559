"""Every random number generator a training process draws from, saved and restored for an exact resume."""

from __future__ import annotations

import random

import numpy as np
import torch


def rng_state() -> dict:
    numpy_state = np.random.get_state()
    python_state = random.getstate()
    state = {"torch": torch.get_rng_state(), "numpy_keys": torch.from_numpy(numpy_state[1].astype(np.int64)),
             "numpy_pos": numpy_state[2], "numpy_has_gauss": numpy_state[3], "numpy_gauss": numpy_state[4],
             "python_version": python_state[0], "python_state": torch.tensor(python_state[1], dtype=torch.int64)}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(("MT19937", state["numpy_keys"].numpy().astype(np.uint32), state["numpy_pos"],
                         state["numpy_has_gauss"], state["numpy_gauss"]))
    random.setstate((state["python_version"], tuple(state["python_state"].tolist()), None))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
