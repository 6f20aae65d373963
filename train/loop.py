"""The training loop: one run directory, from a resolved config to the best validation metrics.

An optimizer step sees batch_size x grad_accum x world_size examples. The loss of every micro-batch is its
share of the mean over all of them (all ranks, all micro-steps), so the update does not depend on how the
step is split into ranks and micro-batches; gradients are synchronised only on the last micro-step.
"""
import logging
import math
import signal
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
import torch.nn.functional as F

from data.batching import BatchSampler, collate_packed, collate_padded, collate_shared, examples, micro_batches
from data.folds import default_language_groups, split_rows
from data.inputs import (
    ENCODER_FAMILIES,
    LengthError,
    answer_token_ids,
    encode,
    group_key,
    model_family,
    pad_token_id,
    token_types,
)
from data.records import Record, read_records
from model.adapters import WEIGHTS, build_classifier, trainable_state
from model.classifier import batch_logits, classification_loss, lm_head_rows
from model.config import ModelConfig
from model.loading import CheckpointError, file_hash, load_tokenizer, mapped_tensors, read_config, resolve
from model.lora import LoRATargetError, restore_frozen, store_frozen
from train.checkpoint import LoopState, latest_checkpoint, load_checkpoint, resume_point, save_best, save_checkpoint
from train.config import DTYPES, ConfigError, RunConfig, check_fold, save_config
from train.distributed import (
    Dist,
    all_gather_lists,
    all_reduce_sum,
    init_distributed,
    prepare_model,
    shutdown,
    use_bf16,
)
from train.loggers import check_loggers, open_loggers
from train.metrics import PER_LANGUAGE, best_threshold, classification_metrics, fmt
from train.progress import MetricsLog, Progress, plot
from train.rundir import check_resume, lock_run_dir


@dataclass
class RunResult:
    """What `train` returns: the step of the best evaluation (the last step without validation) and its metrics;
    or, when a SIGTERM stopped the run, `stopped` and the step it stopped after. `init` and `step0` audit an
    init_from hand-off and the evaluation before the first update; `held_out` names held-out languages."""
    step: int
    metrics: dict
    stopped: bool = False
    init: dict | None = None
    step0: dict | None = None
    held_out: list[str] = field(default_factory=list)

    def summary(self) -> dict:
        """The run's result.json: step, the metrics, and the audit entries that apply."""
        audit = {k: v for k, v in (("init", self.init), ("step0", self.step0), ("held_out", self.held_out)) if v}
        return {"step": self.step, **self.metrics, **audit}


def lr_at(step: int, total: int, cfg) -> float:
    """Learning rate of optimizer step `step` (0-based): linear warmup, then constant / linear / cosine decay."""
    warmup = round(cfg.warmup_ratio * total)
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    progress = (step - warmup) / max(total - warmup, 1)
    decay = {"constant": 1.0, "linear": 1.0 - progress, "cosine": 0.5 * (1.0 + math.cos(math.pi * progress))}
    return cfg.lr * decay[cfg.schedule]


def run_classifier(cfg: RunConfig, device: torch.device):
    """The run's classifier (model.build_classifier with the config's settings), from init_from's adapters or, with
    head_init lm_answer, with the LM's answer rows as its head."""
    c = cfg.lora
    check_model_options(cfg, read_config(resolve(cfg.model.path)))
    try:
        classifier = build_classifier(cfg.model.path, c.r, c.alpha, c.dropout, c.targets, DTYPES[cfg.model.dtype],
                                      device, adapters=cfg.init_from or None)
    except LoRATargetError as e:
        raise ConfigError(f"lora.targets: {e}") from None
    if not cfg.init_from and cfg.model.head_init == "lm_answer":
        try:
            answers = answer_token_ids(load_tokenizer(cfg.model.path))
        except ValueError as e:
            raise ConfigError(f"model.head_init: lm_answer: {e}; use head_init: random") from None
        classifier.init_score(lm_head_rows(cfg.model.path, answers))
    return classifier


def encode_examples(cfg: RunConfig, tokenizer, family: str, records: list[Record]) -> list:
    """Token examples of `records` as the run's data settings make them (with translations where the records
    have one), a decoder's grouped by the part they begin with (data.share_prefix puts the shared one first), an
    encoder's with their token types; a data.max_length too short for the template is a ConfigError naming it."""
    first = cfg.data.share_prefix
    try:
        ids = encode(tokenizer, family, records, cfg.data.max_length, True, cfg.data.template == "question", first)
    except LengthError as e:
        raise ConfigError(f"data.{e}") from None  # data.max_length=...
    groups = None if family in ENCODER_FAMILIES else [group_key(r, True, first) for r in records]
    return examples(records, ids, groups, token_types(family, ids))


def check_model_options(cfg: RunConfig, model: ModelConfig) -> None:
    """What only a decoder does: packed and shared-prefix rows (an encoder pools each row's first token and
    attends both ways, so a prefix would see its suffixes), the question template and the LM-answer head (both
    read the LM's answer, which an encoder has not)."""
    if not model.encoder:
        return
    for key, value, asked in (("data.packing", cfg.data.packing, cfg.data.packing),
                              ("data.share_prefix", cfg.data.share_prefix, cfg.data.share_prefix),
                              ("data.template", cfg.data.template, cfg.data.template == "question"),
                              ("model.head_init", cfg.model.head_init, cfg.model.head_init == "lm_answer")):
        if asked:
            raise ConfigError(f"{key}: {value!r} is for decoders; {cfg.model.path} is a {model.model_type} encoder")


def read_data_files(cfg: RunConfig, key: str) -> list[Record]:
    """The records of data.train (or data.valid), every file of it. Rows of two tasks (a joint QC + QI stage, whose
    files number their rows alike) get ids "QC:<id>" and "QI:<id>"; any id still repeated is an error."""
    data_cfg = cfg.data
    paths = data_cfg.train if key == "train" else [data_cfg.valid]
    for path in paths:
        if not Path(path).is_file():
            raise FileNotFoundError(f"data.{key}: file not found: {path}")
    records = [r for path in paths
               for r in read_records(path, data_cfg.task or None, data_cfg.translations or None, data_cfg.lowercase)]
    if len({r.task for r in records}) > 1:
        records = [replace(r, id=f"{r.task}:{r.id}") for r in records]
    seen = set()
    for r in records:
        if r.id in seen:
            raise ConfigError(f"data.{key}: id {r.id!r} is in more than one of {paths}")
        seen.add(r.id)
    return records


@dataclass
class Data:
    """What a run trains and validates on: token examples, and per id the language and the task."""
    train: list
    valid: list
    languages: dict[str, str]
    tasks: dict[str, str]
    pad_id: int
    held_out: set[str]  # the language split's held-out languages: in validation only, never in training


def load_data(cfg: RunConfig, model_type: str) -> Data:
    """Validation is data.valid, a fold of data.train, or empty. Queries carry their English translation when the
    records have one (data.translations or a column)."""
    data_cfg = cfg.data
    if data_cfg.translations and not Path(data_cfg.translations).is_file():
        raise FileNotFoundError(f"data.translations: file not found: {data_cfg.translations}")
    records, held_out = read_data_files(cfg, "train"), set()
    if len({r.task for r in records}) > 1 and data_cfg.template != "question":
        raise ConfigError("data.train holds QC and QI rows: a joint stage needs data.template: question, whose "
                          "question names each row's task")
    if data_cfg.valid:
        train_records, valid_records = records, read_data_files(cfg, "valid")
    elif data_cfg.fold >= 0:  # fixed folds (data.split_seed): train.seed changes the run, not the split
        groups = held_out_groups(cfg, records)
        try:
            train_idx, valid_idx = split_rows(records, data_cfg.fold, data_cfg.n_folds, data_cfg.group_levels,
                                              data_cfg.split_seed, data_cfg.stratify_top_level, groups)
        except ValueError as e:
            raise ConfigError(f"data.n_folds: {e} in {data_cfg.train} at data.group_levels="
                              f"{data_cfg.group_levels}") from None
        train_records, valid_records = [records[i] for i in train_idx], [records[i] for i in valid_idx]
        held_out = set(groups[data_cfg.fold]) if groups else set()
    else:
        train_records, valid_records = records, []
    tokenizer = load_tokenizer(cfg.model.path)
    family = model_family(model_type)
    everything = train_records + valid_records
    train_set, valid_set = (encode_examples(cfg, tokenizer, family, rs) for rs in (train_records, valid_records))
    return Data(train_set, valid_set, {r.id: r.language for r in everything}, {r.id: r.task for r in everything},
                pad_token_id(tokenizer, family), held_out)


def held_out_groups(cfg: RunConfig, records) -> list[list[str]] | None:
    """The language groups of a language-held-out split (None for the grouped split), checked against the data."""
    data_cfg = cfg.data
    if data_cfg.split != "languages":
        return None
    groups = data_cfg.held_out_languages or default_language_groups(records)
    check_fold(data_cfg, groups)
    if data_cfg.fold >= data_cfg.n_folds:
        logging.getLogger(__name__).info("data.fold %d holds out %s and validates on grouped fold %d of %d "
                                         "(data.fold mod data.n_folds)", data_cfg.fold, groups[data_cfg.fold],
                                         data_cfg.fold % data_cfg.n_folds, data_cfg.n_folds)
    present = {r.language for r in records}
    if not set(groups[data_cfg.fold]) & present:
        raise ConfigError(f"data.held_out_languages: fold {data_cfg.fold} holds out {groups[data_cfg.fold]}, which "
                          f"{data_cfg.train} has no rows of")
    return groups


def batch_layout(cfg: RunConfig, pad_id: int):
    """examples -> a training batch: shared-prefix, packed or padded rows (widths rounded up to few shapes with
    a token budget)."""
    bucket = bool(cfg.data.max_tokens)
    if cfg.data.share_prefix:
        return lambda b: collate_shared(b, pad_id, bucket)
    if cfg.data.packing:
        return lambda b: collate_packed(b, pad_id, cfg.data.max_length, bucket)
    return lambda b: collate_padded(b, pad_id, bucket=bucket)


def precision_timings(model, batch: dict, d: Dist, repeats: int = 3) -> tuple[float, float]:
    """Seconds of a forward and backward of `batch` in float32 and in bf16 autocast (frozen weights stored in bf16,
    as a bf16 run stores them), the fastest of `repeats` after a warm-up each, summed over ranks (every rank makes
    the same choice); logged on rank 0. Leaves the weights and no gradient behind."""
    seconds = []
    for bf16 in (False, True):
        stored = store_frozen(model, torch.bfloat16) if bf16 else None
        runs = []
        for _ in range(repeats + 1):
            began = time.perf_counter()
            batch_logits(model, batch, d.device, bf16).sum().backward()
            runs.append(time.perf_counter() - began)
        seconds.append(min(runs[1:]))
        if stored:
            restore_frozen(model, stored)
    model.zero_grad(set_to_none=True)
    float32, bf16 = all_reduce_sum(torch.tensor(seconds, device=d.device), d).tolist()
    if d.main:
        logging.getLogger(__name__).info("train.bf16 auto: a step of %d examples took %.3f s in float32, %.3f s in "
                                         "bf16 autocast on %s", len(batch["ids"]), float32 / d.world_size,
                                         bf16 / d.world_size, torch.backends.cpu.get_cpu_capability())
    return float32, bf16


def log_precision(bf16: bool, device: torch.device) -> None:
    logging.getLogger(__name__).info("precision: %s on %s", "bf16 autocast" if bf16 else "float32",
                                     torch.backends.cpu.get_cpu_capability() if device.type == "cpu" else device)


class StopFlag:
    """Set by SIGTERM (cluster pre-emption): the loop saves a checkpoint at the end of the step and returns."""

    def __init__(self):
        self.requested = False
        self.previous = signal.signal(signal.SIGTERM, self.handle)

    def handle(self, signum, frame):
        self.requested = True

    def restore(self):
        signal.signal(signal.SIGTERM, self.previous)


def train_step(model, optimizer, batches, cfg: RunConfig, d: Dist) -> tuple[float, float, int]:
    """Forward/backward over this rank's micro-batches, then one optimizer step. Returns the step's mean loss,
    gradient norm and real tokens, over all ranks; a loss or gradient that is not finite raises FloatingPointError
    before the weights change."""
    t = cfg.train
    weights = torch.tensor(t.class_weights or [1.0, 1.0])
    weight = lambda labels: float(weights[labels].sum())  # noqa: E731  the denominator torch's mean uses
    total = float(all_reduce_sum(torch.tensor([sum(weight(b["labels"]) for b in batches)], device=d.device), d))
    loss_sum, tokens = torch.zeros((), device=d.device), torch.zeros((), device=d.device)
    for i, batch in enumerate(batches):
        if d.world_size > 1:
            model.set_requires_gradient_sync(i == len(batches) - 1)
        labels = batch["labels"].to(d.device)
        logits = batch_logits(model, batch, d.device, t.bf16)
        loss = classification_loss(logits, labels, t.class_weights or None, t.label_smoothing)
        share = weight(batch["labels"]) / total
        (loss * share * d.world_size).backward()  # FSDP averages gradients over ranks: undo it
        loss_sum += loss.detach() * share
        tokens += (batch["attention_mask"] != 0).sum()
    loss, tokens = all_reduce_sum(torch.stack([loss_sum, tokens]), d).tolist()
    params = [p for p in model.parameters() if p.requires_grad]
    norm = torch.nn.utils.clip_grad_norm_(params, t.clip if t.clip > 0 else math.inf)
    norm = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)
    if not (math.isfinite(loss) and math.isfinite(norm)):
        raise FloatingPointError(f"loss is {loss} (gradient norm {norm}): stopping without updating the weights")
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss, norm, int(tokens)


@torch.no_grad()
def evaluate(model, data: Data, cfg: RunConfig, d: Dist) -> tuple[dict, dict]:
    """(metrics, id -> P(relevant)) on the validation examples, each rank scoring a shard; every rank gets both.

    With held-out languages, `seen_*` and `unseen_*` metrics are added, and the threshold is tuned on the seen
    languages' rows only: no figure of the unseen ones is looked at to choose anything. With rows of both tasks
    (a joint model), `QC_*` and `QI_*` metrics (each as if that task were validated alone) and their mean,
    `task_mean_f1` (with held-out languages also `seen_task_mean_f1`, over the seen rows of each task).
    """
    model.eval()
    valid = data.valid
    sampler = BatchSampler([len(e.input_ids) for e in valid], cfg.train.eval_batch_size, shuffle=False,
                           rank=d.rank, world_size=d.world_size, groups=group_numbers(valid))
    rows = []
    for indices in sampler:  # each shared prefix once, whatever the training layout: the same logits, less work
        batch = collate_shared([valid[i] for i in indices], data.pad_id)
        logits = batch_logits(model, batch, d.device, cfg.train.bf16)
        labels = batch["labels"].to(d.device)
        losses = F.cross_entropy(logits, labels, reduction="none")
        probs = logits.softmax(-1)[:, 1]
        rows += zip(batch["ids"], probs.tolist(), batch["labels"].tolist(), losses.tolist())
    if d.world_size > 1:
        model.reshard()  # without a backward, FSDP2 leaves the root's parameters gathered (and not the optimizer's)
    model.train()
    unique = {row[0]: row[1:] for row in all_gather_lists(rows, d)}  # the sampler repeats a few examples
    ids = list(unique)
    probs, labels, losses = (list(col) for col in zip(*unique.values()))
    metrics = scores(probs, labels, [data.languages[i] for i in ids], [data.languages[i] not in data.held_out
                                                                      for i in ids])
    metrics["loss"] = sum(losses) / len(losses)
    tasks = sorted({data.tasks[i] for i in ids})
    if len(tasks) > 1:
        for task in tasks:
            picked = [j for j, i in enumerate(ids) if data.tasks[i] == task]
            part = scores([probs[j] for j in picked], [labels[j] for j in picked],
                          [data.languages[ids[j]] for j in picked],
                          [data.languages[ids[j]] not in data.held_out for j in picked])
            metrics.update({f"{task}_{k}": v for k, v in part.items() if not k.startswith(PER_LANGUAGE)})
        mean = lambda f1s: None if None in f1s else sum(f1s) / len(f1s)  # noqa: E731
        metrics["task_mean_f1"] = mean([metrics[f"{task}_f1"] for task in tasks])
        if data.held_out:  # what may choose: the seen languages' rows of each task
            metrics["seen_task_mean_f1"] = mean([metrics.get(f"{task}_seen_f1", metrics[f"{task}_f1"])
                                                 for task in tasks])
    return metrics, dict(zip(ids, probs))


def group_numbers(items) -> list[int]:
    """A number per example, the same for examples of one group (data.batching.Example.group)."""
    numbers = {}
    return [numbers.setdefault(e.id if e.group is None else ("group", e.group), len(numbers)) for e in items]


def selection_score(metrics: dict, held_out) -> tuple[str, float]:
    """(name, value) of what chooses the best step: the competition's mean of the task F1s for a joint model, F1
    otherwise; with held-out languages, the same over the seen languages' rows only (held-out ones choose nothing:
    seen_task_mean_f1, seen_f1); where that F1 is undefined (no relevant validation row), minus the validation
    loss, which always is."""
    joint = "task_mean_f1" in metrics
    name = ("seen_task_mean_f1" if joint else "seen_f1") if held_out else ("task_mean_f1" if joint else "f1")
    return (name, metrics[name]) if metrics[name] is not None else ("-loss", -metrics["loss"])


def scores(probs, labels, languages, seen) -> dict:
    """Metrics of these rows, the threshold tuned on the `seen` ones, and seen_* / unseen_* when some are not."""
    metrics = classification_metrics(probs, labels, languages)
    tuned = [j for j, s in enumerate(seen) if s]
    metrics["tuned_threshold"] = threshold = best_threshold([probs[j] for j in tuned], [labels[j] for j in tuned])
    metrics["tuned_f1"] = classification_metrics(probs, labels, languages, threshold)["f1"]
    if not all(seen):
        for name, rows in (("seen", tuned), ("unseen", [j for j, s in enumerate(seen) if not s])):
            part = classification_metrics([probs[j] for j in rows], [labels[j] for j in rows],
                                          [languages[j] for j in rows])
            metrics.update({f"{name}_{k}": part[k] for k in ("f1", "auc", "all_positive_f1")})
            metrics[f"{name}_rows"] = len(rows)
    return metrics


def train(cfg: RunConfig) -> RunResult:
    """Train one run directory (resuming from its newest checkpoint when asked)."""
    cfg.check()
    check_loggers(cfg.train.loggers)
    d = init_distributed()
    lock = None
    try:
        lock = lock_run_dir(cfg.run_dir, d)  # one run per directory, until this process ends
        return _train(cfg, d)
    finally:
        if lock:
            lock.release()
        shutdown(d)


def _train(cfg: RunConfig, d: Dist) -> RunResult:
    t, run_dir = cfg.train, Path(cfg.run_dir)
    if not cfg.resume and latest_checkpoint(run_dir):
        raise ConfigError(f"run_dir {run_dir} has checkpoints: set resume=true to continue, or choose a new run_dir")
    resume_from = resume_point(run_dir, warn=d.main) if cfg.resume else None
    if resume_from and (run_dir / "config.yaml").is_file():
        check_resume(cfg, run_dir / "config.yaml")
    if d.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")
    torch.manual_seed(t.seed)  # the same LoRA and head initialisation on every rank
    classifier = run_classifier(cfg, d.device)
    data = load_data(cfg, classifier.model.config.model_type)
    train_set, valid_set, pad_id, held_out = data.train, data.valid, data.pad_id, data.held_out
    share = cfg.data.share_prefix
    collate = batch_layout(cfg, pad_id)
    timings = (lambda: precision_timings(classifier, collate(train_set[:t.batch_size]), d)) if train_set else None
    cfg = replace(cfg, train=replace(cfg.train, bf16=use_bf16(cfg.train.bf16, d.device, timings)))
    t = cfg.train
    if t.bf16 and d.world_size == 1:  # (FSDP all-gathers its bf16 copies itself)
        store_frozen(classifier, torch.bfloat16)
    model = prepare_model(classifier, d, t.bf16, t.activation_checkpointing, t.compile)
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=t.lr,
                                  weight_decay=t.weight_decay)
    per_rank = t.batch_size * t.grad_accum
    lengths = [len(e.input_ids) for e in train_set]
    sampler = BatchSampler(lengths, per_rank, seed=t.seed, rank=d.rank, world_size=d.world_size, drop_last=True,
                           groups=group_numbers(train_set) if share else None,
                           group_size=cfg.data.suffixes_per_prefix)
    steps_per_epoch = len(sampler)
    if steps_per_epoch == 0:
        raise ConfigError(f"{len(train_set)} training examples are fewer than one optimizer step "
                         f"(batch_size x grad_accum x ranks = {per_rank * d.world_size})")
    total = t.max_steps or t.epochs * steps_per_epoch

    if d.main:
        log_precision(t.bf16, d.device)
    torch.manual_seed(t.seed + 1 + d.rank)  # dropout differs between ranks
    state = LoopState(global_batch=per_rank * d.world_size)
    if resume_from:
        state = load_checkpoint(resume_from, model, optimizer, d)
        if state.global_batch != per_rank * d.world_size:
            raise ConfigError(f"{resume_from} was written with {state.global_batch} examples per step, this "
                             f"config has {per_rank * d.world_size} (batch_size x grad_accum x ranks): keep the "
                             f"product to resume, or start a new run_dir")
    loggers = open_loggers(t.loggers, run_dir, state.step) if d.main else []
    metrics_log = MetricsLog(run_dir / "metrics.jsonl", loggers)
    progress = Progress(total, state.step) if d.main else None
    say = progress.message if d.main else (lambda text: None)
    if d.main:
        metrics_log.truncate_after(state.step)
        say(f"{len(train_set)} training / {len(valid_set)} validation examples, {d.world_size} rank(s), "
            f"{steps_per_epoch} steps per epoch, {total} steps"
            + (f", resuming from {resume_from}" if resume_from else ""))

    def save(step):
        path = save_checkpoint(run_dir, step, model, optimizer, state, d, t.keep_last)
        say(f"step {step}: checkpoint {path}")

    def evaluate_and_keep_best(step):
        metrics, probs = evaluate(model, data, cfg, d)
        name, score = selection_score(metrics, held_out)
        if d.main:
            metrics_log.append(step=step, split="valid", **metrics)
            unseen = f" | unseen {sorted(held_out)}: F1 {fmt(metrics['unseen_f1'])} AUC " \
                     f"{fmt(metrics['unseen_auc'])}" if held_out else ""
            say(f"step {step}: valid loss {metrics['loss']:.4f} F1 {fmt(metrics['f1'])} (all-positive "
                f"{fmt(metrics['all_positive_f1'])}) AUC {fmt(metrics['auc'])}{unseen}")
            if name == "-loss" and state.best is None:
                say("F1 is undefined on this validation set (it has no relevant row): the best step is the one "
                    "with the lowest validation loss")
        if state.best is None or score > state.best_score:
            save_best(run_dir / "best", model, d, validation=probs, **best_meta(cfg, step, metrics, state, d.device))
            state.best_score, state.best_step, state.best = score, step, metrics
        return metrics

    if cfg.init_from and not resume_from:
        state.init = audit_init(model, cfg.init_from)
        if d.main:
            say(f"started from {cfg.init_from} (adapters sha256 {state.init['sha256'][:12]}), checked tensor "
                f"for tensor")
    if (cfg.init_from or cfg.model.head_init == "lm_answer") and valid_set and not resume_from:
        # what the run starts knowing (the other task's stage, the LM's own yes/no), before any update
        state.step0 = {k: v for k, v in evaluate_and_keep_best(0).items() if not k.startswith(PER_LANGUAGE)}

    stop = StopFlag()
    try:
        step, began, tokens = state.step, time.perf_counter(), 0
        epoch, position = divmod(step, steps_per_epoch)
        while step < total:
            sampler.set_epoch(epoch, position)
            for update in sampler.updates():
                lr = lr_at(step, total, t)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                if cfg.data.max_tokens:
                    parts = micro_batches(update, d.rank, lengths, cfg.data.max_tokens, cfg.data.packing, share)
                else:
                    rows = update[d.rank].tolist()
                    parts = [rows[j:j + t.batch_size] for j in range(0, len(rows), t.batch_size)]
                micro = [collate([train_set[i] for i in part]) for part in parts]
                try:
                    loss, norm, step_tokens = train_step(model, optimizer, micro, cfg, d)
                except FloatingPointError as e:
                    last = latest_checkpoint(run_dir) or "none (no checkpoint was written yet)"
                    raise FloatingPointError(f"step {step + 1}: {e}; the last good checkpoint is {last}") from None
                step, tokens = step + 1, tokens + step_tokens
                state.step, state.epoch, state.batch_in_epoch = step, step // steps_per_epoch, step % steps_per_epoch
                if d.main:
                    speed = tokens / (time.perf_counter() - began)
                    metrics_log.append(step=step, split="train", epoch=step / steps_per_epoch, loss=loss, lr=lr,
                               grad_norm=norm, tokens_per_s=speed)
                    progress.update(step, loss, lr, speed)
                epoch_end, last_step = step % steps_per_epoch == 0, step == total
                if valid_set and (epoch_end or last_step or (t.eval_every and step % t.eval_every == 0)):
                    evaluate_and_keep_best(step)
                stopping = bool(all_reduce_sum(torch.tensor([float(stop.requested)], device=d.device), d))
                if epoch_end or last_step or stopping or (t.save_every and step % t.save_every == 0):
                    save(step)
                if stopping:
                    say(f"SIGTERM: stopped after step {step}; run again with resume=true to continue")
                    return RunResult(step, state.best or {}, stopped=True)
                if last_step:
                    break
            epoch, position = epoch + 1, 0
    finally:
        stop.restore()
        metrics_log.close()
    if not valid_set:
        save_best(run_dir / "best", model, d, **best_meta(cfg, step, {}, state, d.device))
    if d.main:
        say(plot(metrics_log, run_dir))
    return RunResult(step if state.best is None else state.best_step, state.best or {}, init=state.init,
                     step0=state.step0, held_out=sorted(held_out))


def audit_init(model, init_from) -> dict:
    """Check that the trainable tensors the run starts from are exactly those of init_from's adapters file (a
    hand-off that re-initialised them, as chaining PEFT stages can, would go unnoticed otherwise); returns the
    file's path and sha256 for the run's records. Collective under FSDP2."""
    path = Path(init_from) / WEIGHTS
    want = mapped_tensors(path)
    for name, tensor in trainable_state(model).items():
        if not torch.equal(tensor, want[name].to(tensor.dtype)):
            raise CheckpointError(f"{path}: the run's starting tensor {name!r} differs from the file's: the "
                                  f"hand-off from init_from did not carry its weights")
    return {"path": str(path), "sha256": file_hash(path)}


def best_meta(cfg: RunConfig, step: int, metrics: dict, state: LoopState, device: torch.device) -> dict:
    """What a predictor needs next to the weights (save_adapters adds the LoRA settings: the precision the run
    trained in on its kind of device, too), and where the run started from (init_from's path and hash)."""
    return {"step": step, "base_model": cfg.model.path, "threshold": metrics.get("tuned_threshold", 0.5),
            "precision": {"device": device.type, "bf16": cfg.train.bf16},
            **({"init": state.init} if state.init else {}),
            "metrics": metrics}
