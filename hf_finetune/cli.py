"""Command-line entry: parse the config, run, and turn UserError into one line on stderr."""

from __future__ import annotations

import logging
import os
import sys
from typing import Callable, Optional


def run_cli(main: Callable[[], object]) -> None:
    """Run `main`; a UserError (bad input) prints `error: ...` and exits 2 instead of a traceback."""
    from .errors import TrainingStopped, UserError

    try:
        main()
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    except TrainingStopped as stopped:
        print(str(stopped), file=sys.stderr)
        sys.exit(TrainingStopped.exit_code)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


def _configure_logging() -> None:
    # Only the main process speaks at INFO; the others report warnings and errors.
    rank = int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", 0)))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING, format="%(levelname)s %(message)s")
    for noisy in ("httpx", "datasets", "filelock", "fsspec", "accelerate", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def main(argv: Optional[list[str]] = None) -> None:
    def run():
        from .config import parse_config

        config = parse_config(argv)  # before anything imports torch: --help and bad flags answer at once
        _configure_logging()
        from .finetune import finetune

        finetune(config)

    run_cli(run)
