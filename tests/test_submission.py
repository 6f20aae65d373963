"""The submission tools: check against the inputs, compare two submissions."""
import json
import re
import zipfile

import pytest

from train.commands.submission import check, compare, main
from train.predict import submission_text, write_submission

QC = [{"id": str(i), "task": "QC", "language": lang, "origin_query": f"q{i}", "category_path": "a,b", "label": i % 2}
      for i, lang in enumerate(["en", "ja", "en", "ja"], 1)]
QI = [{"id": "1", "task": "QI", "language": "ko", "origin_query": "lamp", "item_title": "a lamp", "label": 1}]


@pytest.fixture
def inputs(tmp_path):
    paths = []
    for name, rows in (("test_QC.txt", QC), ("test_QI.txt", QI)):
        (tmp_path / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
        paths.append(tmp_path / name)
    return paths


def submit(tmp_path, inputs, qc=None, qi=None, name="out"):
    qc = qc or {r["id"]: 1 for r in QC}
    texts = {"QC": submission_text([inputs[0]], "QC", qc), "QI": submission_text([inputs[1]], "QI", qi or {"1": 0})}
    return write_submission(texts, tmp_path / name)


def test_a_written_submission_passes(tmp_path, inputs):
    assert check(submit(tmp_path, inputs), inputs) == []
    assert main(["check", str(submit(tmp_path, inputs)), *map(str, inputs)]) == 0


def edited(archive, task, edit):
    with zipfile.ZipFile(archive) as z:
        texts = {name: z.read(name).decode() for name in z.namelist()}
    name = f"submit_{task}.txt"
    texts[name] = edit(texts[name])
    with zipfile.ZipFile(archive, "w") as z:
        for n, text in texts.items():
            if text is not None:
                z.writestr(n, text)
    return archive


@pytest.mark.parametrize("task, edit, problem", [
    ("QC", lambda t: "\n".join(t.splitlines()[1:]), "1 input ids have no prediction, first '1'"),
    ("QC", lambda t: t + t.splitlines()[0] + "\n", "line 5: id '1' again (first on line 1)"),
    ("QC", lambda t: t.replace('"language": "ja"', '"language": "ko"', 1), "language 'ko' differs from"),
    ("QC", lambda t: t.replace('"origin_query": "q3"', '"origin_query": "Q3"'), "origin_query 'Q3' differs"),
    ("QC", lambda t: t.replace('"prediction": 1', '"prediction": 2', 1), "prediction 2 is not 0 or 1"),
    ("QC", lambda t: t.replace('"id": "4"', '"id": "9"'), "id '9' is in no QC input file"),
    ("QI", lambda t: None, "no submit_QI.txt, though 1 QI input rows"),
])
def test_a_broken_submission_is_named(tmp_path, inputs, capsys, task, edit, problem):
    archive = edited(submit(tmp_path, inputs), task, edit)
    assert any(problem in p for p in check(archive, inputs)), check(archive, inputs)
    assert main(["check", str(archive), *map(str, inputs)]) == 1
    assert problem in capsys.readouterr().err


def test_compare_counts_differences_per_language_and_scores_labelled_rows(tmp_path, inputs):
    a = submit(tmp_path, inputs, qc={"1": 1, "2": 1, "3": 1, "4": 1}, name="a")
    b = submit(tmp_path, inputs, qc={"1": 1, "2": 0, "3": 1, "4": 1}, name="b")
    out = compare(a, b, inputs)
    assert "QC: 4 rows in both, 25.0% differ; per language: en 0.0%, ja 50.0%" in out
    assert "QI: 1 rows in both, 0.0% differ" in out
    # labels 1, 0, 1, 0 for ids 1..4: a predicts all 1 (F1 2/3), b predicts 1, 0, 1, 1 (F1 0.8)
    assert f"{a}: F1 0.6667 on 4 labelled rows" in out and f"{b}: F1 0.8000 on 4 labelled rows" in out


@pytest.mark.parametrize("damage, message", [
    (lambda p: p.write_bytes(p.read_bytes()[:40]), r"submit.zip: not a whole zip file \(truncated\?\)"),
    (lambda p: edited(p, "QC", lambda t: "[1, 2]\n" + t), r"submit.zip:submit_QC.txt, line 1: expected a JSON object, "
                                                           r"got list"),
    (lambda p: p.write_bytes(b"\xff\xfe not text"), r"submit.zip: unreadable \('utf-8' codec can't decode"),
])
def test_a_damaged_submission_file_is_one_error_line(tmp_path, inputs, capsys, damage, message):
    archive = submit(tmp_path, inputs)
    damage(archive)
    assert main(["check", str(archive), *map(str, inputs)]) == 1
    assert main(["compare", str(archive), str(archive)]) == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and all(re.search(message, line) for line in err), err


def test_compare_refuses_submissions_with_nothing_in_common(tmp_path, inputs, capsys):
    a = submit(tmp_path, inputs, name="a")
    other = [{**r, "id": str(100 + int(r["id"]))} for r in QC]
    (tmp_path / "other_QC.txt").write_text("".join(json.dumps(r) + "\n" for r in other))
    b = write_submission({"QC": submission_text([tmp_path / "other_QC.txt"], "QC", {r["id"]: 1 for r in other})},
                         tmp_path / "b")
    assert main(["compare", str(a), str(b)]) == 1
    assert re.fullmatch(r"error: .*b/submit.zip: no QC id in common with .*a/submit.zip: predictions of other "
                        r"files\?\n", capsys.readouterr().err)
    bad = edited(submit(tmp_path, inputs, name="c"), "QC", lambda t: t.replace('"prediction": 1', '"prediction": "y"'))
    assert main(["compare", str(a), str(bad)]) == 1
    assert "submit_QC.txt, line 1, field 'prediction': 'y' is not 0 or 1" in capsys.readouterr().err
