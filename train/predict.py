"""Fold models -> probabilities per fold -> ensemble -> threshold -> the competition's submission files.

Every row of a dev/test file gets a prediction: nothing is dropped, whatever its query or target. A fold's
probabilities are cached beside it and reused only while they were computed from the same rows (cleaned text and
translations), by the same fold model (its adapter files' hash) and base model, with the same settings.
"""
import hashlib
import io
import json
import os
import sys
import zipfile
from dataclasses import replace
from pathlib import Path

import torch

from data.batching import collate_padded, examples
from data.inputs import encode, model_family, pad_token_id, token_types
from data.records import TARGET_FIELD, DataError, Record, read_rows
from model.adapters import META, WEIGHTS, build_classifier
from model.classifier import batch_logits
from model.loading import file_hash, load_tokenizer, read_json, resolve
from model.lora import merge_for_inference
from train.config import DTYPES, RunConfig
from train.distributed import use_bf16
from train.rundir import write_atomic

CACHE = "probabilities.json"


@torch.inference_mode()
def probabilities(classifier, items, pad_id: int, batch_size: int, device, bf16: bool) -> dict[str, float]:
    """id -> P(relevant), in batches of similar length (little padding), with a progress line; no autograd
    bookkeeping at all (inference_mode), and the classifier in eval mode draws no dropout."""
    order = sorted(range(len(items)), key=lambda i: len(items[i].input_ids))
    probs, tty = {}, sys.stderr.isatty()
    for start in range(0, len(order), batch_size):
        batch = collate_padded([items[i] for i in order[start:start + batch_size]], pad_id)
        logits = batch_logits(classifier, batch, device, bf16)
        probs.update(zip(batch["ids"], logits.softmax(-1)[:, 1].tolist()))
        if tty:
            print(f"\rpredicting {len(probs)}/{len(items)}", end="", file=sys.stderr, flush=True)
    print(("\r" if tty else "") + f"predicted {len(probs)} rows", file=sys.stderr)
    return probs


def fingerprint(run: RunConfig, best_dir: Path, base: Path, records: list[Record]) -> str:
    """What the probabilities of `records` depend on: the rows as the model sees them, the fold model's files,
    the base model (config, tokenizer, weight file sizes) and the settings that change the computed numbers."""
    weights = sorted((p.name, p.stat().st_size) for p in base.glob("*.safetensors"))
    parts = {
        "rows": [[r.id, r.query, r.target, r.translation] for r in records],
        "adapters": [file_hash(best_dir / WEIGHTS), file_hash(best_dir / META)],
        "base": [file_hash(base / "config.json"), file_hash(base / "tokenizer.json"), weights],
        "settings": [run.data.max_length, run.data.lowercase, run.data.template, run.model.dtype, run.train.bf16],
    }
    return hashlib.sha256(json.dumps(parts, ensure_ascii=False).encode()).hexdigest()


def predict_fold(run: RunConfig, records: list[Record], batch_size: int, device) -> tuple[dict[str, float], float]:
    """Probabilities of the fold model in run.run_dir/best over `records`, and the model's tuned threshold.
    A float32 base model gets the LoRA update folded into its weights (model.lora.merge_for_inference).

    The config's model.path is the base model (so a moved or downloaded checkpoint works); the one recorded in
    adapters.json is used only when the config names none.
    """
    run = replace(run, train=replace(run.train, bf16=use_bf16(run.train.bf16, torch.device(device))))
    best_dir = Path(run.run_dir) / "best"
    info = read_json(best_dir / META, "adapters.json of a trained fold")
    base = resolve(run.model.path or info["base_model"])
    key = fingerprint(run, best_dir, base, records)
    cache = Path(run.run_dir) / "predictions" / CACHE
    if cache.is_file():
        cached = read_json(cache)
        if cached.get("fingerprint") == key:
            return cached["probabilities"], info["threshold"]
    classifier = build_classifier(base, info["r"], info["alpha"], 0.0, info["targets"], DTYPES[run.model.dtype],
                                  device, info["num_labels"], adapters=best_dir).eval()
    merge_for_inference(classifier)
    family = model_family(classifier.model.config.model_type)
    tokenizer = load_tokenizer(base)
    rows = encode(tokenizer, family, records, run.data.max_length, translate=True,
                  question=run.data.template == "question")
    items = examples(records, rows, token_types(family, rows))
    probs = probabilities(classifier, items, pad_token_id(tokenizer, family), batch_size, device, run.train.bf16)
    write_atomic(cache, json.dumps({"fingerprint": key, "probabilities": probs}, ensure_ascii=False))
    return probs, info["threshold"]


def ensemble(fold_probs: list[dict[str, float]], weights: list[float], threshold_of,
             vote: bool = False) -> dict[str, int]:
    """id -> 0/1 from the folds' probabilities, each fold weighted by `weights`, against threshold_of(id).
    Mean: the weighted mean probability. Vote: the weighted share of folds at or above the threshold; a tie counts
    as relevant (positive-class F1 rewards recall on this data)."""
    total = sum(weights)
    if vote:
        return {i: int(2 * sum(w * (p[i] >= threshold_of(i)) for p, w in zip(fold_probs, weights)) >= total)
                for i in fold_probs[0]}
    return {i: int(sum(w * p[i] for p, w in zip(fold_probs, weights)) / total >= threshold_of(i))
            for i in fold_probs[0]}


def id_order(id_: str):
    """Numeric ids in numeric order, others after them in text order."""
    return (0, int(id_), "") if id_.isdigit() else (1, 0, id_)


def submission_text(files, task: str, predictions: dict[str, int]) -> str:
    """submit_<task>.txt: one JSON line per row of `files` (all of this task), sorted by id, with its prediction."""
    target = TARGET_FIELD[task]
    rows = [(path, row) for path in files for _, row in read_rows(path)]
    missing = [(path, row["id"]) for path, row in rows if str(row["id"]) not in predictions]
    if missing:
        raise DataError(missing[0][0], None, "id", f"no prediction for {len(missing)} {task} rows, first id "
                                                   f"{missing[0][1]!r}")
    lines = []
    for _, row in sorted(rows, key=lambda r: id_order(str(r[1]["id"]))):
        out = {k: row.get(k) for k in ("id", "language", "origin_query", target)}
        lines.append(json.dumps({**out, "prediction": predictions[str(row["id"])]}, ensure_ascii=False) + "\n")
    return "".join(lines)


def write_submission(texts: dict[str, str], out_dir) -> Path:
    """submit_<task>.txt for each task's text, and submit.zip of them. Every file is first written under a
    temporary name, and only when all are complete are they renamed into place: a failure (a full disk, say)
    leaves the previous submission whole."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {f"submit_{task}.txt": text.encode() for task, text in sorted(texts.items())}
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as z:
        for name, content in files.items():
            z.writestr(name, content)
    files["submit.zip"] = archive.getvalue()
    written = []
    try:
        for name, content in files.items():
            written.append(out_dir / f".tmp-{name}")
            written[-1].write_bytes(content)
    except BaseException:
        for tmp in written:
            tmp.unlink(missing_ok=True)
        raise
    for name, tmp in zip(files, written):
        os.replace(tmp, out_dir / name)
    return out_dir / "submit.zip"
