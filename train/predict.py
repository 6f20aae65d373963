"""Fold models -> probabilities per fold -> ensemble -> threshold -> the competition's submission files.

Every row of a dev/test file gets a prediction: nothing is dropped, whatever its query or target. A fold's
probabilities are cached beside it and reused only while they were computed from the same rows (cleaned text and
translations), by the same fold model (its adapter files' hash) and base model, with the same settings.
"""
import glob
import hashlib
import io
import json
import math
import os
import re
import shutil
import sys
import time
import zipfile
from dataclasses import replace
from pathlib import Path

import torch

from data.batching import collate_shared, group_batches
from data.inputs import model_family, pad_token_id
from data.records import TARGET_FIELD, DataError, Record, read_rows
from model.adapters import META, WEIGHTS, build_classifier
from model.classifier import batch_logits
from model.loading import CheckpointError, file_hash, load_tokenizer, read_json, resolve
from model.lora import merge_for_inference, store_frozen
from train.config import DTYPES, ConfigError, RunConfig
from train.distributed import use_bf16
from train.loop import encode_examples
from train.rundir import write_atomic

CACHE = "probabilities.json"


@torch.inference_mode()
def probabilities(classifier, items, pad_id: int, batch_size: int, device, bf16: bool) -> dict[str, float]:
    """id -> P(relevant), in batches of whole groups (each shared prefix computed once: data.batching), groups by
    length (little padding), with a progress line; no autograd bookkeeping at all (inference_mode), and the
    classifier in eval mode draws no dropout."""
    probs, tty = {}, sys.stderr.isatty()
    for part in group_batches(items, batch_size):
        batch = collate_shared(part, pad_id)
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
        "settings": [run.data.max_length, run.data.lowercase, run.data.template, run.data.share_prefix,
                     run.model.dtype, run.train.bf16],
    }
    return hashlib.sha256(json.dumps(parts, ensure_ascii=False).encode()).hexdigest()


def finite(probs: dict[str, float], source: Path) -> dict[str, float]:
    """`probs`, or a CheckpointError naming the fold model's file when one is NaN or infinite: such a row would
    silently count as irrelevant (every comparison with NaN is false)."""
    bad = [i for i, p in probs.items() if not (isinstance(p, float | int) and math.isfinite(p))]
    if bad:
        raise CheckpointError(f"{source}: {len(bad)} of {len(probs)} probabilities are not finite (first id "
                              f"{bad[0]!r}): this fold model cannot predict; retrain the fold")
    return probs


def open_fold(run: RunConfig, device) -> tuple[RunConfig, Path, dict, Path]:
    """A trained fold: its config with train.bf16 resolved for `device` (auto: the precision the fold's training
    chose on the same kind of device), its best/ directory, adapters.json, and the base model. The config's
    model.path is the base model (so a moved or downloaded checkpoint works); the one recorded in adapters.json
    is used only when the config names none."""
    best_dir = Path(run.run_dir) / "best"
    info = read_json(best_dir / META, "adapters.json of a trained fold")
    trained = info.get("precision", {})
    same_kind = trained.get("device") == torch.device(device).type and run.train.bf16 == "auto"
    bf16 = trained["bf16"] if same_kind else use_bf16(run.train.bf16, torch.device(device))
    run = replace(run, train=replace(run.train, bf16=bf16))
    return run, best_dir, info, resolve(run.model.path or info["base_model"])


def fold_model(run: RunConfig, best_dir: Path, info: dict, base: Path, device):
    """The fold's classifier in eval mode, a float32 base model with the LoRA update folded into its weights
    (model.lora.merge_for_inference), then stored in bf16 for a bf16 run; its tokenizer and family."""
    classifier = build_classifier(base, info["r"], info["alpha"], 0.0, info["targets"], DTYPES[run.model.dtype],
                                  device, info["num_labels"], adapters=best_dir).eval()
    merge_for_inference(classifier)
    if run.train.bf16:
        store_frozen(classifier, torch.bfloat16)
    return classifier, load_tokenizer(base), model_family(classifier.model.config.model_type)


def predict_fold(run: RunConfig, records: list[Record], batch_size: int, device) -> dict[str, float]:
    """Probabilities of the fold model in run.run_dir/best over `records` (as train.loop.encode_examples reads
    them); the fold's own threshold is in best/adapters.json."""
    run, best_dir, info, base = open_fold(run, device)
    key = fingerprint(run, best_dir, base, records)
    cache = Path(run.run_dir) / "predictions" / CACHE
    if cache.is_file():
        cached = read_json(cache)
        if cached.get("fingerprint") == key:
            return finite(cached["probabilities"], cache)
    classifier, tokenizer, family = fold_model(run, best_dir, info, base, device)
    items = encode_examples(run, tokenizer, family, records)
    probs = probabilities(classifier, items, pad_token_id(tokenizer, family), batch_size, device, run.train.bf16)
    finite(probs, best_dir / WEIGHTS)
    write_atomic(cache, json.dumps({"fingerprint": key, "probabilities": probs}, ensure_ascii=False))
    return probs


def mean_probability(fold_probs: list[dict[str, float]], weights: list[float]) -> dict[str, float]:
    """id -> the folds' probabilities averaged with `weights`."""
    total = sum(weights)
    return {i: sum(w * p[i] for p, w in zip(fold_probs, weights)) / total for i in fold_probs[0]}


def ensemble(fold_probs: list[dict[str, float]], weights: list[float], threshold_of,
             vote: bool = False) -> dict[str, int]:
    """id -> 0/1 from the folds' probabilities, each fold weighted by `weights`, against threshold_of(id).
    Mean: the weighted mean probability. Vote: the weighted share of folds at or above the threshold; a tie counts
    as relevant (positive-class F1 rewards recall on this data)."""
    if vote:
        total = sum(weights)
        return {i: int(2 * sum(w * (p[i] >= threshold_of(i)) for p, w in zip(fold_probs, weights)) >= total)
                for i in fold_probs[0]}
    return {i: int(p >= threshold_of(i)) for i, p in mean_probability(fold_probs, weights).items()}


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


SUBMISSION_FILES = re.compile(r"submit(_\w+\.txt|\.zip)|\.tmp-submit.*")  # what a submission directory holds
ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # every member's time: the same predictions give the same zip, byte for byte


def submission_zip(files: dict[str, bytes]) -> bytes:
    """submit.zip of `files`, members in name order with fixed times and permissions: reproducible bytes."""
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as z:
        for name in sorted(files):
            info = zipfile.ZipInfo(name, date_time=ZIP_TIME)
            info.compress_type, info.create_system, info.external_attr = zipfile.ZIP_DEFLATED, 3, 0o644 << 16
            z.writestr(info, files[name])
    return archive.getvalue()


def write_submission(texts: dict[str, str], out_dir) -> Path:
    """submit_<task>.txt for each task's text and submit.zip of them, published as one unit: they are written
    into a fresh hidden directory beside out_dir, and out_dir is a symbolic link to it, replaced in one rename. A
    reader (or a kill at any point) sees the previous submission or the new one, never a mix; versions left by a
    kill are removed by the next publish. An out_dir that is a real directory of submission files (an older
    layout) is first moved aside; one holding anything else is refused."""
    out_dir = Path(out_dir)
    parent, name = out_dir.parent, out_dir.name
    parent.mkdir(parents=True, exist_ok=True)
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"predict.out_dir {out_dir}: is a file, not a directory")
    if out_dir.is_dir() and not out_dir.is_symlink():
        other = sorted(p.name for p in out_dir.iterdir() if not SUBMISSION_FILES.fullmatch(p.name))
        if other:
            raise ConfigError(f"predict.out_dir {out_dir}: holds {other[0]!r}, which is no submission file; "
                              f"choose a directory of its own for the submission")
    files = {f"submit_{task}.txt": text.encode() for task, text in sorted(texts.items())}
    files["submit.zip"] = submission_zip(files)
    version = parent / f".{name}.{time.time_ns()}-{os.getpid()}"
    try:
        version.mkdir()
        for file, content in files.items():
            (version / file).write_bytes(content)
        link = version.with_name(version.name + ".link")
        os.symlink(version.name, link)
    except BaseException:
        shutil.rmtree(version, ignore_errors=True)
        raise
    if out_dir.is_dir() and not out_dir.is_symlink():
        os.rename(out_dir, version.with_name(version.name + ".old"))
    os.replace(link, out_dir)
    for stale in parent.glob(f".{glob.escape(name)}.*"):  # earlier versions, and whatever a kill left
        if stale.name != version.name:
            if stale.is_dir() and not stale.is_symlink():
                shutil.rmtree(stale)
            else:
                stale.unlink()
    return out_dir / "submit.zip"
