"""The typed run config: YAML sections -> dataclasses, `key.sub=value` overrides, unknown keys rejected,
every number range-checked when the config loads (errors name the key)."""
import difflib
import math
import types
import typing
from dataclasses import asdict, dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Literal

import torch
import yaml

from data.batching import bucketed
from model.lora import DEFAULT_TARGETS, ENCODER_TARGETS

DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}  # model.dtype -> torch dtype


class ConfigError(ValueError):
    """A bad config: the message names the key."""


@dataclass
class ModelSection:
    path: str = ""  # Hugging Face directory or hub id
    dtype: Literal["bfloat16", "float32"] = "bfloat16"  # storage of the frozen base weights
    head_init: Literal["random", "lm_answer"] = "random"  # lm_answer: the LM head's " no" / " yes" rows


@dataclass
class LoraSection:
    r: int = 16
    alpha: float = 32
    dropout: float = 0.05
    targets: list[str] = field(
        default_factory=lambda: list(DEFAULT_TARGETS))


@dataclass
class DataSection:
    train: list[str] = field(default_factory=list)  # competition files; QC and QI files together: a joint model
    valid: str = ""  # empty: validate on fold `fold` of `train`
    task: Literal["", "QC", "QI"] = ""  # empty keeps every task of the files
    translations: str = ""  # file of id -> English query; empty: none
    fold: int = 0  # fold held out for validation when `valid` is empty; -1 trains on all rows
    n_folds: int = 5  # folds of the grouped split
    split: Literal["groups", "languages"] = "groups"  # languages: fold k holds out held_out_languages[k]
    held_out_languages: list[list[str]] = field(default_factory=list)  # empty: one fold per language of `train`
    group_levels: int = 2  # category levels that make a QC group (QI rows group by query)
    stratify_top_level: bool = False  # strata language x label, and x top-level category when true
    split_seed: int = 0
    max_length: int = 256
    packing: bool = False
    share_prefix: bool = False  # shared part first (QC: category path), each shared prefix computed once a batch
    suffixes_per_prefix: int = 8  # with share_prefix: at most this many examples of one prefix drawn together
    max_tokens: int = 0  # > 0: micro-batches by token budget (data/batching.micro_batches), not train.batch_size
    lowercase: bool = True
    template: Literal["plain", "question"] = "plain"  # question: ends in "... relevant to the query? Answer:"


@dataclass
class TrainSection:
    lr: float = 1e-5
    weight_decay: float = 1e-4
    schedule: Literal["constant", "linear", "cosine"] = "constant"
    warmup_ratio: float = 0.01  # fraction of all optimizer steps spent warming up linearly from 0
    epochs: int = 2
    max_steps: int = 0  # > 0: stop after this many optimizer steps
    batch_size: int = 8  # examples per rank per micro-step (packed into rows when data.packing)
    grad_accum: int = 1  # micro-steps per optimizer step
    eval_batch_size: int = 32
    clip: float = 1.0  # max gradient norm; 0 disables clipping
    eval_every: int = 0  # optimizer steps between evaluations (0: only at the end of each epoch)
    save_every: int = 0  # optimizer steps between checkpoints (0: only at the end of each epoch)
    keep_last: int = 2
    seed: int = 0
    bf16: Literal["auto"] | bool = "auto"  # bf16 autocast (and bf16 FSDP compute); auto: where the hardware is fast
    activation_checkpointing: bool = False
    compile: bool = False  # torch.compile each decoder block: fuses its element-wise work (pays off on CUDA)
    class_weights: list[float] = field(default_factory=list)
    label_smoothing: float = 0.0
    loggers: list[Literal["tensorboard"]] = field(default_factory=list)  # besides metrics.jsonl (train/loggers.py)


@dataclass
class StageSection:
    """One stage of the recipe (train/recipe.py): its runs use the top-level sections with these overrides."""
    name: str = ""
    folds: Literal["full"] | list[int] = "full"  # "full": all data, no validation; or the folds to train
    init_from: str = ""  # an earlier stage whose adapters + head this one starts from
    data: dict = field(default_factory=dict)  # overrides of the data section, e.g. {train: ..., task: QC}
    train: dict = field(default_factory=dict)  # overrides of the train section, e.g. {epochs: 1}


@dataclass
class PredictSection:
    files: list[str] = field(default_factory=list)  # dev/test files; each is predicted by its task's fold models
    ensemble: Literal["mean", "vote", "weighted_mean", "weighted_vote"] = "mean"  # weighted: fold F1 ** weight_power
    weight_power: float = 3.0
    # auto: 0.5, global or per_language, whichever has the best out-of-fold F1 (train/thresholds.py); or a number
    threshold: Literal["auto", "global", "per_language"] | float = "auto"
    batch_size: int = 64
    out_dir: str = ""  # default: run_dir/submission


@dataclass
class RunConfig:
    run_dir: str = ""
    resume: bool = True  # continue from the newest complete checkpoint in run_dir
    init_from: str = ""  # adapters + head to start from (another run's best/ directory)
    model: ModelSection = field(default_factory=ModelSection)
    lora: LoraSection = field(default_factory=LoraSection)
    data: DataSection = field(default_factory=DataSection)
    train: TrainSection = field(default_factory=TrainSection)
    stages: list[StageSection] = field(default_factory=list)  # empty: one run, as configured above
    predict: PredictSection = field(default_factory=PredictSection)

    def check(self) -> None:
        """Values a run cannot start with (on top of the ranges checked at load); each error names the key."""
        t = self.train
        for key, value in (("run_dir", self.run_dir), ("model.path", self.model.path), ("data.train", self.data.train)):
            if not value:
                raise ConfigError(f"{key} is required")
        for section in (self.model, self.lora, self.data, self.train, self.predict):
            _check_ranges(section, _SECTION_KEY[type(section)] + ".")
        check_fold(self.data)
        if self.model.head_init == "lm_answer" and self.data.template != "question":
            raise ConfigError("model.head_init: lm_answer reads the LM's answer after a question: set "
                              "data.template: question")
        languages = [lang for group in self.data.held_out_languages for lang in group]
        if any(not group for group in self.data.held_out_languages) or len(set(languages)) < len(languages):
            raise ConfigError(f"data.held_out_languages: each group needs languages, each language in one group, "
                              f"got {self.data.held_out_languages}")
        if self.data.share_prefix and self.data.packing:
            raise ConfigError("data.packing: shared-prefix rows (data.share_prefix) are laid out by their groups; "
                              "set one of the two")
        longest = bucketed(self.data.max_length)
        if self.data.max_tokens and self.data.max_tokens < longest:
            raise ConfigError(f"data.max_tokens must hold one example of data.max_length={self.data.max_length} "
                              f"({longest} token slots), got {self.data.max_tokens}")
        if t.class_weights and len(t.class_weights) != 2:
            raise ConfigError(f"train.class_weights needs 2 values (negative, positive), got {t.class_weights}")


# Allowed values of every number, checked when a config (or a stage's override) is built.
AT_LEAST_ONE = (lambda v: v >= 1, ">= 1")
NON_NEGATIVE = (lambda v: v >= 0, ">= 0")
POSITIVE = (lambda v: v > 0, "> 0")
FRACTION = (lambda v: 0 <= v <= 1, "in [0, 1]")
BELOW_ONE = (lambda v: 0 <= v < 1, "in [0, 1)")
RANGES = {
    LoraSection: {"r": AT_LEAST_ONE, "alpha": POSITIVE, "dropout": BELOW_ONE},
    DataSection: {"fold": (lambda v: v >= -1, ">= -1"), "n_folds": (lambda v: v >= 2, ">= 2"),
                  "max_length": (lambda v: v >= 8, ">= 8"), "group_levels": AT_LEAST_ONE, "split_seed": NON_NEGATIVE,
                  "max_tokens": NON_NEGATIVE, "suffixes_per_prefix": AT_LEAST_ONE},
    TrainSection: {"lr": POSITIVE, "weight_decay": NON_NEGATIVE, "warmup_ratio": FRACTION, "epochs": AT_LEAST_ONE,
                   "max_steps": (lambda v: v >= 0, ">= 0 (0: no cap)"), "batch_size": AT_LEAST_ONE,
                   "grad_accum": AT_LEAST_ONE, "eval_batch_size": AT_LEAST_ONE, "clip": (NON_NEGATIVE[0], ">= 0 (0: "
                   "no clipping)"), "eval_every": NON_NEGATIVE, "save_every": NON_NEGATIVE, "keep_last": AT_LEAST_ONE,
                   "seed": NON_NEGATIVE, "class_weights": POSITIVE, "label_smoothing": BELOW_ONE},
    PredictSection: {"batch_size": AT_LEAST_ONE, "weight_power": NON_NEGATIVE,
                     "threshold": (lambda v: isinstance(v, str) or 0 <= v <= 1,
                                   "auto, global, per_language or in [0, 1]")},
}
_SECTION_KEY = {ModelSection: "model", LoraSection: "lora", DataSection: "data", TrainSection: "train",
                PredictSection: "predict"}


def _check_ranges(section, prefix: str) -> None:
    for name, (allowed, text) in RANGES.get(type(section), {}).items():
        value = getattr(section, name)
        for v in value if isinstance(value, list) else [value]:
            if not allowed(v):
                raise ConfigError(f"{prefix}{name} must be {text}, got {v!r}")


def _check_targets(lora: LoraSection, prefix: str) -> None:
    """LoRA targets are names of a decoder's linear layers (the same in every family) or of an encoder's, each once
    (which the model has is checked when LoRA is added: model.lora.LoRATargetError)."""
    known = DEFAULT_TARGETS + ENCODER_TARGETS
    if not lora.targets:
        raise ConfigError(f"{prefix}targets: empty, LoRA needs at least one of {', '.join(DEFAULT_TARGETS)} "
                          f"(decoders) or {', '.join(ENCODER_TARGETS)} (encoders)")
    for target in lora.targets:
        if target not in known:
            close = difflib.get_close_matches(target, known, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ConfigError(f"{prefix}targets: {target!r} is no linear layer of a decoder or an encoder; {hint}"
                              f"choose from {', '.join(DEFAULT_TARGETS)} (decoders) or {', '.join(ENCODER_TARGETS)} "
                              f"(encoders)")
    if len(set(lora.targets)) < len(lora.targets):
        raise ConfigError(f"{prefix}targets: a layer is listed more than once in {lora.targets}")


def _check_folds(stage: "StageSection", prefix: str) -> None:
    if isinstance(stage.folds, list):
        if not stage.folds:
            raise ConfigError(f"{prefix}folds: an empty list trains nothing (use 'full' or fold numbers)")
        repeated = sorted({k for k in stage.folds if stage.folds.count(k) > 1})
        if repeated:
            raise ConfigError(f"{prefix}folds: fold {repeated[0]} is listed more than once")


def _coerce(value, kind, key: str):
    """`value` as type `kind`; strings from the command line are parsed."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if is_dataclass(kind):
        return _build(kind, value or {}, key + ".")
    if origin in (typing.Union, types.UnionType):
        errors = []
        for option in args:
            try:
                return _coerce(value, option, key)
            except ConfigError as e:
                errors.append(str(e).removeprefix(f"{key}: "))
        raise ConfigError(f"{key}: {' or '.join(errors)}")
    if origin is Literal:
        value = "" if value is None and "" in args else value  # `task:` with no value: the empty choice
        if value not in args:
            raise ConfigError(f"{key}: {value!r} is not one of {', '.join(map(str, args))}")
        return value
    if origin is list:
        if isinstance(value, str):
            value = yaml.safe_load(value) if value.startswith("[") else [v for v in value.split(",") if v]
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
    if kind is bool:
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if value is None:
        if kind in (str, dict):
            return kind()
        raise ConfigError(f"{key}: no value (expected {kind.__name__})")
    if kind in (int, float) and isinstance(value, bool):
        raise ConfigError(f"{key}: expected {kind.__name__}, got {value!r}")
    try:
        out = kind(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{key}: expected {kind.__name__}, got {value!r}") from None
    if kind is int and isinstance(value, float) and value != out:
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if kind is float and not math.isfinite(out):
        raise ConfigError(f"{key}: expected a finite number, got {value!r}")
    return out


def _unknown(key: str, valid: list[str]) -> ConfigError:
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    hint = f"; did you mean '{close[0]}'?" if close else f"; valid keys: {', '.join(valid)}"
    return ConfigError(f"unknown config key '{key}'{hint}")


def _all_keys(cls, prefix="") -> list[str]:
    hints = typing.get_type_hints(cls)
    keys = []
    for f in fields(cls):
        kind = hints[f.name]
        keys += [prefix + f.name] + (_all_keys(kind, f"{prefix}{f.name}.") if is_dataclass(kind) else [])
    return keys


def _build(cls, raw: dict, prefix=""):
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    values = {}
    for key, value in raw.items():
        if key not in hints:
            raise _unknown(prefix + str(key), _all_keys(RunConfig))
        kind = hints[key]
        values[key] = _build(kind, value or {}, f"{prefix}{key}.") if is_dataclass(kind) else \
            _coerce(value, kind, prefix + key)
    built = cls(**values)
    _check_ranges(built, prefix)
    if cls is StageSection:
        _check_folds(built, prefix)
    if cls is LoraSection:
        _check_targets(built, prefix)
    return built


def _set(raw: dict, dotted: str, value: str):
    *parents, last = dotted.split(".")
    for name in parents:
        raw = raw.setdefault(name, {})
        if not isinstance(raw, dict):
            raise ConfigError(f"override {dotted}: '{name}' is not a section")
    raw[last] = value


def merge_section(section, overrides: dict, key: str):
    """A copy of the dataclass `section` with `overrides` applied; an unknown key fails naming `key`."""
    return _build(type(section), {**asdict(section), **overrides}, key + ".")


def load_config(path, overrides: typing.Sequence[str] = ()) -> RunConfig:
    """Read a YAML config and apply `key.sub=value` overrides; unknown keys fail with a suggestion."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: config file not found")
    try:
        raw = yaml.safe_load(path.read_text()) or {}  # safe_load: a tag such as !!python/object is an error
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = f", line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}{line}: {e.problem or e.context}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections, got {type(raw).__name__}")
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"override {item!r} is not of the form key.sub=value")
        _set(raw, key.strip(), value)
    cfg = _build(RunConfig, raw)
    for stage in cfg.stages:  # a stage's overrides are range-checked now too, not when its turn comes
        data, _ = stage_sections(cfg, stage)
        for fold in stage_folds(stage):
            check_fold(replace(data, fold=fold.number), key=f"stages.{stage.name}.folds")
    return cfg


@dataclass(frozen=True)
class Fold:
    """What one run of a stage holds out: fold `index` of data.split (groups: that grouped fold; languages: that
    held-out language group, validated on grouped fold index mod data.n_folds), or None: all data, no validation."""
    index: int | None = None

    @property
    def name(self) -> str:
        """The run's directory under its stage: fold<k>, or full."""
        return "full" if self.index is None else f"fold{self.index}"

    @property
    def number(self) -> int:
        """Its data.fold: the index, or -1."""
        return -1 if self.index is None else self.index


def stage_folds(stage: StageSection) -> list[Fold]:
    return [Fold()] if stage.folds == "full" else [Fold(k) for k in stage.folds]


def stage_sections(cfg: RunConfig, stage: StageSection) -> tuple[DataSection, TrainSection]:
    """The data and train sections of a stage's runs: the top-level ones with the stage's overrides."""
    return (merge_section(cfg.data, stage.data, f"stages.{stage.name}.data"),
            merge_section(cfg.train, stage.train, f"stages.{stage.name}.train"))


def fold_count(data: DataSection, language_groups=None) -> int | None:
    """How many folds data.split has: data.n_folds grouped folds, or one per held-out language group
    (data.held_out_languages, else `language_groups` as the data gives them; None while neither is known)."""
    if data.split == "groups":
        return data.n_folds
    return len(data.held_out_languages or language_groups or []) or None


def check_fold(data: DataSection, language_groups=None, key: str = "data.fold") -> None:
    """data.fold within the split in use, or -1 (no validation); the one check of it, wherever it is made."""
    count = fold_count(data, language_groups)
    if data.valid or count is None or -1 <= data.fold < count:
        return
    what = "grouped folds (data.n_folds)" if data.split == "groups" else "held-out language groups"
    raise ConfigError(f"{key}: fold {data.fold} is not in [-1, {count}): data.split {data.split} has {count} {what}; "
                      f"-1 trains on every row")


def run_config(cfg: RunConfig, stage: StageSection | None = None, fold: Fold = Fold()) -> RunConfig:
    """The complete, checked config of one run: `cfg` itself (no stage), or `fold` of `stage`: the top-level
    sections with the stage's overrides, its own run_dir (run_dir/<stage>/<fold>), data.fold, and init_from the
    best/ of the source stage's run for the same fold (or of its full run). Every rule across keys is checked
    here (RunConfig.check); errors name the key."""
    if stage is not None:
        data, train = stage_sections(cfg, stage)
        init_from = ""
        if stage.init_from:
            source = next(s for s in cfg.stages if s.name == stage.init_from)
            source_fold = Fold() if source.folds == "full" else fold
            init_from = str(Path(cfg.run_dir) / source.name / source_fold.name / "best")
        check_fold(replace(data, fold=fold.number), key=f"stages.{stage.name}.folds")
        cfg = replace(cfg, run_dir=str(Path(cfg.run_dir) / stage.name / fold.name), init_from=init_from, stages=[],
                      data=replace(data, fold=fold.number), train=train)
    cfg.check()
    return cfg


def save_config(cfg: RunConfig, path) -> None:
    """Write the resolved config as YAML (readable back with load_config)."""
    Path(path).write_text(yaml.safe_dump(asdict(cfg), sort_keys=False))
