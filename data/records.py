"""Competition files -> validated, cleaned records.

Reads JSON lines (`train_QC.txt`, `dev_QI.txt`, ...) or CSV (`.csv`) with the columns
`id, task, language, origin_query, category_path | item_title[, label][, translated_query]`.
Every error names the file, the 1-based line and the field. Translations are keyed by the query text, so one
translation file serves files whose ids overlap (QC and QI, train and test reuse the same ids).
"""
import csv
import io
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

TARGET_FIELD = {"QC": "category_path", "QI": "item_title"}


@dataclass(frozen=True)
class Record:
    id: str
    task: str  # "QC" or "QI"
    language: str
    query: str
    target: str  # category path (QC) or item title (QI)
    label: int | None  # None when the file has no label (dev/test)
    translation: str | None  # English translation of the query, None when absent


class DataError(ValueError):
    """A bad input file: the message names the file, the line (when one line is at fault) and the field."""

    def __init__(self, path, line, field, problem):
        where = f"{path}" + (f", line {line}" if line else "") + (f", field '{field}'" if field else "")
        super().__init__(f"{where}: {problem}")


def category_levels(path: str) -> list[str]:
    """Split a category path into levels; a comma followed by a space is part of a level name."""
    return re.split(r",(?! )", path)


def clean(text: str, lowercase: bool) -> str:
    """Collapse runs of whitespace (any Unicode space) to one space, strip, optionally lowercase."""
    text = " ".join(text.split())
    return text.lower() if lowercase else text


def json_row(content: str, where, line: int) -> dict:
    """One JSON-lines row as an object, or a DataError naming the file and line."""
    try:
        row = json.loads(content)
    except json.JSONDecodeError as e:
        raise DataError(where, line, None, f"malformed JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(row, dict):
        raise DataError(where, line, None, f"expected a JSON object, got {type(row).__name__}")
    return row


def read_rows(path) -> list[tuple[int, dict]]:
    """(line number, row) pairs of a JSON-lines or CSV file; rows are dicts of raw values."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(path, raw[: e.start].count(b"\n") + 1, None, f"invalid UTF-8 ({e.reason})") from None
    rows = []
    if path.suffix.lower() == ".csv":
        reader = csv.DictReader(io.StringIO(text, newline=""))
        header = reader.fieldnames or []  # reads the header line
        line = reader.line_num + 1
        for row in reader:
            if None in row or None in row.values():
                raise DataError(path, line, None, f"wrong number of values, the header has {len(header)}")
            rows.append((line, row))
            line = reader.line_num + 1
    else:
        # Rows end at "\n" only: str.splitlines() would also split at U+2028, U+0085, ... inside a JSON string.
        for line, content in enumerate(text.split("\n"), 1):
            if not content.strip():
                continue
            rows.append((line, json_row(content, path, line)))
    if not rows:
        raise DataError(path, 1, None, "empty file: no rows")
    return rows


def _field(path, line, row, name, optional=False):
    """A text field of a row: missing column -> error (unless optional, then None); null -> ''."""
    if name not in row:
        if optional:
            return None
        raise DataError(path, line, name, "missing column")
    value = row[name]
    if value is None:
        return ""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise DataError(path, line, name, f"expected text, got {value!r}")
    value = str(value)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:  # a lone surrogate such as "\ud800" in JSON: no valid text can hold it
        raise DataError(path, line, name, f"not valid Unicode ({e.reason} at character {e.start})") from None
    return value


def _id(path, line, row, first_line):
    """The row's id, checked non-empty and unique; first_line maps the ids seen so far to their line."""
    id_ = _field(path, line, row, "id")
    if not id_.strip():
        raise DataError(path, line, "id", "empty id")
    if id_ in first_line:
        raise DataError(path, line, "id", f"duplicated id {id_!r} (first on line {first_line[id_]})")
    first_line[id_] = line
    return id_


def _label(path, line, row, training):
    value = row.get("label")
    if value is None or value == "":
        if training:
            problem = "missing column" if "label" not in row else "no value"
            raise DataError(path, line, "label", f"{problem} (labels are required when training)")
        return None
    if isinstance(value, bool) or value not in (0, 1, "0", "1"):
        raise DataError(path, line, "label", f"label must be 0 or 1, got {value!r}")
    return int(value)


def read_translations(path) -> dict[str, str]:
    """query -> English translation, from a JSON-lines or CSV file with columns `origin_query, translated_query`
    (what `train.commands.translate` writes). Queries are matched with their whitespace collapsed, case kept; a
    query may repeat, but only with the same translation.
    """
    translations, first_line = {}, {}
    for line, row in read_rows(path):
        query = clean(_field(path, line, row, "origin_query"), lowercase=False)
        translation = _field(path, line, row, "translated_query")
        if translations.setdefault(query, translation) != translation:
            raise DataError(path, line, "translated_query",
                            f"query {query!r} translated differently on line {first_line[query]}")
        first_line.setdefault(query, line)
    return translations


def read_records(path, task=None, translations=None, lowercase=True, training=True) -> list[Record]:
    """Read and clean one competition file.

    task: "QC" or "QI" to require that every row is of this task (None accepts both).
    translations: a file keyed by query (see read_translations) that overrides a `translated_query` column.
    training: drop rows whose query or target is empty after cleaning; with training=False no row is dropped
    and labels may be absent. Missing translations and dropped rows are logged with their counts.
    """
    if task is not None and task not in TARGET_FIELD:
        raise ValueError(f"task must be one of {sorted(TARGET_FIELD)}, got {task!r}")
    by_query = read_translations(translations) if translations is not None else None
    rows = read_rows(path)
    expect_translation = by_query is not None or any("translated_query" in row for _, row in rows)
    records, lines, dropped, missing = [], {}, 0, 0
    for line, row in rows:
        id_ = _id(path, line, row, lines)
        row_task = _field(path, line, row, "task")
        if row_task not in TARGET_FIELD or (task is not None and row_task != task):
            expected = task or " or ".join(TARGET_FIELD)
            raise DataError(path, line, "task", f"task {row_task!r}, expected {expected}")
        language = _field(path, line, row, "language").strip().lower()
        if not language:
            raise DataError(path, line, "language", "empty language")
        raw_query = _field(path, line, row, "origin_query")
        query = clean(raw_query, lowercase)
        target = clean(_field(path, line, row, TARGET_FIELD[row_task]), lowercase)
        label = _label(path, line, row, training)
        if by_query is not None:
            translation = by_query.get(clean(raw_query, lowercase=False))
        else:
            translation = _field(path, line, row, "translated_query", optional=True)
        translation = clean(translation or "", lowercase) or None
        missing += expect_translation and translation is None
        if training and not (query and target):
            dropped += 1
            continue
        records.append(Record(id_, row_task, language, query, target, label, translation))
    if missing:
        log.warning("%s: %d of %d rows have no translation", path, missing, len(lines))
    if dropped:
        log.warning("%s: dropped %d of %d rows with an empty query or target", path, dropped, len(lines))
    return records
