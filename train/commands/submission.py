"""Submission tools: check a submission against its input files, compare two submissions.

    python -m train.commands.submission check SUBMISSION INPUT [INPUT ...]
    python -m train.commands.submission compare SUBMISSION_A SUBMISSION_B [--labels LABELLED_FILE ...]

SUBMISSION is submit.zip or one submit_<task>.txt. `check` requires every input id exactly once, with the
input's language and query, a 0/1 prediction, and a file for each task of the inputs. `compare` prints the share
of predictions that differ, per task and language, and with labelled files (a dev set) each one's F1.
"""
import sys
import zipfile
from collections import defaultdict
from pathlib import Path

from data.records import TARGET_FIELD, DataError, json_row, read_records, read_rows
from train.cli import Parser, run_command
from train.metrics import classification_metrics, fmt


def read_submission(path) -> dict[str, list[tuple[int, dict]]]:
    """task -> (line, row) pairs of a submit.zip or a submit_<task>.txt; a damaged zip, text that is not UTF-8 or
    a row that is not a JSON object is a DataError naming the file (and line)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found")
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                texts = {Path(name).stem.removeprefix("submit_"): (f"{path}:{name}", z.read(name).decode("utf-8"))
                         for name in z.namelist() if name.endswith(".txt")}
        elif path.read_bytes().startswith(b"PK"):
            raise DataError(path, None, None, "not a whole zip file (truncated?)")
        else:
            texts = {path.stem.removeprefix("submit_"): (str(path), path.read_text(encoding="utf-8"))}
    except (zipfile.BadZipFile, UnicodeDecodeError) as e:
        raise DataError(path, None, None, f"unreadable ({e})") from None
    out = {}
    for task, (where, text) in texts.items():
        if task not in TARGET_FIELD:
            raise DataError(where, None, None, "not a submit_QC.txt or submit_QI.txt")
        rows = []
        for line, content in enumerate(text.split("\n"), 1):
            if content.strip():
                rows.append((line, json_row(content, where, line)))
        out[task] = rows
    return out


def check(submission, inputs) -> list[str]:
    """Problems of `submission` against the competition files `inputs` (empty when it is sound)."""
    submitted, problems = read_submission(submission), []
    by_task = defaultdict(dict)
    for path in inputs:
        for line, row in read_rows(path):
            by_task[row.get("task")][str(row.get("id"))] = (path, line, row)
    for task, expected in sorted(by_task.items()):
        if task not in submitted:
            problems.append(f"{submission}: no submit_{task}.txt, though {len(expected)} {task} input rows")
            continue
        seen = {}
        for line, row in submitted[task]:
            where, id_ = f"submit_{task}.txt, line {line}", str(row.get("id"))
            if id_ in seen:
                problems.append(f"{where}: id {id_!r} again (first on line {seen[id_]})")
                continue
            seen[id_] = line
            if id_ not in expected:
                problems.append(f"{where}: id {id_!r} is in no {task} input file")
                continue
            path, input_line, source = expected[id_]
            for key in ("language", "origin_query", TARGET_FIELD[task]):
                if row.get(key) != source.get(key):
                    problems.append(f"{where}: {key} {row.get(key)!r} differs from {path}, line {input_line}: "
                                    f"{source.get(key)!r}")
            if row.get("prediction") not in (0, 1) or isinstance(row.get("prediction"), bool):
                problems.append(f"{where}: prediction {row.get('prediction')!r} is not 0 or 1")
        missing = [i for i in expected if i not in seen]
        if missing:
            problems.append(f"submit_{task}.txt: {len(missing)} input ids have no prediction, first {missing[0]!r}")
    return problems


def predictions(path, task: str, rows) -> dict[str, tuple]:
    """id -> (prediction, language) of one task's rows; a row without an id or a 0/1 prediction names its line."""
    out = {}
    for line, row in rows:
        if "id" not in row:
            raise DataError(f"{path}:submit_{task}.txt", line, "id", "missing")
        if row.get("prediction") not in (0, 1) or isinstance(row.get("prediction"), bool):
            raise DataError(f"{path}:submit_{task}.txt", line, "prediction", f"{row.get('prediction')!r} is not 0 "
                                                                               f"or 1")
        out[str(row["id"])] = (row["prediction"], row.get("language"))
    return out


def compare(a, b, labelled=()) -> str:
    """The share of differing predictions per task and language, and each submission's F1 on labelled rows."""
    subs = [read_submission(a), read_submission(b)]
    labels = {(r.task, r.id): r.label for path in labelled for r in read_records(path, training=False)
              if r.label is not None}
    tasks = sorted(set(subs[0]) & set(subs[1]))
    if not tasks:
        raise DataError(b, None, None, f"no task in common with {a}")
    lines = []
    for task in tasks:
        preds = [predictions(path, task, sub[task]) for path, sub in zip((a, b), subs)]
        common = sorted(preds[0].keys() & preds[1].keys())
        if not common:
            raise DataError(b, None, None, f"no {task} id in common with {a}: predictions of other files?")
        by_language = defaultdict(list)
        for id_ in common:
            by_language[preds[0][id_][1]].append(preds[0][id_][0] != preds[1][id_][0])
        differ = 100 * sum(map(sum, by_language.values())) / len(common)
        lines.append(f"{task}: {len(common)} rows in both, {differ:.1f}% "
                     f"differ; per language: " + ", ".join(f"{lang} {100 * sum(d) / len(d):.1f}%"
                                                          for lang, d in sorted(by_language.items())))
        scored = [i for i in common if (task, i) in labels]
        if scored:
            for name, pred in zip((a, b), preds):
                m = classification_metrics([pred[i][0] for i in scored], [labels[task, i] for i in scored],
                                           [pred[i][1] for i in scored])
                per = ", ".join(f"{k[3:]} {fmt(v)}" for k, v in m.items() if k.startswith("f1_"))
                lines.append(f"  {name}: F1 {fmt(m['f1'])} on {len(scored)} labelled rows; {per}")
    return "\n".join(lines)


def _main(argv) -> int:
    parser = Parser(prog="python -m train.commands.submission", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    checking = commands.add_parser("check", help="a submission against its input files")
    checking.add_argument("submission", type=Path)
    checking.add_argument("inputs", type=Path, nargs="+")
    comparing = commands.add_parser("compare", help="two submissions, and their F1 on labelled files")
    comparing.add_argument("a", type=Path)
    comparing.add_argument("b", type=Path)
    comparing.add_argument("--labels", type=Path, nargs="*", default=[])
    args = parser.parse_args(argv)
    if args.command == "compare":
        print(compare(args.a, args.b, args.labels))
        return 0
    problems = check(args.submission, args.inputs)
    for problem in problems[:20]:
        print(f"error: {problem}", file=sys.stderr)
    if len(problems) > 20:
        print(f"... and {len(problems) - 20} more", file=sys.stderr)
    print(f"{args.submission}: {'ok' if not problems else f'{len(problems)} problems'}")
    return 1 if problems else 0


def main(argv=None) -> int:
    return run_command(_main, sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())
