"""The whole method: stages x folds of training runs, a summary table, then fold-ensembled submission files.

    python -m train.recipe predict CONFIG.yaml [key.sub=value ...]   # predictions only, from trained folds

A stage trains one task, on all its data (`folds: full`) or fold by fold (`folds: [0, 1, 2, 3, 4]`), optionally
starting from an earlier stage's adapters and head (`init_from`: fold k from fold k, or from that stage's full
run). The method's recipe is two stages per target task: the other task's full data, then the target task's folds.
Each run has its own directory, run_dir/<stage>/<fold k | full>; a run that finished is not redone.
"""
import json
import sys
from dataclasses import replace
from pathlib import Path

import torch

from data.records import read_rows
from train.config import ConfigError, RunConfig, StageSection, load_config, merge_section
from train.loop import train
from train.predict import ensemble, predict_fold, write_submission, zip_submission

RESULT = "result.json"  # written when a run finishes; its presence means "done"


def fold_names(stage: StageSection) -> list[str]:
    return ["full"] if stage.folds == "full" else [f"fold{k}" for k in stage.folds]


def stage_data(cfg: RunConfig, stage: StageSection):
    """The data section of a stage's runs: the top-level one with the stage's overrides."""
    return merge_section(cfg.data, stage.data, f"stages.{stage.name}.data")


def stage_run(cfg: RunConfig, stage: StageSection, fold: str) -> RunConfig:
    """The config of one run of a stage: the top-level sections with the stage's overrides."""
    data = stage_data(cfg, stage)
    init_from = ""
    if stage.init_from:
        source = next(s for s in cfg.stages if s.name == stage.init_from)
        init_fold = "full" if source.folds == "full" else fold
        init_from = str(Path(cfg.run_dir) / source.name / init_fold / "best")
    return replace(cfg, run_dir=str(Path(cfg.run_dir) / stage.name / fold), init_from=init_from, stages=[],
                   data=replace(data, fold=-1 if fold == "full" else int(fold.removeprefix("fold"))),
                   train=merge_section(cfg.train, stage.train, f"stages.{stage.name}.train"))


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
        for fold in fold_names(stage):
            run = stage_run(cfg, stage, fold)
            if run.data.task not in ("QC", "QI"):
                raise ConfigError(f"{where}: data.task must be QC or QI, got {run.data.task!r}")
            run.check()


def run_recipe(cfg: RunConfig, rank: int = 0) -> dict:
    """Train every stage and fold not yet done; on rank 0 print the summary and write the submission."""
    check_stages(cfg)
    results = {}
    for stage in cfg.stages:
        for fold in fold_names(stage):
            run = stage_run(cfg, stage, fold)
            done = Path(run.run_dir) / RESULT
            if not done.is_file():
                result = train(run)
                if "stopped_at" in result:  # pre-empted: the rest waits for the next launch
                    return {}
                if rank == 0:  # write then rename: a kill mid-write must not leave a half "done" marker
                    tmp = done.with_suffix(".tmp")
                    tmp.write_text(json.dumps(result, indent=2) + "\n")
                    tmp.replace(done)
            results[stage.name, fold] = json.loads(done.read_text()) if rank == 0 else {}
    if rank != 0:
        return results
    print(summary(cfg, results))
    if cfg.predict.files:
        print(f"submission: {predict(cfg)}")
    return results


def final_stages(cfg: RunConfig) -> dict[str, StageSection]:
    """task -> its final stage: the last stage of that task that no later stage starts from."""
    starts = {s.init_from for s in cfg.stages}
    return {stage_data(cfg, s).task: s for s in cfg.stages if s.name not in starts}


def summary(cfg: RunConfig, results: dict) -> str:
    """Per stage and fold: validation F1 / precision / recall / AUC and per-language F1, with the fold mean."""
    lines = []
    scores = {}
    for stage in cfg.stages:
        rows = [(fold, results[stage.name, fold]) for fold in fold_names(stage) if "f1" in results[stage.name, fold]]
        if not rows:
            lines.append(f"{stage.name}: trained on all data (no validation)")
            continue
        languages = sorted({k[3:] for _, r in rows for k in r if k.startswith("f1_")})
        head = ["fold", "F1", "P", "R", "AUC", "all-pos F1"] + [f"F1 {lang}" for lang in languages]
        keys = ["f1", "precision", "recall", "auc", "all_positive_f1"] + [f"f1_{lang}" for lang in languages]
        table = [[fold] + [r.get(k, float("nan")) for k in keys] for fold, r in rows]
        table.append(["mean"] + [sum(row[i] for row in table) / len(table) for i in range(1, len(head))])
        lines.append(f"{stage.name} ({stage_data(cfg, stage).task}, validation)")
        lines.append("".join(f"{h:>11}" for h in head))
        lines += ["".join(f"{v:>11}" if isinstance(v, str) else f"{v:>11.4f}" for v in row) for row in table]
        scores[stage.name] = table[-1][1]
    finals = {task: scores[s.name] for task, s in final_stages(cfg).items() if s.name in scores}
    if {"QC", "QI"} <= finals.keys():
        lines.append(f"F1_avg = 0.5 F1_QC + 0.5 F1_QI = {0.5 * finals['QC'] + 0.5 * finals['QI']:.4f}")
    return "\n".join(lines)


def predict(cfg: RunConfig) -> Path:
    """Every fold model of each task's final stage over the predict files, ensembled into submit.zip."""
    p, device = cfg.predict, "cuda" if torch.cuda.is_available() else "cpu"
    out_dir = Path(p.out_dir or Path(cfg.run_dir) / "submission")
    written = []
    for task, stage in final_stages(cfg).items():
        files = [f for f in p.files if task_of(f) == task]
        if not files:
            continue
        data = stage_data(cfg, stage)
        fold_probs, thresholds = [], []
        for fold in fold_names(stage):
            run_dir = Path(cfg.run_dir) / stage.name / fold
            probs, threshold = predict_fold(run_dir / "best", files, task, data.translations, data.max_length,
                                            data.lowercase, run_dir / "predictions", p.batch_size, device,
                                            torch.bfloat16 if cfg.model.dtype == "bfloat16" else torch.float32,
                                            cfg.train.bf16)
            fold_probs.append(probs)
            thresholds.append(threshold)
        written.append(write_submission(files, task, ensemble(fold_probs, thresholds, p.ensemble), out_dir))
    return zip_submission(written, out_dir)


def task_of(path) -> str:
    """The task of a competition file, from its first row (reading it checks that every row has that task)."""
    return str(read_rows(path)[0][1].get("task"))


if __name__ == "__main__":
    if len(sys.argv) < 3 or sys.argv[1] != "predict":
        sys.exit(__doc__.strip())
    print(f"submission: {predict(load_config(sys.argv[2], sys.argv[3:]))}")
