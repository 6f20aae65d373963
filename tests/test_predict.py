"""Ensembling and submission files (fold models predicting through the recipe: tests/test_recipe.py)."""
import json
import zipfile
from pathlib import Path

import pytest
import torch

from data.batching import Example, collate_padded
from data.records import DataError
from model.classifier import batch_logits, load_classifier
from train.predict import ensemble, probabilities, submission_text, write_submission

from fixtures import make_checkpoint, randomize_trainable


def test_mean_ensemble_averages_probabilities_against_each_rows_threshold():
    folds = [{"a": 0.9, "b": 0.2, "c": 0.55}, {"a": 0.7, "b": 0.5, "c": 0.35}]
    assert ensemble(folds, [1, 1], lambda i: 0.45) == {"a": 1, "b": 0, "c": 1}  # c: mean 0.45 >= 0.45
    assert ensemble(folds, [1, 1], {"a": 0.9, "b": 0.3, "c": 0.45}.get) == {"a": 0, "b": 1, "c": 1}
    assert ensemble(folds, [3, 1], lambda i: 0.5) == {"a": 1, "b": 0, "c": 1}  # c: (3 * 0.55 + 0.35) / 4 = 0.5


def test_vote_weighs_each_fold_and_ties_are_relevant():
    folds = [{"a": 0.9, "b": 0.2}, {"a": 0.3, "b": 0.3}, {"a": 0.35, "b": 0.9}]
    assert ensemble(folds, [1, 1, 1], lambda i: 0.32, vote=True) == {"a": 1, "b": 0}
    assert ensemble(folds[:2], [1, 1], lambda i: 0.5, vote=True) == {"a": 1, "b": 0}  # a: 1 of 2 votes, a tie
    assert ensemble(folds, [1, 1, 2.5], lambda i: 0.5, vote=True) == {"a": 0, "b": 1}  # the heavy fold decides


def test_submission_has_every_row_sorted_by_id_with_original_text(tmp_path):
    test_file = tmp_path / "test_QC.txt"
    rows = [{"id": "10", "task": "QC", "language": "fr", "origin_query": "Sac  À Main", "category_path": "bags"},
            {"id": "9", "task": "QC", "language": "es", "origin_query": "", "category_path": "shoes"}]
    test_file.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    text = submission_text([test_file], "QC", {"9": 1, "10": 0})
    assert [json.loads(line) for line in text.splitlines()] == [
        {"id": "9", "language": "es", "origin_query": "", "category_path": "shoes", "prediction": 1},
        {"id": "10", "language": "fr", "origin_query": "Sac  À Main", "category_path": "bags", "prediction": 0}]
    with pytest.raises(DataError, match=r"test_QC.txt, field 'id': no prediction for 1 QC rows, first id '10'"):
        submission_text([test_file], "QC", {"9": 1})
    archive = write_submission({"QC": text}, tmp_path / "out")
    assert zipfile.ZipFile(archive).namelist() == ["submit_QC.txt"]
    assert zipfile.ZipFile(archive).read("submit_QC.txt").decode() == (tmp_path / "out" / "submit_QC.txt").read_text()


def test_a_failed_write_leaves_the_previous_submission_whole(tmp_path, monkeypatch):
    out = tmp_path / "out"
    write_submission({"QC": "old qc\n", "QI": "old qi\n"}, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    real, calls = Path.write_bytes, []

    def disk_full_on_the_second_file(self, data):
        calls.append(self.name)
        if len(calls) == 2:
            real(self, data[:3])
            raise OSError(28, "No space left on device", str(self))
        return real(self, data)

    monkeypatch.setattr(Path, "write_bytes", disk_full_on_the_second_file)
    with pytest.raises(OSError, match="No space left"):
        write_submission({"QC": "new qc\n", "QI": "new qi\n"}, out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # no temporary file left either


def test_grouped_prediction_gives_each_row_its_unshared_probability(tmp_path):
    """probabilities() lays out each group's shared prefix once; every row's probability is the one its own padded
    row gives."""
    classifier = load_classifier(make_checkpoint(tmp_path / "base"))
    randomize_trainable(classifier, seed=1)
    gen = torch.Generator().manual_seed(0)
    tokens = lambda n: torch.randint(1, 60, (n,), generator=gen).tolist()  # noqa: E731
    items = []
    for g in range(5):
        prefix = tokens(3 + g)
        items += [Example(f"{g}-{j}", prefix + tokens(1 + j), None, group=str(g)) for j in range(g + 1)]
    got = probabilities(classifier, items, pad_id=0, batch_size=4, device="cpu", bf16=False)
    want = batch_logits(classifier, collate_padded(items, 0), "cpu", False).softmax(-1)[:, 1].tolist()
    assert got.keys() == {e.id for e in items}
    assert [got[e.id] for e in items] == pytest.approx(want, abs=1e-6)
