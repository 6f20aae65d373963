"""Grouped, stratified folds: guarantees on random data, balance on realistic data, the CLI."""
import json
import random
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from data import inputs
from data.folds import assign_folds, default_language_groups, fold_stats, group_key, split_rows
from data.records import Record, read_records
from train.commands.folds import main

record = st.builds(
    lambda i, task, lang, label, q, path: Record(str(i), task, lang, q, path, label, None),
    st.integers(),
    st.sampled_from(["QC", "QI"]),
    st.sampled_from(["en", "ja", "ko"]),
    st.sampled_from([0, 1, None]),
    st.sampled_from(["Red Shoes", "red  shoes", "ｒｅｄ shoes", "bag"]),
    st.sampled_from(["a,b,c", "a,b,d", "a,x", "food,flour, baking,x", "food,flour, baking,y", "z"]),
)


@settings(max_examples=60, deadline=None)
@given(st.lists(record, min_size=8, max_size=60), st.integers(2, 4), st.integers(1, 3), st.integers(0, 3),
       st.sampled_from([None, [["en"], ["ja", "ko"]], [["ko"], ["en"], ["ja"]]]))
def test_held_out_languages_and_groups_never_reach_training(records, n_folds, levels, seed, language_groups):
    n_groups = len({group_key(r, levels) for r in records})
    if n_groups < n_folds:
        return
    for fold in range(len(language_groups) if language_groups else n_folds):
        train, valid = split_rows(records, fold, n_folds, levels, seed, False, language_groups)
        assert not set(train) & set(valid)
        assert not {group_key(records[i], levels) for i in train} & {group_key(records[i], levels) for i in valid}
        if language_groups:
            assert not {records[i].language for i in train} & set(language_groups[fold])
            assert valid == [i for i, f in enumerate(assign_folds(records, n_folds, levels, seed))
                             if f == fold % n_folds]  # its seen languages' rows are validated too
        else:
            assert sorted(train + valid) == list(range(len(records)))


def test_default_language_groups_are_one_per_language():
    records = [Record(str(i), "QC", lang, "q", "a,b", 1, None) for i, lang in enumerate(["ko", "en", "ko", "ja"])]
    assert default_language_groups(records) == [["en"], ["ja"], ["ko"]]
    with pytest.raises(ValueError, match=r"fold 3 is not in \[0, 3\)"):
        split_rows(records, 3, 2, 2, 0, False, default_language_groups(records))


@settings(max_examples=60, deadline=None)
@given(st.lists(record, min_size=1, max_size=60), st.integers(2, 4), st.integers(1, 3), st.integers(0, 3))
def test_guarantees_on_random_records(records, n_folds, levels, seed):
    n_groups = len({group_key(r, levels) for r in records})
    try:
        folds = assign_folds(records, n_folds, levels, seed)
    except ValueError:
        assert n_groups < n_folds
        return
    assert len(folds) == len(records) and set(folds) == set(range(n_folds))  # every row in one fold, none empty
    fold_of_group = defaultdict(set)
    for r, f in zip(records, folds):
        fold_of_group[group_key(r, levels)].add(f)
    assert all(len(fs) == 1 for fs in fold_of_group.values())
    assert folds == assign_folds(records, n_folds, levels, seed)


@settings(max_examples=60, deadline=None)
@given(st.lists(record, min_size=8, max_size=60), st.integers(2, 4), st.integers(1, 3), st.booleans())
def test_a_shared_prefix_never_crosses_the_validation_split(records, n_folds, levels, translate):
    """The rows that share a prefix in training (data.share_prefix: a QC category path, a QI query) are in one
    fold, so no prefix is computed for training and validation rows alike."""
    try:
        folds = assign_folds(records, n_folds, levels)
    except ValueError:
        return
    fold_of_prefix = defaultdict(set)
    for r, f in zip(records, folds):
        fold_of_prefix[inputs.group_key(r, translate, shared_first=True)].add(f)
    assert all(len(fs) == 1 for fs in fold_of_prefix.values())


def test_group_keys():
    queries = ["Red  Shoes", "red shoes", "ｒｅｄ shoes"]
    qi = [Record(str(i), "QI", "en", q, "t", 1, None) for i, q in enumerate(queries)]
    assert len({group_key(r, 2) for r in qi}) == 1
    qc = Record("1", "QC", "en", "q", "food,flour, baking and cooking,flour", 1, None)
    assert group_key(qc, 2) == "QC:food,flour, baking and cooking"
    assert group_key(qc, 1) != group_key(Record("2", "QC", "en", "q", "food,grocery", 1, None), 2)


def synthetic(n_groups=300, seed=0):
    rng = random.Random(seed)
    return [
        Record(f"{g}-{i}", "QC", rng.choice("abcdef"), "q", f"top{g % 7},cat{g},leaf", int(rng.random() < 0.7), None)
        for g in range(n_groups)
        for i in range(rng.randint(1, 40))
    ]


def test_balance_and_proportions():
    records = synthetic()
    folds = assign_folds(records, 5, seed=1)
    _, worst = fold_stats(records, folds)
    assert worst["size %"] < 1 and worst["label pp"] < 1 and worst["language pp"] < 1
    assert folds != assign_folds(records, 5, seed=2)


def test_group_larger_than_a_fold(caplog):
    records = synthetic(100) + [Record(f"big{i}", "QC", "en", "q", "huge,cat,x", 1, None) for i in range(5000)]
    folds = assign_folds(records, 4)
    assert "group 'QC:huge,cat' has 5000 rows, more than a fold" in caplog.text
    big_fold = folds[-1]
    sizes = Counter(folds)
    assert sizes[big_fold] == 5000  # the big group alone; the others share the rest evenly
    rest = [n for f, n in sizes.items() if f != big_fold]
    assert len(rest) == 3 and max(rest) - min(rest) <= 40


def test_cli_on_real_sample(shared, tmp_path, capsys):
    out = tmp_path / "qc.folds.json"
    assert main([str(shared / "data" / "qc_sample.jsonl"), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    saved = json.loads(out.read_text())
    records = read_records(shared / "data" / "qc_sample.jsonl")
    folds = [saved["assignment"][r.id] for r in records]
    assert saved["folds"] == 5 and folds == assign_folds(records, 5, 2, 0)
    table, worst = fold_stats(records, folds)
    assert table in printed
    assert worst["size %"] < 1 and worst["label pp"] < 1 and worst["language pp"] < 1


@pytest.mark.slow  # a fresh interpreter imports torch
def test_command_writes_the_assignment_next_to_the_file(tmp_path):
    path = tmp_path / "train_QI.txt"
    rows = [{"id": i, "task": "QI", "language": "en", "origin_query": f"q{i % 9}", "item_title": "t", "label": i % 2}
            for i in range(45)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    run = subprocess.run([sys.executable, "-m", "train.commands.folds", str(path), "--folds", "3", "--seed", "4"],
                         capture_output=True, text=True, cwd=Path(__file__).parents[1])
    assert run.returncode == 0 and "worst deviation from global" in run.stdout and not run.stderr
    saved = json.loads((tmp_path / "train_QI.txt.folds.json").read_text())
    records = read_records(path)
    assert saved["assignment"] == {r.id: f for r, f in zip(records, assign_folds(records, 3, seed=4))}
