"""How every command ends on a user error (bad data, config, flag or checkpoint, a missing file, a NaN loss): one
line `error: <where>: <what>` on stderr and exit status 1. Anything else is a bug and keeps its traceback."""
import argparse
import sys

from data.records import DataError
from model.loading import CheckpointError
from train.config import ConfigError

USER_ERRORS = (DataError, ConfigError, CheckpointError, OSError, FloatingPointError)


class Parser(argparse.ArgumentParser):
    """argparse whose usage errors (a missing argument, a flag's bad value) are a ConfigError naming the flag,
    so they end in the one `error:` line too, not in argparse's usage text and status 2."""

    def error(self, message):
        raise ConfigError(f"{self.prog}: {message}")


def integer(minimum: int):
    """An argparse type: an integer of at least `minimum` (argparse names the flag of a refused value)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value
    return parse


def error_line(e: BaseException) -> str:
    if isinstance(e, OSError) and e.filename and e.strerror:  # raised by the OS: "[Errno 28] ..." reads worse
        return f"error: {e.filename}: {e.strerror}"
    return f"error: {e}"


def run_command(main, argv) -> int:
    """main(argv)'s exit status, or 1 after one error line for a user error."""
    try:
        return main(argv) or 0
    except USER_ERRORS as e:
        print(error_line(e), file=sys.stderr)
        return 1
