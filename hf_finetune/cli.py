"""Command-line entry: parse the config, run, and turn UserError into one line on stderr."""

from __future__ import annotations

import logging
import os
import sys
from typing import Callable, Optional


def run_cli(main: Callable[[], object]) -> None:
    """Run `main`; a UserError (bad input) prints `error: ...` and exits 2 instead of a traceback, a run stopped by
    SIGTERM exits 75."""
    from hf_finetune.errors import TrainingStopped, UserError

    code = 0
    try:
        main()
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        code = 2
    except TrainingStopped as stopped:
        print(str(stopped), file=sys.stderr)
        code = TrainingStopped.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        code = 130
    exit_process(code)


def exit_process(code: int) -> None:
    """Exit with `code`. A process of a multi-process launch exits without finalizing the interpreter: DDP's
    reducer keeps the gloo process group, and its worker threads, alive past destroy_process_group, and a worker
    that frees a Python tensor once the interpreter is finalizing aborts the process ("terminate called without
    an active exception"), so the launcher reports a finished run as failed (pytorch/pytorch#179291, abandoned).
    Everything the run wrote is closed by now (DataLoader workers too); what is left to do is flushing."""
    if int(os.environ.get("WORLD_SIZE", 1)) > 1:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    if code:
        sys.exit(code)


def configure_logging() -> None:
    # Only the main process speaks at INFO; the others report warnings and errors.
    rank = int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", 0)))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING, format="%(levelname)s %(message)s")
    for noisy in ("httpx", "datasets", "filelock", "fsspec", "accelerate", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def main(argv: Optional[list[str]] = None, prog: Optional[str] = None) -> None:
    """The fine-tuning command; `prog` names it in --help (default: the script's file name)."""
    def run():
        from hf_finetune.config import parse_config

        config = parse_config(argv, prog)  # before anything imports torch: --help and bad flags answer at once
        configure_logging()
        from hf_finetune.run import finetune

        finetune(config)

    run_cli(run)
