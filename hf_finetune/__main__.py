"""`python -m hf_finetune ...`: the same command as `hf-finetune` and `scripts/finetune.py` (subprocesses use it)."""

from .cli import main

main()
