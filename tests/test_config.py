"""The run config: YAML + overrides into typed dataclasses; bad keys and values are named."""
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
    ("train.bf16=maybe", "train.bf16: expected true or false"),
    ("train", "not of the form key.sub=value"),
])
def test_bad_keys_and_values_are_named(config_file, override, message):
    with pytest.raises(ConfigError, match=message.replace("?", r"\?").replace("[", r"\[")):
        load_config(config_file, [override])


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


def test_example_configs_load():
    from pathlib import Path
    paths = sorted((Path(__file__).parents[1] / "configs").glob("*.yaml"))
    assert paths
    for path in paths:
        load_config(path)


@pytest.mark.parametrize("override, message", [
    ("run_dir=", "run_dir is required"),
    ("train.grad_accum=0", "train.grad_accum must be >= 1, got 0"),
    ("data.fold=5", r"data.fold must be in \[-1, 5\)"),
    ("train.class_weights=[1]", "train.class_weights needs 2 values"),
])
def test_values_a_run_cannot_start_with_are_named(config_file, override, message):
    cfg = load_config(config_file, ["data.train=train.jsonl", override])
    with pytest.raises(ConfigError, match=message):
        cfg.check()


def test_a_complete_config_passes_the_check(config_file):
    load_config(config_file, ["data.train=train.jsonl"]).check()
