"""Exports of trained runs: transformers' pair API on the merged checkpoint (and PEFT's on the adapter) gives the
probabilities `score` gives, for both families and both templates; the model card; the command's errors."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from data.inputs import encode, model_family
from data.records import read_records
from model.loading import load_tokenizer
from train.commands.export import main as export_main
from train.commands.score import main as score_main
from train.loop import train

from fixtures import tiny_config
from hf_tiny import save_tiny_with_tokenizer

ROOT = Path(__file__).resolve().parents[1]
# What a user of the export runs, in a process of its own: the pipeline on {"text", "text_pair"} rows, and the model
# on the tokenizer's padded pair call; PEFT's adapter through PeftModel over the base model.
CHECK = """
import json, sys
import torch, transformers as tf
cases, out = json.loads(sys.argv[1]), []
for case in cases:
    queries, targets = zip(*case["pairs"])
    tokenizer = tf.AutoTokenizer.from_pretrained(case["dir"])
    if case["format"] == "merged":
        model = tf.AutoModelForSequenceClassification.from_pretrained(case["dir"])
    else:
        import peft
        base = tf.AutoModelForSequenceClassification.from_pretrained(
            case["base"], num_labels=2, pad_token_id=case["pad_token_id"],
            id2label={0: "irrelevant", 1: "relevant"}, label2id={"irrelevant": 0, "relevant": 1})
        model = peft.PeftModel.from_pretrained(base, case["dir"])
    classify = tf.pipeline("text-classification", model=model, tokenizer=tokenizer, top_k=None, device="cpu")
    scored = classify([{"text": q, "text_pair": t} for q, t in case["pairs"]], batch_size=4)
    batch = tokenizer(list(queries), list(targets), padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = model(**batch).logits
    out.append({"pipeline": [next(s["score"] for s in row if s["label"] == "relevant") for row in scored],
                "pair_call": logits.softmax(-1)[:, 1].tolist(), "ids": tokenizer(queries[0], targets[0])["input_ids"]})
print(json.dumps(out))
"""


def trained_run(tmp: Path, model_type: str, template: str, share: bool = False) -> Path:
    """A tiny run of `model_type` (2 updates) with the `template` (and data.share_prefix); its run directory."""
    base = tmp / "base"
    if not base.exists():
        save_tiny_with_tokenizer(model_type, base)
    cfg = tiny_config(tmp, f"run-{template}{'-shared' if share else ''}", model=base, max_steps=2)
    cfg.data.template, cfg.data.max_length = template, 64  # every row whole: transformers does not truncate
    cfg.data.share_prefix = share  # QC rows category first: the export's pair call still takes (query, target)
    train(cfg)
    return Path(cfg.run_dir)


def scored(run_dir: Path, rows_file: Path, tmp: Path) -> list[dict]:
    out = tmp / f"{run_dir.name}-scores.jsonl"
    assert score_main([str(run_dir), str(rows_file), "--out", str(out)]) == 0
    return [json.loads(line) for line in out.read_text().splitlines()]


@pytest.mark.slow
@pytest.mark.parametrize("model_type", ["qwen3", "gemma3_text"])
def test_transformers_pair_api_gives_the_probabilities_score_gives(model_type, tmp_path):
    runs = {template: trained_run(tmp_path, model_type, template) for template in ("plain", "question")}
    runs["shared"] = trained_run(tmp_path, model_type, "question", share=True)
    rows_file = tmp_path / "valid.jsonl"  # lowercase, single spaces: the cleaning of the records changes nothing
    cases, want = [], []
    for name, run_dir in runs.items():
        template = "plain" if name == "plain" else "question"
        rows = scored(run_dir, rows_file, tmp_path)
        pairs = [[r["origin_query"], r["category_path"]] for r in rows]
        formats = ["merged", "peft"] if template == "question" else ["merged"]
        for fmt in formats:
            out = tmp_path / f"export-{name}-{fmt}"
            assert export_main([str(run_dir), str(out), "--format", fmt]) == 0
            pad = json.loads((out / "tokenizer_config.json").read_text())["pad_token"]
            pad_id = json.loads((out / "tokenizer.json").read_text())["model"]["vocab"][pad]
            cases.append({"dir": str(out), "format": fmt, "pairs": pairs, "base": str(tmp_path / "base"),
                          "pad_token_id": pad_id})
            want.append([r["probability"] for r in rows])
            first = read_records(rows_file)[:1]
            cases[-1]["encoded"] = encode(load_tokenizer(tmp_path / "base"), model_family(model_type), first, 64,
                                          True, question=template == "question", shared_first=name == "shared")[0]
        card = (tmp_path / f"export-{name}-merged" / "README.md").read_text()
        threshold = json.loads((run_dir / "best" / "adapters.json").read_text())["threshold"]
        assert f"P(relevant) >= {threshold:.4f}" in card and f"Template ({template})" in card
        assert "train.commands.export" in card and "| f1 |" in card
    config = json.loads((tmp_path / "export-plain-merged" / "config.json").read_text())
    assert config["id2label"] == {"0": "irrelevant", "1": "relevant"}
    assert config["label2id"] == {"irrelevant": 0, "relevant": 1}

    out = subprocess.run([sys.executable, "-c", CHECK, json.dumps(cases)], capture_output=True, text=True,
                         timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    for case, expected, got in zip(cases, want, json.loads(out.stdout)):
        assert got["ids"] == case["encoded"], case["dir"]  # the tokenizer's pair call: the template's ids
        for api in ("pipeline", "pair_call"):
            assert max(abs(a - b) for a, b in zip(got[api], expected)) < 1e-5, (case["dir"], api)
    assert len(set(want[0])) > 1 and max(abs(a - b) for a, b in zip(want[0], want[1])) > 1e-3  # templates differ


@pytest.mark.slow
def test_an_existing_out_needs_force_and_a_run_has_no_folds(tmp_path, capsys):
    run_dir = trained_run(tmp_path, "qwen3", "plain")
    capsys.readouterr()
    out = tmp_path / "export"
    out.mkdir()
    (out / "old.txt").write_text("old")
    assert export_main([str(run_dir), str(out)]) == 1
    assert capsys.readouterr().err == f"error: {out}: already exists (--force replaces it)\n"
    assert export_main([str(run_dir), str(out), "--force"]) == 0
    assert not (out / "old.txt").exists() and (out / "config.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temporary left
    assert export_main([str(run_dir), str(tmp_path / "x"), "--fold", "1"]) == 1
    assert capsys.readouterr().err.endswith(f"error: --fold: {run_dir} is a run directory, not a recipe: it has one "
                                            f"model\n")


def test_a_recipe_exports_the_fold_it_is_told_with_that_folds_threshold(trained_recipe, tmp_path, capsys):
    assert export_main([str(trained_recipe), str(tmp_path / "out")]) == 1
    assert capsys.readouterr().err.endswith("error: --fold: stage QC has fold0, fold1: choose one (a merged "
                                            "checkpoint holds one model; `score` ensembles the folds)\n")
    assert export_main([str(trained_recipe), str(tmp_path / "out"), "--fold", "1", "--format", "peft"]) == 0
    threshold = json.loads((trained_recipe / "QC" / "fold1" / "best" / "adapters.json").read_text())["threshold"]
    card = (tmp_path / "out" / "README.md").read_text()
    assert f"P(relevant) >= {threshold:.4f}" in card and "PeftModel.from_pretrained" in card
    assert "`query - English translation`" in card  # the recipe trained with translations
    adapter = json.loads((tmp_path / "out" / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == str(trained_recipe.parent / "model")
