"""A file's CV folds, as training assigns them: per-fold statistics, and {"id": fold} written to FILE.folds.json.

    python -m train.commands.folds FILE [--folds K] [--levels N] [--seed S] [--top-level] [--out PATH]
"""
import json
import sys
from pathlib import Path

from data.folds import assign_folds, fold_stats
from data.records import read_records
from train.cli import Parser, integer, run_command
from train.config import ConfigError
from train.rundir import write_atomic


def _main(argv) -> int:
    parser = Parser(prog="python -m train.commands.folds", description=__doc__.split("\n\n")[0])
    parser.add_argument("file", type=Path)
    parser.add_argument("--folds", type=integer(2), default=5)
    parser.add_argument("--levels", type=integer(1), default=2, help="category levels that define a QC group")
    parser.add_argument("--seed", type=integer(0), default=0)
    parser.add_argument("--top-level", action="store_true", help="also stratify by top-level category")
    parser.add_argument("--out", type=Path, help="where to write the assignment (default FILE.folds.json)")
    args = parser.parse_args(argv)
    records = read_records(args.file)  # read as training reads it, so the assignment is the one training uses
    try:
        folds = assign_folds(records, args.folds, args.levels, args.seed, args.top_level)
    except ValueError as e:
        raise ConfigError(f"--folds: {e} in {args.file} at --levels {args.levels}") from None
    table, _ = fold_stats(records, folds, args.levels)
    print(table)
    out = args.out or args.file.with_name(args.file.name + ".folds.json")
    params = {"folds": args.folds, "levels": args.levels, "seed": args.seed, "top_level": args.top_level}
    write_atomic(out, json.dumps({**params, "assignment": {r.id: f for r, f in zip(records, folds)}}) + "\n")
    print(f"wrote {out}")
    return 0


def main(argv=None) -> int:
    return run_command(_main, sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())
