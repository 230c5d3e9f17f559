"""`python -m hf_finetune ...`: the same command as `hf-finetune` and `scripts/finetune.py` (subprocesses use it)."""

from hf_finetune.cli import main

main(prog="python -m hf_finetune")
