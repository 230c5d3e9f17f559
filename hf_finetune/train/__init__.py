"""Training: the parts a run trains with, the epoch and eval passes, checkpoints, resume, selection."""
