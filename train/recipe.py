"""The whole method: stages x folds of training runs, a summary table, then fold-ensembled submission files.

A stage trains one task, on all its data (`folds: full`) or fold by fold (`folds: [0, 1, 2, 3, 4]`), optionally
starting from an earlier stage's adapters and head (`init_from`: fold k from fold k, or from that stage's full
run). The method's recipe is two stages per target task: the other task's full data, then the target task's folds.
Each run has its own directory, run_dir/<stage>/<fold k | full>; a run that finished is not redone.
`predict(cfg)` alone (`python -m train.commands.predict`) predicts again from trained folds.
"""
import contextlib
import json
from pathlib import Path

import torch

from data.records import TARGET_FIELD, DataError, read_records, read_rows
from model.loading import read_json
from train.checkpoint import VALIDATION
from train.config import (
    ConfigError,
    DataSection,
    RunConfig,
    StageSection,
    run_config,
    save_config,
    stage_folds,
    stage_sections,
)
from train.loop import read_data_files, train
from train.metrics import fmt
from train.predict import ensemble, predict_fold, submission_text, write_submission
from train.rundir import RunLock, write_atomic
from train.thresholds import Thresholds, choose, tune

RESULT = "result.json"  # written when a run finishes; its presence means "done"


def stage_data(cfg: RunConfig, stage: StageSection) -> DataSection:
    """The data section of a stage's runs: the top-level one with the stage's overrides."""
    return stage_sections(cfg, stage)[0]


def check_stages(cfg: RunConfig) -> None:
    """Everything a recipe needs, checked before its first run starts; errors name the stage and key."""
    seen = set()
    for i, stage in enumerate(cfg.stages):
        where = f"stages[{i}] ({stage.name or 'no name'})"
        if not stage.name or stage.name in seen:
            raise ConfigError(f"{where}: every stage needs a unique name")
        if stage.init_from and stage.init_from not in seen:
            raise ConfigError(f"{where}: init_from {stage.init_from!r} is not an earlier stage")
        seen.add(stage.name)
        source = next((s for s in cfg.stages if s.name == stage.init_from), None)
        if source and source.folds != "full" and (stage.folds == "full" or set(stage.folds) - set(source.folds)):
            raise ConfigError(f"{where}: init_from {source.name!r} trains folds {source.folds}, so it has no run for "
                              f"each of this stage's folds {stage.folds} to start from")
        for fold in stage_folds(stage):
            run_config(cfg, stage, fold)


def run_recipe(cfg: RunConfig, rank: int = 0) -> dict:
    """Train every stage and fold not yet done; on rank 0 print the summary and write the submission."""
    check_stages(cfg)
    lock = RunLock(cfg.run_dir) if rank == 0 else None  # one recipe per run_dir (each run also locks its own)
    try:
        return _run_recipe(cfg, rank)
    finally:
        if lock:
            lock.release()


def _run_recipe(cfg: RunConfig, rank: int) -> dict:
    if rank == 0:  # the recipe's own config.yaml: what train.commands.score and export read a recipe directory by
        save_config(cfg, Path(cfg.run_dir) / "config.yaml")
    results = {}
    for stage in cfg.stages:
        for fold in stage_folds(stage):
            run = run_config(cfg, stage, fold)
            done = Path(run.run_dir) / RESULT
            if not done.is_file():
                result = train(run)
                if result.stopped:  # pre-empted: the rest waits for the next launch
                    return {}
                if rank == 0:  # written whole or not at all: a half "done" marker would skip the run
                    write_atomic(done, json.dumps(result.summary(), indent=2) + "\n")
            results[stage.name, fold.name] = json.loads(done.read_text()) if rank == 0 else {}
    if rank != 0:
        return results
    print(summary(cfg, results))
    if cfg.predict.files:
        print(f"submission: {predict(cfg)}")
    return results


def final_stages(cfg: RunConfig) -> dict[str, StageSection]:
    """task -> its final stage: the last stage of that task that no later stage starts from (a joint stage is the
    final stage of both its tasks)."""
    starts = {s.init_from for s in cfg.stages}
    return {task: s for s in cfg.stages if s.name not in starts for task in stage_tasks(cfg, s)}


def stage_tasks(cfg: RunConfig, stage: StageSection) -> list[str]:
    """The tasks a stage trains: data.task, or those of its train files' first rows (QC and QI: a joint stage)."""
    return data_tasks(stage_data(cfg, stage))


def data_tasks(data: DataSection) -> list[str]:
    """The tasks a data section trains: its task, or those of its train files."""
    if data.task:
        return [data.task]
    return sorted({file_task(path) for path in data.train})


def file_task(path) -> str:
    """A competition file's task, QC or QI: its first row's (read_records checks every other row has it too)."""
    line, first = read_rows(path)[0]
    if first.get("task") not in TARGET_FIELD:
        raise DataError(path, line, "task", f"task {first.get('task')!r}, expected QC or QI")
    return first["task"]


def task_f1(metrics: dict, task: str):
    """F1 on `task` in a run's metrics: a joint model's per-task F1, or the F1 of a model of that task alone."""
    return metrics.get(f"{task}_f1", metrics.get("f1"))


def summary(cfg: RunConfig, results: dict) -> str:
    """Per stage and fold: validation F1 / precision / recall / AUC and per-language F1, with the fold mean; the
    zero-shot figures at step 0 of a stage that starts from another; the held-out languages' figures next to the
    seen ones of a language-held-out split; the out-of-fold F1 of each threshold choice of a task's final stage."""
    lines = []
    scores = {}
    for stage in cfg.stages:
        rows = [(fold.name, results[stage.name, fold.name]) for fold in stage_folds(stage)
                if "f1" in results[stage.name, fold.name]]
        if not rows:
            lines.append(f"{stage.name}: trained on all data (no validation)")
            continue
        for _, r in rows:  # flatten the step-0 audit into columns
            r.update({f"step0_{k}": r["step0"][k] for k in ("f1", "auc")} if "step0" in r else {})
        languages = sorted({k[3:] for _, r in rows for k in r if k.startswith("f1_")})
        columns = [("F1", "f1"), ("P", "precision"), ("R", "recall"), ("AUC", "auc"), ("all-pos F1", "all_positive_f1")]
        optional = [("QC F1", "QC_f1"), ("QC AUC", "QC_auc"), ("QI F1", "QI_f1"), ("QI AUC", "QI_auc"),
                    ("F1_avg", "task_mean_f1"), ("F1@0", "step0_f1"), ("AUC@0", "step0_auc"),
                    ("unseen F1", "unseen_f1"),
                    ("unseen AUC", "unseen_auc"), ("unseen a-p", "unseen_all_positive_f1"), ("seen F1", "seen_f1"),
                    ("seen AUC", "seen_auc")]
        columns += [(head, key) for head, key in optional if any(key in r for _, r in rows)]
        columns += [(f"F1 {lang}", f"f1_{lang}") for lang in languages]
        held_out = sorted({lang for _, r in rows for lang in r.get("held_out", [])})
        columns += [(f"{head} {lang}", f"{key}_{lang}") for lang in held_out
                    for head, key in (("AUC", "auc"), ("a-p", "all_positive_f1"))]
        table = [[fold] + [r.get(key) for _, key in columns] for fold, r in rows]
        table.append(["mean"] + [mean_of([row[i] for row in table]) for i in range(1, len(columns) + 1)])
        data = stage_data(cfg, stage)
        split = f", held-out languages {[r.get('held_out') for _, r in rows]}" if data.split == "languages" else ""
        lines.append(f"{stage.name} ({'+'.join(stage_tasks(cfg, stage))}, validation{split})")
        lines.append("".join(f"{h:>11}" for h in ["fold"] + [head for head, _ in columns]))
        lines += ["".join(f"{v:>11}" if isinstance(v, str) else f"{fmt(v):>11}" for v in row) for row in table]
        mean = dict(zip([key for _, key in columns], table[-1][1:]))
        for task in stage_tasks(cfg, stage):
            scores[stage.name, task] = task_f1(mean, task)
    finals = {task: scores[s.name, task] for task, s in final_stages(cfg).items() if (s.name, task) in scores}
    if {"QC", "QI"} <= finals.keys():
        both = None if None in (finals["QC"], finals["QI"]) else 0.5 * finals["QC"] + 0.5 * finals["QI"]
        lines.append(f"F1_avg = 0.5 F1_QC + 0.5 F1_QI = {fmt(both)}")
    for task, stage in final_stages(cfg).items():
        oof = out_of_fold(cfg, stage, task)
        if oof:
            choice, f1s = threshold_choice(cfg, oof)
            scored = ", ".join(f"{c} {fmt(f1)}" for c, f1 in f1s.items())
            lines.append(f"{task} thresholds, out-of-fold F1 of each choice over {len(oof['ids'])} rows "
                         f"({'cross-fitted' if len(set(oof['folds'])) > 1 else 'in-sample: one fold'}): {scored}; "
                         f"predictions use {choice}")
    return "\n".join(lines)


def mean_of(values) -> float | None:
    """The mean of the defined values (a fold whose metric is undefined is left out); None when none is."""
    defined = [v for v in values if v is not None]
    return sum(defined) / len(defined) if defined else None


def out_of_fold(cfg: RunConfig, stage: StageSection, task: str) -> dict | None:
    """The out-of-fold rows of `task` in a fold stage: {"ids", "probs", "labels", "languages", "folds"}, each row
    scored by the best model of the fold that validated it (best/validation.json); None for a full-data stage."""
    if stage.folds == "full":
        return None
    run = run_config(cfg, stage, stage_folds(stage)[0])
    labelled = {r.id: r for r in read_data_files(run, "valid" if run.data.valid else "train")}
    oof = {"ids": [], "probs": [], "labels": [], "languages": [], "folds": []}
    for fold in stage_folds(stage):
        path = Path(cfg.run_dir) / stage.name / fold.name / "best" / VALIDATION
        for id_, prob in read_json(path, "validation probabilities of a fold").items():
            r = labelled[id_]
            if r.task == task:
                for key, value in zip(oof, (r.id, prob, r.label, r.language, fold.name)):
                    oof[key].append(value)
    return oof


def threshold_choice(cfg: RunConfig, oof: dict) -> tuple[str, dict[str, float]]:
    """predict.threshold, or (auto) the choice with the best out-of-fold F1; and each choice's F1."""
    best, f1s = choose(oof["probs"], oof["labels"], oof["languages"], oof["folds"])
    return (best if cfg.predict.threshold == "auto" else str(cfg.predict.threshold)), f1s


def fold_weights(cfg: RunConfig, stage: StageSection, task: str) -> list[float]:
    """Each fold's weight in the ensemble: 1, or (predict.ensemble weighted_*) its validation F1 on `task` (a joint
    model's per-task F1) to the power predict.weight_power; an F1 that is undefined (no relevant validation row)
    or weights that are all 0 are errors."""
    p = cfg.predict
    if not p.ensemble.startswith("weighted"):
        return [1.0] * len(stage_folds(stage))
    weights = []
    for fold in stage_folds(stage):
        result = read_json(Path(cfg.run_dir) / stage.name / fold.name / RESULT, "result.json of a trained fold")
        f1 = task_f1(result, task) if "f1" in result else 1.0  # a full-data run has no validation F1
        if f1 is None:
            raise ConfigError(f"predict.ensemble: {p.ensemble} weighs folds by validation F1, which is undefined "
                              f"for {stage.name}/{fold.name} (no relevant validation row); use mean or vote")
        weights.append(f1 ** p.weight_power)
    if not sum(weights):
        raise ConfigError(f"predict.weight_power: every fold of {stage.name} weighs 0 (validation F1 ** "
                          f"{p.weight_power}); use a smaller power, or predict.ensemble mean or vote")
    return weights


def task_thresholds(cfg: RunConfig, stage: StageSection, task: str) -> tuple[Thresholds, str]:
    """The thresholds a task's predictions use and the choice among them (Thresholds.of): tuned on the stage's
    out-of-fold rows; 0.5 (or predict.threshold's number) for a stage trained on all data."""
    threshold, oof = cfg.predict.threshold, out_of_fold(cfg, stage, task)
    if oof:
        return tune(oof["probs"], oof["labels"], oof["languages"]), threshold_choice(cfg, oof)[0]
    if isinstance(threshold, str) and threshold != "auto":
        raise ConfigError(f"predict.threshold: {threshold} needs out-of-fold probabilities, and stage "
                          f"{stage.name} trained on all data")
    return Thresholds(0.5), "global" if threshold == "auto" else str(threshold)


def predict(cfg: RunConfig) -> Path:
    """Every fold model of each task's final stage over the predict files, ensembled into submit.zip.

    Refuses, naming the file, anything that would make a wrong or partial submission: no files, a file of a task
    no stage trains, rows of two tasks in one file, an id in two files of one task. The previous submission stays
    whole until the new one is complete.
    """
    p, device = cfg.predict, "cuda" if torch.cuda.is_available() else "cpu"
    if not cfg.stages:
        raise ConfigError("stages: the config has none, so there are no trained folds to predict with")
    if not p.files:
        raise ConfigError("predict.files: empty, nothing to predict")
    finals, files_of = final_stages(cfg), {}
    for path in p.files:
        task = file_task(path)
        if task not in finals:
            raise ConfigError(f"predict.files: {path} holds {task} rows, but no stage trains {task}")
        files_of.setdefault(task, []).append(path)
    with contextlib.ExitStack() as locks:  # every fold read, against a training writing into one meanwhile
        for task in files_of:
            for fold in stage_folds(finals[task]):
                locks.enter_context(RunLock(Path(cfg.run_dir) / finals[task].name / fold.name, shared=True))
        texts = {task: task_submission(cfg, finals[task], task, files, device) for task, files in files_of.items()}
        return write_submission(texts, p.out_dir or Path(cfg.run_dir) / "submission")


def task_submission(cfg: RunConfig, stage: StageSection, task: str, files: list[str], device) -> str:
    """submit_<task>.txt of `files`: the fold models of `stage` ensembled, against the out-of-fold thresholds."""
    p = cfg.predict
    data = stage_data(cfg, stage)
    records, source = [], {}
    for path in files:  # read_records(task=...) names the line of a row of another task
        for r in read_records(path, task, data.translations or None, data.lowercase, training=False):
            if r.id in source:
                raise DataError(path, None, "id", f"id {r.id!r} is also in {source[r.id]}: an id may appear "
                                                  f"only once among the {task} files")
            source[r.id] = path
            records.append(r)
    fold_probs = [predict_fold(run_config(cfg, stage, fold), records, p.batch_size, device)
                  for fold in stage_folds(stage)]
    thresholds, choice = task_thresholds(cfg, stage, task)
    language = {r.id: r.language for r in records}
    predictions = ensemble(fold_probs, fold_weights(cfg, stage, task), lambda i: thresholds.of(choice, language[i]),
                           vote=p.ensemble.endswith("vote"))
    return submission_text(files, task, predictions)
