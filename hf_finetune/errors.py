"""Exceptions the CLI turns into a one-line message and a meaningful exit code instead of a traceback."""


class UserError(Exception):
    """Bad input from the user: the message says what is wrong and what to do about it."""


class TrainingStopped(Exception):
    """Training stopped on purpose and can be resumed by running the same command again."""

    exit_code = 75  # EX_TEMPFAIL: a temporary failure, retrying is expected to succeed


def first_line(error: BaseException) -> str:
    """The first line of an exception's message (its type name when it has none), for one-line errors."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
