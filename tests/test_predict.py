"""Ensembling and submission files (the fold models themselves are exercised by the end-to-end demo test)."""
import json
import zipfile

import pytest

from train.predict import ensemble, write_submission, zip_submission


def test_mean_ensemble_averages_probabilities_against_the_mean_threshold():
    folds = [{"a": 0.9, "b": 0.2, "c": 0.55}, {"a": 0.7, "b": 0.5, "c": 0.35}]
    assert ensemble(folds, [0.5, 0.4]) == {"a": 1, "b": 0, "c": 1}  # c: mean 0.45 >= 0.45


def test_vote_uses_each_folds_threshold_and_ties_are_relevant():
    folds = [{"a": 0.9, "b": 0.2}, {"a": 0.3, "b": 0.3}, {"a": 0.35, "b": 0.9}]
    assert ensemble(folds, [0.5, 0.25, 0.3], "vote") == {"a": 1, "b": 1}
    assert ensemble(folds[:2], [0.5, 0.5], "vote") == {"a": 1, "b": 0}  # a: 1 of 2 votes, a tie
    with pytest.raises(ValueError, match="unknown ensemble method 'max'"):
        ensemble(folds, [0.5] * 3, "max")


def test_submission_has_every_row_sorted_by_id_with_original_text(tmp_path):
    test_file = tmp_path / "test_QC.txt"
    rows = [{"id": "10", "task": "QC", "language": "fr", "origin_query": "Sac  À Main", "category_path": "bags"},
            {"id": "9", "task": "QC", "language": "es", "origin_query": "", "category_path": "shoes"},
            {"id": "7", "task": "QI", "language": "en", "origin_query": "lamp", "item_title": "a lamp"}]
    test_file.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    path = write_submission([test_file], "QC", {"9": 1, "10": 0, "7": 1}, tmp_path / "out")
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert lines == [{"id": "9", "language": "es", "origin_query": "", "category_path": "shoes", "prediction": 1},
                     {"id": "10", "language": "fr", "origin_query": "Sac  À Main", "category_path": "bags",
                      "prediction": 0}]
    with pytest.raises(KeyError, match="no prediction for 1 QC rows, first id '10'"):
        write_submission([test_file], "QC", {"9": 1}, tmp_path / "out")
    archive = zip_submission([path], tmp_path / "out")
    assert zipfile.ZipFile(archive).namelist() == ["submit_QC.txt"]
