"""How every command ends on a user error (bad data, config or checkpoint, a missing file, a NaN loss): one line
`error: <where>: <what>` on stderr and exit status 1. Anything else is a bug and keeps its traceback."""
import sys

from data.records import DataError
from model.loading import CheckpointError
from train.config import ConfigError

USER_ERRORS = (DataError, ConfigError, CheckpointError, OSError, FloatingPointError)


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
