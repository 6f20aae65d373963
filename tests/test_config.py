"""The run config: YAML + overrides into typed dataclasses; bad keys and values are named."""
from pathlib import Path

import pytest

from train.config import ConfigError, RunConfig, load_config, save_config


@pytest.fixture
def config_file(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(
        "run_dir: runs/x\n"
        "model:\n  path: some/model\n"
        "lora:\n  r: 8\n  targets: [q_proj, v_proj]\n"
        "train:\n  lr: 2.0e-4\n  schedule: cosine\n  bf16: false\n"
    )
    return path


def test_yaml_sections_become_typed_fields(config_file):
    cfg = load_config(config_file)
    assert isinstance(cfg, RunConfig)
    assert cfg.run_dir == "runs/x" and cfg.model.path == "some/model"
    assert cfg.lora.r == 8 and cfg.lora.targets == ["q_proj", "v_proj"] and cfg.lora.alpha == 32
    assert cfg.train.lr == 2e-4 and cfg.train.schedule == "cosine" and cfg.train.bf16 is False
    assert cfg.train.batch_size == 8  # default kept


def test_overrides_are_parsed_to_the_field_type(config_file):
    cfg = load_config(config_file, ["train.lr=1e-5", "train.epochs=3", "train.bf16=true",
                                    "lora.targets=q_proj,k_proj", "data.packing=yes", "train.class_weights=[1, 2.5]"])
    assert cfg.train.lr == 1e-5 and isinstance(cfg.train.lr, float)
    assert cfg.train.epochs == 3 and cfg.train.bf16 is True and cfg.data.packing is True
    assert cfg.lora.targets == ["q_proj", "k_proj"] and cfg.train.class_weights == [1.0, 2.5]


@pytest.mark.parametrize("override, message", [
    ("train.lrr=1", "unknown config key 'train.lrr'; did you mean 'train.lr'?"),
    ("trian.lr=1", "unknown config key 'trian'; did you mean 'train'?"),
    ("train.epochs=two", "train.epochs: expected int, got 'two'"),
    ("train.epochs=1.5", "train.epochs: expected int, got '1.5'"),
    ("train.schedule=step", "train.schedule: 'step' is not one of constant, linear, cosine"),
    ("train.bf16=maybe", "train.bf16: .maybe. is not one of auto or expected true or false"),
    ("train", "not of the form key.sub=value"),
    ("lora.targets=q_porj,v_proj", "lora.targets: 'q_porj' is no linear layer of a decoder or an encoder; did you "
                                   "mean 'q_proj'?"),
    ("lora.targets=[]", "lora.targets: empty, LoRA needs at least one of q_proj"),
    ("lora.targets=q_proj,q_proj", "lora.targets: a layer is listed more than once"),
    ("data.task=qc", "data.task: 'qc' is not one of , QC, QI"),
])
def test_bad_keys_and_values_are_named(config_file, override, message):
    with pytest.raises(ConfigError, match=message.replace("?", r"\?").replace("[", r"\[")):
        load_config(config_file, [override])


@pytest.mark.parametrize("override, message", [
    ("train.max_steps=-1", r"train.max_steps must be >= 0 \(0: no cap\), got -1"),
    ("train.epochs=0", "train.epochs must be >= 1, got 0"),
    ("train.warmup_ratio=1.5", r"train.warmup_ratio must be in \[0, 1\], got 1.5"),
    ("train.eval_every=-5", "train.eval_every must be >= 0, got -5"),
    ("train.save_every=-1", "train.save_every must be >= 0, got -1"),
    ("train.keep_last=0", "train.keep_last must be >= 1, got 0"),
    ("train.clip=-1", r"train.clip must be >= 0 \(0: no clipping\), got -1.0"),
    ("train.lr=inf", "train.lr: expected a finite number, got 'inf'"),
    ("train.lr=nan", "train.lr: expected a finite number, got 'nan'"),
    ("train.lr=0", "train.lr must be > 0, got 0.0"),
    ("train.lr=-1e-4", "train.lr must be > 0, got -0.0001"),
    ("lora.r=0", "lora.r must be >= 1, got 0"),
    ("lora.alpha=0", "lora.alpha must be > 0, got 0.0"),
    ("lora.dropout=1", r"lora.dropout must be in \[0, 1\), got 1.0"),
    ("train.seed=-1", "train.seed must be >= 0, got -1"),
    ("train.label_smoothing=1", r"train.label_smoothing must be in \[0, 1\)"),
    ("train.class_weights=[1, -2]", "train.class_weights must be > 0, got -2.0"),
    ("data.n_folds=1", "data.n_folds must be >= 2, got 1"),
    ("predict.batch_size=0", "predict.batch_size must be >= 1, got 0"),
])
def test_out_of_range_numbers_fail_when_the_config_loads(config_file, override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(config_file, [override])


@pytest.mark.parametrize("yaml_text, message", [
    ("train:\n  epochs:\n", r"train.epochs: no value \(expected int\)"),
    ("train:\n  lr: null\n", r"train.lr: no value \(expected float\)"),
    ("train:\n  epochs: true\n", "train.epochs: expected int, got True"),
    ("stages:\n  - {name: a, folds: [0, 0]}\n", r"stages\[0\].folds: fold 0 is listed more than once"),
    ("stages:\n  - {name: a, folds: []}\n", r"stages\[0\].folds: an empty list trains nothing"),
    ("stages:\n  - {name: a, folds: [5]}\n", r"stages.a.folds: fold 5 is not in \[-1, 5\): data.split groups has 5 "
                                              r"grouped folds"),
    ("stages:\n  - {name: a, train: {max_steps: -1}}\n", "stages.a.train.max_steps must be >= 0"),
])
def test_empty_values_repeated_folds_and_stage_overrides_are_named(tmp_path, yaml_text, message):
    path = tmp_path / "run.yaml"
    path.write_text(yaml_text)
    with pytest.raises(ConfigError, match=message):
        load_config(path)


@pytest.mark.parametrize("yaml_text, line, problem", [
    ("train:\n  lr: 1\n   epochs: 2\n", 3, "mapping values are not allowed here"),
    ("train: [1, 2\n", 2, "expected ',' or ']'"),
    ("run_dir: !!python/object/apply:os.system ['touch PWNED']\n", 1, "could not determine a constructor"),
])
def test_yaml_errors_name_the_file_and_line(tmp_path, yaml_text, line, problem, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml_text)
    with pytest.raises(ConfigError, match=rf"bad.yaml, line {line}: {problem}"):
        load_config(path)
    assert not (tmp_path / "PWNED").exists()


def test_misspelled_yaml_key_suggests_the_closest(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  grad_acum: 4\n")
    with pytest.raises(ConfigError, match="'train.grad_acum'; did you mean 'train.grad_accum'"):
        load_config(path)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_config(tmp_path / "nope.yaml")


def test_saved_config_loads_back_equal(config_file, tmp_path):
    cfg = load_config(config_file, ["train.warmup_ratio=0.1"])
    save_config(cfg, tmp_path / "resolved.yaml")
    assert load_config(tmp_path / "resolved.yaml") == cfg


SHIPPED = sorted((Path(__file__).parents[1] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_every_shipped_config_is_a_runnable_one_with_a_header(path):
    from train.recipe import check_stages

    cfg = load_config(path)
    if cfg.stages:
        check_stages(cfg)  # every run of every stage, as the recipe checks them before its first run
    else:
        cfg.check()
    header = [line for line in path.read_text().splitlines() if line.startswith("#")]
    commands = [line for line in header if "train/main.py" in line or "train.commands.demo" in line]
    assert commands and any("=" in line.split(".yaml", 1)[-1] for line in commands), \
        f"{path.name}: its header shows how to run it, with a key=value override"


@pytest.mark.parametrize("override, message", [
    ("run_dir=", "run_dir is required"),
    ("data.fold=5", r"data.fold: fold 5 is not in \[-1, 5\): data.split groups has 5 grouped folds"),
    ("train.class_weights=[1]", "train.class_weights needs 2 values"),
])
def test_values_a_run_cannot_start_with_are_named(config_file, override, message):
    cfg = load_config(config_file, ["data.train=train.jsonl", override])
    with pytest.raises(ConfigError, match=message):
        cfg.check()


def test_check_range_checks_values_set_in_code(config_file):
    cfg = load_config(config_file, ["data.train=train.jsonl"])
    cfg.train.grad_accum = 0
    with pytest.raises(ConfigError, match="train.grad_accum must be >= 1, got 0"):
        cfg.check()


def test_a_complete_config_passes_the_check(config_file):
    load_config(config_file, ["data.train=train.jsonl"]).check()


def test_run_config_makes_a_stages_fold_a_complete_checked_run(tmp_path):
    from train.config import Fold, run_config, stage_folds

    path = tmp_path / "recipe.yaml"
    path.write_text("run_dir: runs/r\nmodel: {path: m}\ndata: {train: [qc.jsonl]}\ntrain: {lr: 1.0e-4}\nstages:\n"
                    "  - {name: pre, folds: full, data: {task: QI}}\n"
                    "  - {name: QC, folds: [0, 2], init_from: pre, train: {lr: 2.0e-4}}\n")
    cfg = load_config(path)
    assert [f.name for f in stage_folds(cfg.stages[1])] == ["fold0", "fold2"] and Fold().name == "full"
    run = run_config(cfg, cfg.stages[1], Fold(2))
    assert run.run_dir == "runs/r/QC/fold2" and run.data.fold == 2 and run.train.lr == 2.0e-4 and not run.stages
    assert run.init_from == "runs/r/pre/full/best"  # a full-data source: every fold starts from its one run
    full = run_config(cfg, cfg.stages[0], Fold())
    assert full.data.fold == -1 and full.data.task == "QI" and full.train.lr == 1.0e-4
    with pytest.raises(ConfigError, match=r"stages.QC.folds: fold 7 is not in \[-1, 5\)"):
        run_config(cfg, cfg.stages[1], Fold(7))
