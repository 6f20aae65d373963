"""Fold models -> probabilities per fold -> ensemble -> threshold -> the competition's submission files.

Every row of a dev/test file gets a prediction: nothing is dropped, whatever its query or target.
"""
import json
import sys
import zipfile
from pathlib import Path

import torch
from tokenizers import Tokenizer

from data.batching import collate_padded, examples
from data.inputs import encode, model_family, pad_token_id
from data.records import TARGET_FIELD, read_records, read_rows
from model.adapters import load_adapters
from model.classifier import load_classifier
from model.loading import resolve
from model.lora import add_lora
from train.loop import to_device


def load_fold_model(best_dir, info: dict, dtype, device):
    """The classifier of a run's best/ directory (info: its adapters.json): base model + LoRA + head."""
    classifier = load_classifier(info["base_model"], num_labels=info["num_labels"], dtype=dtype, device=device)
    add_lora(classifier, info["r"], info["alpha"], 0.0, tuple(info["targets"]))
    load_adapters(classifier, best_dir)
    return classifier.eval()


@torch.no_grad()
def probabilities(classifier, items, pad_id: int, batch_size: int, device, bf16: bool) -> dict[str, float]:
    """id -> P(relevant), in batches of similar length (little padding), with a progress line."""
    order = sorted(range(len(items)), key=lambda i: len(items[i].input_ids))
    probs, tty = {}, sys.stderr.isatty()
    for start in range(0, len(order), batch_size):
        batch = collate_padded([items[i] for i in order[start:start + batch_size]], pad_id)
        with torch.autocast(torch.device(device).type, torch.bfloat16, enabled=bf16):
            logits = classifier(**to_device(batch, device)).float()
        probs.update(zip(batch["ids"], logits.softmax(-1)[:, 1].tolist()))
        if tty:
            print(f"\rpredicting {len(probs)}/{len(items)}", end="", file=sys.stderr, flush=True)
    print(("\r" if tty else "") + f"predicted {len(probs)} rows", file=sys.stderr)
    return probs


def predict_fold(best_dir, files, task: str, translations: str, max_length: int, lowercase: bool, out_dir,
                 batch_size: int, device, dtype, bf16: bool) -> tuple[dict[str, float], float]:
    """Probabilities of one fold model over the rows of `files`, all of `task`, and the model's tuned threshold.

    They are kept in out_dir/probabilities.jsonl and reused while they cover exactly the rows of `files`.
    """
    info = json.loads((Path(best_dir) / "adapters.json").read_text())
    records = [r for f in files for r in read_records(f, task, translations or None, lowercase, training=False)]
    cache = Path(out_dir) / "probabilities.jsonl"
    if cache.is_file():
        probs = {r["id"]: r["prob"] for r in map(json.loads, cache.read_text().splitlines())}
        if probs.keys() == {r.id for r in records}:
            return probs, info["threshold"]
    classifier = load_fold_model(best_dir, info, dtype, device)
    family = model_family(classifier.model.config.model_type)
    tokenizer = Tokenizer.from_file(str(resolve(info["base_model"]) / "tokenizer.json"))
    items = examples(records, encode(tokenizer, family, records, max_length, translate=True))
    probs = probabilities(classifier, items, pad_token_id(tokenizer, family), batch_size, device, bf16)
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps({"id": i, "prob": p}) + "\n" for i, p in probs.items()))
    tmp.replace(cache)
    return probs, info["threshold"]


def ensemble(fold_probs: list[dict[str, float]], thresholds: list[float], method: str = "mean") -> dict[str, int]:
    """id -> 0/1. mean: the folds' mean probability against their mean tuned threshold. vote: each fold votes
    with its own threshold; a tie counts as relevant (positive-class F1 rewards recall on this data)."""
    ids = fold_probs[0].keys()
    if method == "mean":
        threshold = sum(thresholds) / len(thresholds)
        return {i: int(sum(p[i] for p in fold_probs) / len(fold_probs) >= threshold) for i in ids}
    if method == "vote":
        return {i: int(2 * sum(p[i] >= t for p, t in zip(fold_probs, thresholds)) >= len(fold_probs)) for i in ids}
    raise ValueError(f"unknown ensemble method {method!r}: expected 'mean' or 'vote'")


def id_order(id_: str):
    """Numeric ids in numeric order, others after them in text order."""
    return (0, int(id_), "") if id_.isdigit() else (1, 0, id_)


def write_submission(files, task: str, predictions: dict[str, int], out_dir) -> Path:
    """submit_<task>.txt: one JSON line per row of `files` of this task, sorted by id, with its prediction."""
    target = TARGET_FIELD[task]
    rows = [row for f in files for _, row in read_rows(f) if row.get("task") == task]
    missing = [row["id"] for row in rows if str(row["id"]) not in predictions]
    if missing:
        raise KeyError(f"no prediction for {len(missing)} {task} rows, first id {missing[0]!r}")
    path = Path(out_dir) / f"submit_{task}.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for row in sorted(rows, key=lambda r: id_order(str(r["id"]))):
            out = {k: row.get(k) for k in ("id", "language", "origin_query", target)}
            f.write(json.dumps({**out, "prediction": predictions[str(row["id"])]}, ensure_ascii=False) + "\n")
    return path


def zip_submission(paths, out_dir) -> Path:
    archive = Path(out_dir) / "submit.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as z:
        for path in paths:
            z.write(path, Path(path).name)
    return archive
