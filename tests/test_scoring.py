"""Scoring pairs with a trained run or a recipe (train/scoring.py and `python -m train.commands.score`): the
probabilities predict gives, the run's or the recipe's decisions, input rows kept, errors named."""
import io
import json
import os
import sys
from pathlib import Path

import pytest

from data.records import read_records
from model.adapters import build_classifier, save_adapters
from model.lora import DEFAULT_TARGETS
from train.commands.demo import DEMO_DATA
from train.commands.score import main as score_main
from train.config import ConfigError, RunConfig, load_config, save_config
from train.loop import train
from train.predict import predict_fold
from train.scoring import Scorer

from fixtures import randomize_trainable, tiny_config

ROOT = Path(__file__).resolve().parents[1]
GEMMA = Path(os.environ.get("GEMMA3_270M", ROOT / "checkpoints" / "gemma-3-270m"))  # MEASUREMENTS.md's checkpoint


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A tiny trained QC run (2 updates)."""
    cfg = tiny_config(tmp_path_factory.mktemp("scoring"), max_steps=2)
    train(cfg)
    return Path(cfg.run_dir)


def write_rows(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return path


def test_a_run_scores_as_predict_does_with_its_threshold(run_dir, tmp_path):
    rows = [json.loads(line) for line in (run_dir.parent / "valid.jsonl").read_text().splitlines()]
    rows[0]["origin_query"] = "  CHEAP   " + rows[0]["origin_query"].upper()  # cleaned as the records are
    rows[1]["translated_query"] = "Best Boot"  # a run without a translations file reads the row's
    path = write_rows(tmp_path / "rows.jsonl", rows)
    cfg = load_config(run_dir / "config.yaml")
    want = predict_fold(cfg, read_records(path, training=False), 4, "cpu")
    threshold = json.loads((run_dir / "best" / "adapters.json").read_text())["threshold"]
    out = tmp_path / "scored.jsonl"
    assert score_main([str(run_dir), str(path), "--out", str(out)]) == 0
    scored = [json.loads(line) for line in out.read_text().splitlines()]
    assert [{k: v for k, v in r.items() if k not in ("probability", "relevant")} for r in scored] == rows
    assert [r["probability"] for r in scored] == pytest.approx([want[r["id"]] for r in rows], abs=1e-6)
    assert [r["relevant"] for r in scored] == [int(want[r["id"]] >= threshold) for r in rows]

    scorer = Scorer(run_dir, threshold=0.0)  # the Python object: pairs in, (probability, relevant) out
    pairs = [(r["origin_query"], r["category_path"], r.get("translated_query")) for r in rows]
    assert scorer.score(pairs) == [(pytest.approx(want[r["id"]], abs=1e-6), 1) for r in rows]
    assert [s[1] for s in Scorer(run_dir, threshold=1.0).score(pairs)] == [0] * len(rows)


def test_query_target_rows_from_stdin_to_stdout(run_dir, monkeypatch, capsys):
    rows = [{"query": "red sneaker", "target": "shoes,men", "mine": 1}, {"query": "lego", "target": "toys,kids"}]
    stdin = io.TextIOWrapper(io.BytesIO("".join(json.dumps(r) + "\n" for r in rows).encode()))
    monkeypatch.setattr(sys, "stdin", stdin)
    assert score_main([str(run_dir), "-", "--threshold", "0.5"]) == 0
    out = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    want = Scorer(run_dir).score([("red sneaker", "shoes,men"), ("lego", "toys,kids")])
    assert [(r["probability"], r["relevant"]) for r in out] == [(p, int(p >= 0.5)) for p, _ in want]
    assert out[0]["mine"] == 1


@pytest.mark.parametrize("content, args, error", [
    ('{"query": "a"}\n', [], "rows.jsonl, line 1, field 'category_path': missing"),
    ('{"query": "a", "target": "b"}\n{bad\n', [], "rows.jsonl, line 2: malformed JSON"),
    ('{"origin_query": "a", "item_title": "b"}\n', [], "rows.jsonl, line 1, field 'task': task 'QI': the models "
                                                       "score QC"),
    ('{"query": "a", "target": 3}\n', [], "rows.jsonl, line 1, field 'target': expected text, got 3"),
    ('{"query": "a", "target": "b"}\n', ["--threshold", "2"], "--threshold must be in [0, 1], got 2.0"),
])
def test_errors_are_one_line_naming_the_row_or_flag(run_dir, tmp_path, capsys, content, args, error):
    (tmp_path / "rows.jsonl").write_text(content)
    out = tmp_path / "out.jsonl"
    out.write_text("previous\n")
    capsys.readouterr()
    assert score_main([str(run_dir), str(tmp_path / "rows.jsonl"), "--out", str(out), *args]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[-1].startswith("error: ") and error in err[-1], err
    assert out.read_text() == "previous\n" and sorted(p.name for p in tmp_path.iterdir()) == ["out.jsonl",
                                                                                              "rows.jsonl"]


def test_a_directory_without_config_is_named(tmp_path, capsys):
    assert score_main([str(tmp_path), "-"]) == 1
    assert capsys.readouterr().err.startswith(f"error: {tmp_path / 'config.yaml'}: not found")


def test_a_recipe_scores_with_its_fold_ensemble_thresholds_and_translations(trained_recipe, tmp_path):
    recipe_dir = trained_recipe
    out = tmp_path / "scored.jsonl"
    assert score_main([str(recipe_dir), str(DEMO_DATA / "test_QC.txt"), "--out", str(out)]) == 0
    scored = [json.loads(line) for line in out.read_text().splitlines()]
    folds = [json.loads((recipe_dir / "QC" / f / "predictions" / "probabilities.json").read_text())["probabilities"]
             for f in ("fold0", "fold1")]
    weights = [json.loads((recipe_dir / "QC" / f / "result.json").read_text())["f1"] ** 3 for f in ("fold0", "fold1")]
    mean = [sum(w * p[r["id"]] for p, w in zip(folds, weights)) / sum(weights) for r in scored]
    assert [r["probability"] for r in scored] == pytest.approx(mean, abs=1e-6)
    submitted = {json.loads(line)["id"]: json.loads(line)["prediction"]
                 for line in (recipe_dir / "submission" / "submit_QC.txt").read_text().splitlines()}
    assert [r["relevant"] for r in scored] == [submitted[r["id"]] for r in scored]
    assert len(scored) == 120 and len({r["relevant"] for r in scored}) == 2  # not all one answer

    rows = read_records(DEMO_DATA / "test_QC.txt", training=False)
    untranslated = Scorer(recipe_dir, translations=write_rows(tmp_path / "none.jsonl", [
        {"origin_query": "nothing", "translated_query": "nothing"}])).score([(r.query, r.target) for r in rows])
    assert max(abs(p - m) for (p, _), m in zip(untranslated, mean)) > 1e-4  # the translations mattered
    with pytest.raises(ConfigError, match="task 'QI': the models score QC"):
        Scorer(recipe_dir).score([("a", "b")], task="QI")


@pytest.mark.slow
def test_the_real_gemma3_270m_scores_the_qc_sample_as_predict_does(shared, tmp_path):
    if not (GEMMA / "model.safetensors").is_file():
        pytest.skip(f"{GEMMA} not found: the real Gemma-3-270M (bash ../shared/tools/get-gemma3-270m.sh "
                    f"checkpoints/gemma-3-270m, or GEMMA3_270M=DIR)")
    cfg = RunConfig(run_dir=str(tmp_path / "run"))  # a run directory around random adapters over the real model
    cfg.model.path, cfg.model.dtype = str(GEMMA), "float32"
    cfg.data.train, cfg.data.task, cfg.data.max_length = [str(shared / "data" / "qc_sample.jsonl")], "QC", 128
    classifier = build_classifier(GEMMA, 4, 8, 0.0, DEFAULT_TARGETS)
    randomize_trainable(classifier, std=0.02)
    save_adapters(classifier, tmp_path / "run" / "best", base_model=str(GEMMA), threshold=0.4, metrics={})
    save_config(cfg, tmp_path / "run" / "config.yaml")
    lines = (shared / "data" / "qc_sample.jsonl").read_text().splitlines()[:48]
    rows = write_rows(tmp_path / "rows.jsonl", [json.loads(line) for line in lines])
    want = predict_fold(cfg, read_records(rows, training=False), 16, "cpu")
    out = tmp_path / "scored.jsonl"
    assert score_main([str(tmp_path / "run"), str(rows), "--out", str(out), "--batch-size", "16"]) == 0
    scored = [json.loads(line) for line in out.read_text().splitlines()]
    want = [want[str(r["id"])] for r in scored]  # the sample's ids are numbers, records' are text
    assert [r["probability"] for r in scored] == pytest.approx(want, abs=1e-6)
    assert [r["relevant"] for r in scored] == [int(p >= 0.4) for p in want] and 0 < sum(p >= 0.4 for p in want) < 48
