"""Scoring (query, target) pairs with a trained run or a recipe's fold ensemble: one object, built once from a
directory (its models stay loaded), used by `python -m train.commands.score` and by a service.

A run directory scores with its best/ model against the threshold its validation chose; a recipe directory with
every fold model of each task's final stage, ensembled and thresholded as the recipe's predictions are
(predict.ensemble and weights, the out-of-fold thresholds per language). Text is cleaned as the run's records
were (whitespace collapsed, lowercased unless data.lowercase is false); a query's translation comes from the run's
translations file when it has one (or the file given instead), else with its row (`translated_query`), as
predict takes them.
"""
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from data.inputs import pad_token_id
from data.records import TARGET_FIELD, DataError, Record, clean, read_translations
from train.config import ConfigError, RunConfig, load_config, run_config, stage_folds
from train.loop import encode_examples
from train.predict import ensemble, fold_model, mean_probability, open_fold, probabilities
from train.recipe import data_tasks, final_stages, fold_weights, stage_data, task_thresholds
from train.thresholds import Thresholds

TASK_OF_FIELD = {field: task for task, field in TARGET_FIELD.items()}


def trained_config(directory) -> RunConfig:
    """The config of a run or recipe directory (its config.yaml), with run_dir set to where it now is."""
    path = Path(directory) / "config.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found: {directory} is not a run or recipe directory (a recipe "
                                f"trained before recipes wrote their config.yaml: copy its YAML config there)")
    return replace(load_config(path), run_dir=str(directory))


@dataclass
class FoldModel:
    run: RunConfig  # train.bf16 resolved
    classifier: torch.nn.Module
    tokenizer: object
    family: str
    threshold: float  # the one its validation chose


@dataclass
class TaskModels:
    """The fold models that score one task, and how their probabilities become a decision."""
    folds: list[FoldModel]
    weights: list[float]
    thresholds: Thresholds
    choice: str  # Thresholds.of's choice: "global", "per_language" or a number
    vote: bool
    data: object  # the DataSection the models trained with: lowercasing and translations


class Scorer:
    """`Scorer(directory).score([(query, target), ...], task="QC")` -> [(probability, relevant), ...].

    threshold: a number that replaces the run's (or the recipe's) decision thresholds. translations: a file of
    `origin_query, translated_query` rows that replaces the run's data.translations."""

    def __init__(self, directory, threshold: float | None = None, translations=None, batch_size: int = 64,
                 device=None):
        cfg = trained_config(directory)
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.batch_size, self._loaded = batch_size, {}
        if threshold is not None and not 0 <= threshold <= 1:
            raise ConfigError(f"threshold must be in [0, 1], got {threshold}")
        if cfg.stages:  # a recipe: the folds of each task's final stage
            self.tasks = {}
            for task, stage in final_stages(cfg).items():
                folds = [self._fold(run_config(cfg, stage, fold)) for fold in stage_folds(stage)]
                thresholds, choice = (Thresholds(threshold), "global") if threshold is not None else \
                    task_thresholds(cfg, stage, task)
                self.tasks[task] = TaskModels(folds, fold_weights(cfg, stage, task), thresholds, choice,
                                              cfg.predict.ensemble.endswith("vote"), stage_data(cfg, stage))
        else:
            fold = self._fold(cfg)
            models = TaskModels([fold], [1.0], Thresholds(fold.threshold if threshold is None else threshold),
                                "global", False, cfg.data)
            self.tasks = dict.fromkeys(data_tasks(cfg.data), models)
        self.translations = {}  # task -> query -> translation, None without a translations file
        for task, models in self.tasks.items():
            path = translations or models.data.translations
            self.translations[task] = read_translations(path) if path else None

    def _fold(self, run: RunConfig) -> FoldModel:
        """The fold model of a run directory, loaded once (a joint stage's folds score both tasks)."""
        if run.run_dir not in self._loaded:
            run, best_dir, info, base = open_fold(run, self.device)
            classifier, tokenizer, family = fold_model(run, best_dir, info, base, self.device)
            self._loaded[run.run_dir] = FoldModel(run, classifier, tokenizer, family, info["threshold"])
        return self._loaded[run.run_dir]

    def record(self, id_: str, task: str, query: str, target: str, language: str = "",
               translation: str | None = None) -> Record:
        """A pair as the task's models read it, as read_records reads a row: cleaned as the training rows were,
        translated by the translations file when there is one (it overrides `translation`, as it does a
        translated_query column)."""
        if task not in self.tasks:
            raise ConfigError(f"task {task!r}: the models score {' and '.join(sorted(self.tasks))}")
        models, table = self.tasks[task], self.translations[task]
        translation = table.get(clean(query, lowercase=False)) if table is not None else translation
        lowercase = models.data.lowercase
        return Record(id_, task, language.strip().lower(), clean(query, lowercase), clean(target, lowercase), None,
                      clean(translation, lowercase) or None if translation else None)

    def score(self, pairs, task: str | None = None, language: str = "") -> list[tuple[float, int]]:
        """(probability, relevant) of each (query, target) or (query, target, translation) pair of `task` (needed
        when the models score both tasks)."""
        if task is None and len(self.tasks) > 1:
            raise ConfigError(f"task: the models score {' and '.join(sorted(self.tasks))}: name the pairs' task")
        task = task or next(iter(self.tasks))
        return self.score_records([self.record(str(i), task, *pair[:2], language, *pair[2:])
                                   for i, pair in enumerate(pairs)])

    def score_records(self, records: list[Record]) -> list[tuple[float, int]]:
        """(probability, relevant) of each record (made by `record`), in order: each task's rows through its fold
        models in length-sorted batches, the folds' probabilities averaged (weighted as the recipe weighs them),
        the decision against the threshold of the row's language (or by the folds' vote)."""
        out = {}
        for task, models in self.tasks.items():
            rows = [r for r in records if r.task == task]
            if not rows:
                continue
            fold_probs = [probabilities(f.classifier, encode_examples(f.run, f.tokenizer, f.family, rows),
                                        pad_token_id(f.tokenizer, f.family), self.batch_size, self.device,
                                        f.run.train.bf16) for f in models.folds]
            language = {r.id: r.language for r in rows}
            relevant = ensemble(fold_probs, models.weights, lambda i: models.thresholds.of(models.choice, language[i]),
                                vote=models.vote)
            out.update({i: (p, relevant[i]) for i, p in mean_probability(fold_probs, models.weights).items()})
        return [out[r.id] for r in records]


def row_record(scorer: Scorer, row: dict, id_: str, path, line: int) -> Record:
    """A row of a score input file as a record: the competition's fields (origin_query, category_path |
    item_title, language, translated_query) or query / target; its task from a `task` field, from its target's
    field, or the models' only task. Errors name the file, line and field."""
    def text(*names):
        name = next((n for n in names if n in row), names[0])
        value = row.get(name)
        if name not in row or not isinstance(value, (str, type(None))):
            raise DataError(path, line, name, "missing" if name not in row else f"expected text, got {value!r}")
        return value or ""
    query, target = text("origin_query", "query"), text(*TARGET_FIELD.values(), "target")
    task = row.get("task") or next((TASK_OF_FIELD[f] for f in TARGET_FIELD.values() if f in row), None)
    if task is None and len(scorer.tasks) == 1:
        task = next(iter(scorer.tasks))
    if task not in scorer.tasks:
        raise DataError(path, line, "task", f"task {task!r}: the models score {' and '.join(sorted(scorer.tasks))}")
    translation = row.get("translated_query") if isinstance(row.get("translated_query"), str) else None
    language = row.get("language") if isinstance(row.get("language"), str) else ""
    return scorer.record(id_, task, query, target, language, translation)
