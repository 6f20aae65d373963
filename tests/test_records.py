"""Reading, cleaning and validating competition files."""
import json
import logging

import pytest

from data.records import DataError, Record, category_levels, read_records

QC = {"id": 1, "task": "QC", "language": "en", "origin_query": "Red  Shoes", "category_path": "shoes,men's shoes",
      "label": 1}
QI = {"id": 2, "task": "QI", "language": "ja", "origin_query": "赤い\u3000靴", "item_title": "Red Sneaker\tX",
      "label": 0}


def without(row, key):
    return {k: v for k, v in row.items() if k != key}


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def test_reads_and_cleans_jsonl(tmp_path):
    records = read_records(write_jsonl(tmp_path / "train.txt", [QC, QI]))
    assert records == [
        Record("1", "QC", "en", "red shoes", "shoes,men's shoes", 1, None),
        Record("2", "QI", "ja", "赤い 靴", "red sneaker x", 0, None),
    ]
    assert read_records(tmp_path / "train.txt", lowercase=False)[0].query == "Red Shoes"


def test_csv_matches_jsonl(tmp_path):
    csv_path = tmp_path / "train.csv"
    header = "id,task,language,origin_query,category_path,label\n"
    csv_path.write_text(header + '1,QC,en,Red  Shoes,"shoes,men\'s shoes",1\n')
    assert read_records(csv_path) == read_records(write_jsonl(tmp_path / "train.txt", [QC]))


def test_translations_from_column_and_from_file(tmp_path, caplog):
    rows = [dict(QC, translated_query="Red shoes"), dict(QC, id=3)]
    records = read_records(write_jsonl(tmp_path / "a.txt", rows))
    assert [r.translation for r in records] == ["red shoes", None]
    assert "1 of 2 rows have no translation" in caplog.text
    side = tmp_path / "translations.csv"
    side.write_text("origin_query,translated_query\nRed Shoes,Blue shoes\n")  # whitespace collapsed, case kept
    assert [r.translation for r in read_records(tmp_path / "a.txt", translations=side)] == ["blue shoes"] * 2
    side.write_text("origin_query,translated_query\nred shoes,Blue shoes\n")
    assert [r.translation for r in read_records(tmp_path / "a.txt", translations=side)] == [None, None]


def test_one_translation_file_serves_files_whose_ids_overlap(tmp_path):
    """The competition's QC and QI (and train and test) files all number their rows from 1."""
    qc = write_jsonl(tmp_path / "train_QC.txt", [dict(QC, id=1), dict(QC, id=2, origin_query="sac")])
    qi = write_jsonl(tmp_path / "test_QI.txt", [dict(QI, id=1, origin_query="lampe"), dict(QI, id=2)])
    side = write_jsonl(tmp_path / "translations.jsonl", [
        {"origin_query": q, "translated_query": t}
        for q, t in (("Red Shoes", "red shoes"), ("sac", "bag"), ("lampe", "lamp"), ("赤い 靴", "red shoes"))])
    assert [r.translation for r in read_records(qc, translations=side)] == ["red shoes", "bag"]
    assert [r.translation for r in read_records(qi, translations=side)] == ["lamp", "red shoes"]


@pytest.mark.parametrize("separator", ["\u2028", "\u2029", "\u0085", "\x0b", "\x1c"])
def test_line_separators_inside_a_json_string_are_text(tmp_path, separator):
    path = tmp_path / "train.txt"
    path.write_text(json.dumps(dict(QC, origin_query=f"red{separator}shoes"), ensure_ascii=False) + "\r\n"
                    + json.dumps(QI, ensure_ascii=False) + "\n", encoding="utf-8")
    assert [r.id for r in read_records(path, lowercase=False)] == ["1", "2"]


def test_a_lone_surrogate_is_rejected_with_file_line_and_field(tmp_path):
    path = tmp_path / "test_QC.txt"
    path.write_text(json.dumps(QC) + "\n" + json.dumps(dict(QC, id=2)).replace('"Red  Shoes"', '"Red \\ud800"') + "\n")
    with pytest.raises(DataError, match=r"test_QC.txt, line 2, field 'origin_query': not valid Unicode"):
        read_records(path, training=False)


def test_empty_rows_dropped_only_when_training(tmp_path, caplog):
    path = write_jsonl(tmp_path / "test.txt", [dict(QC, origin_query="  "), dict(QI, item_title=None)])
    assert read_records(path) == []
    assert "dropped 2 of 2 rows" in caplog.text
    kept = read_records(path, training=False)
    assert [(r.id, r.query, r.target) for r in kept] == [("1", "", "shoes,men's shoes"), ("2", "赤い 靴", "")]


def test_prediction_files_have_no_labels(tmp_path):
    path = write_jsonl(tmp_path / "dev_QC.txt", [without(QC, "label")])
    assert read_records(path, training=False)[0].label is None
    with pytest.raises(DataError, match=r"dev_QC.txt, line 1, field 'label': missing column"):
        read_records(path)


def test_task_filter_is_strict(tmp_path):
    path = write_jsonl(tmp_path / "train.txt", [QC, QI])
    with pytest.raises(DataError, match=r"line 2, field 'task': task 'QI', expected QC"):
        read_records(path, task="QC")


@pytest.mark.parametrize(
    "content, line, field, problem",
    [
        (json.dumps(QC) + "\n{not json\n", 2, None, "malformed JSON"),
        (json.dumps(QC) + "\n[1, 2]\n", 2, None, "expected a JSON object"),
        (json.dumps(dict(QC, label=2)) + "\n", 1, "label", "label must be 0 or 1"),
        (json.dumps(dict(QC, label=True)) + "\n", 1, "label", "label must be 0 or 1"),
        (json.dumps(QC) + "\n\n" + json.dumps(QC) + "\n", 3, "id", "duplicated id '1' \\(first on line 1\\)"),
        (json.dumps(dict(QC, task="QX")) + "\n", 1, "task", "task 'QX'"),
        (json.dumps(without(QC, "category_path")) + "\n", 1, "category_path", "missing column"),
        (json.dumps(without(QI, "origin_query")) + "\n", 1, "origin_query", "missing column"),
        (json.dumps(dict(QC, origin_query=["a"])) + "\n", 1, "origin_query", "expected text"),
        ("\n  \n", 1, None, "empty file"),
    ],
)
def test_bad_jsonl_names_file_line_and_field(tmp_path, content, line, field, problem):
    path = tmp_path / "train_QC.txt"
    path.write_text(content)
    where = rf"train_QC.txt, line {line}" + (rf", field '{field}'" if field else "")
    with pytest.raises(DataError, match=rf"{where}: {problem}"):
        read_records(path)


def test_invalid_utf8_names_the_line(tmp_path):
    path = tmp_path / "train.txt"
    path.write_bytes(json.dumps(QC).encode() + b"\n" + b'{"id": "\xff"}\n')
    with pytest.raises(DataError, match=r"train.txt, line 2: invalid UTF-8"):
        read_records(path)


def test_bad_csv_names_the_line(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text("id,task,language,origin_query,category_path,label\n1,QC,en,a,b,1\n2,QC,en,a,b\n")
    with pytest.raises(DataError, match=r"train.csv, line 3: wrong number of values"):
        read_records(path)
    path.write_text("id,task,language,origin_query,category_path\n")
    with pytest.raises(DataError, match=r"train.csv, line 1: empty file"):
        read_records(path)


def test_category_levels_keep_comma_space_inside_a_level():
    levels = category_levels("food,grocery,flour, baking and cooking,flour")
    assert levels == ["food", "grocery", "flour, baking and cooking", "flour"]


def test_real_sample(shared, caplog):
    caplog.set_level(logging.WARNING)
    records = read_records(shared / "data" / "qc_sample.jsonl", task="QC")
    assert len(records) == 10899 and not caplog.text
    assert {r.language for r in records} == {"en", "es", "fr", "ja", "ko", "pt"}
    assert {r.label for r in records} == {0, 1}
    levels = [category_levels(r.target) for r in records]
    assert len({lv[0] for lv in levels}) == 35
    with_comma = [lv for lv in levels if any(", " in name for name in lv)]
    assert with_comma and all(name and name == name.strip() for lv in levels for name in lv)
    assert ["automobiles, parts & accessories"] == sorted({lv[0] for lv in with_comma if "," in lv[0]})


def test_bad_translation_file_is_named(tmp_path):
    records = write_jsonl(tmp_path / "train.txt", [QC])
    side = tmp_path / "translations.csv"
    side.write_text("origin_query,translated_query\nRed Shoes,a\nb,c\nRed  Shoes,a\n")
    assert read_records(records, translations=side)[0].translation == "a"
    side.write_text("origin_query,translated_query\nRed Shoes,a\nb,c\nRed Shoes,b\n")
    with pytest.raises(DataError, match=r"translations.csv, line 4, field 'translated_query': query 'Red Shoes' "
                                        r"translated differently on line 2"):
        read_records(records, translations=side)
    side.write_text("origin_query,english\nRed Shoes,a\n")
    with pytest.raises(DataError, match=r"translations.csv, line 2, field 'translated_query': missing column"):
        read_records(records, translations=side)
