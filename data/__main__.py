"""Command line of the data pipeline.

    python -m data folds FILE [--folds K --levels N --seed S --top-level --out PATH]
    python -m data padding FILE TOKENIZER_DIR FAMILY [--batch-size B --max-length L --row-tokens R]
"""
import sys

from data import batching, folds

COMMANDS = {"folds": folds.main, "padding": batching.main}

if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
    sys.exit(__doc__.strip() + "\n(add --help after a command for its options)")
try:
    COMMANDS[sys.argv[1]](sys.argv[2:])
except (ValueError, OSError) as e:  # bad file, row or option: one line, as every command of the project says it
    sys.exit(f"error: {e}")
