"""Score (query, target) rows with a trained run or a recipe's fold ensemble:
`python -m train.commands.score RUN_OR_RECIPE_DIR [IN.jsonl | -] [--out OUT.jsonl] [--threshold T]`.

Input: JSON lines with the competition's fields (origin_query and category_path | item_title; language, task and
translated_query when there) or query and target (and task, when the models score both tasks). Output: every input
row, in order, plus `probability` (P(relevant); for a recipe the folds' weighted mean) and `relevant` (0/1: the
run's threshold, the recipe's thresholds and ensemble, or --threshold). Rows are read in chunks, each scored in
length-sorted batches; --out is written under a temporary name and renamed when complete (default: stdout).
"""
import argparse
import json
import os
import sys
import time
from pathlib import Path

from data.records import DataError, json_row
from train.cli import run_command
from train.config import ConfigError
from train.scoring import Scorer, row_record

CHUNK = 4096  # rows read, scored and written at a time


def read_jsonl(stream, name):
    """(line number, row) of each non-blank line of a binary stream; errors name the line."""
    for line, raw in enumerate(stream, 1):
        try:
            content = raw.decode("utf-8-sig" if line == 1 else "utf-8")
        except UnicodeDecodeError as e:
            raise DataError(name, line, None, f"invalid UTF-8 ({e.reason})") from None
        if not content.strip():
            continue
        yield line, json_row(content, name, line)


def score_stream(scorer: Scorer, rows, write, name) -> int:
    """Score (line, row) pairs chunk by chunk, writing each row with its probability and decision; the count."""
    chunk, count = [], 0

    def flush():
        records = [row_record(scorer, row, str(line), name, line) for line, row in chunk]
        for (_, row), (prob, relevant) in zip(chunk, scorer.score_records(records)):
            write(json.dumps({**row, "probability": prob, "relevant": relevant}, ensure_ascii=False) + "\n")
        chunk.clear()

    for item in rows:
        chunk.append(item)
        count += 1
        if len(chunk) == CHUNK:
            flush()
    if chunk:
        flush()
    return count


def _main(argv) -> int:
    parser = argparse.ArgumentParser(prog="python -m train.commands.score", description=__doc__.split("\n\n")[0])
    parser.add_argument("directory", help="a run directory (its best/ model) or a recipe's run_dir (its folds)")
    parser.add_argument("input", nargs="?", default="-", help="JSON-lines rows to score (default -: stdin)")
    parser.add_argument("--out", help="output JSON lines (default: stdout)")
    parser.add_argument("--threshold", type=float, help="decide relevant at this probability instead")
    parser.add_argument("--translations", help="origin_query -> translated_query file (default: the run's)")
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args(argv)
    if args.threshold is not None and not 0 <= args.threshold <= 1:
        raise ConfigError(f"--threshold must be in [0, 1], got {args.threshold}")
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {args.batch_size}")
    name = "stdin" if args.input == "-" else args.input
    if args.input != "-" and not Path(args.input).is_file():
        raise FileNotFoundError(f"{args.input}: file not found")
    scorer = Scorer(args.directory, args.threshold, args.translations, args.batch_size)
    began = time.perf_counter()  # the models are loaded: what follows is the scoring
    source = sys.stdin.buffer if args.input == "-" else open(args.input, "rb")
    try:
        if not args.out:
            count = score_stream(scorer, read_jsonl(source, name), sys.stdout.write, name)
        else:
            out = Path(args.out)
            tmp = out.with_name(f".tmp-{out.name}")
            try:
                with tmp.open("w", encoding="utf-8") as f:
                    count = score_stream(scorer, read_jsonl(source, name), f.write, name)
                os.replace(tmp, out)
            finally:
                tmp.unlink(missing_ok=True)
    finally:
        if source is not sys.stdin.buffer:
            source.close()
    took = time.perf_counter() - began
    print(f"scored {count} rows" + (f" into {args.out}" if args.out else "") +
          f" in {took:.1f} s ({count / max(took, 1e-9):.1f} rows/s)", file=sys.stderr)
    return 0


def main(argv=None) -> int:
    return run_command(_main, sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())
