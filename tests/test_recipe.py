"""The whole method end to end on the demo data: stages, folds, resume, summary, submission files."""
import json
import zipfile

import pytest
import yaml

from train.config import ConfigError, load_config
from train.demo import DEMO_DATA, build_model
from train.main import main
from train.recipe import check_stages, final_stages, predict


def recipe(tmp_path, model_dir, **overrides):
    """A shortened demo recipe: QI pre-training, then QC fold 0; QC pre-training, then QI fold 1."""
    cfg = {
        "run_dir": str(tmp_path / "run"),
        "model": {"path": str(model_dir), "dtype": "float32"},
        "lora": {"r": 4, "alpha": 8},
        "data": {"translations": str(DEMO_DATA / "translations.jsonl"), "n_folds": 3, "max_length": 32},
        "train": {"lr": 1e-3, "max_steps": 2, "batch_size": 8, "bf16": False},
        "stages": [
            {"name": "pre_QI", "data": {"train": str(DEMO_DATA / "train_QI.txt"), "task": "QI"}, "folds": "full"},
            {"name": "QC", "init_from": "pre_QI", "folds": [0],
             "data": {"train": str(DEMO_DATA / "train_QC.txt"), "task": "QC"}},
            {"name": "pre_QC", "data": {"train": str(DEMO_DATA / "train_QC.txt"), "task": "QC"}, "folds": "full"},
            {"name": "QI", "init_from": "pre_QC", "folds": [1],
             "data": {"train": str(DEMO_DATA / "train_QI.txt"), "task": "QI"}},
        ],
        "predict": {"files": [str(DEMO_DATA / "test_QC.txt"), str(DEMO_DATA / "test_QI.txt")]},
        **overrides,
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("demo-model")
    build_model(path)
    return path


@pytest.mark.slow
def test_recipe_trains_every_stage_then_writes_the_submission(tmp_path, model_dir, capsys):
    assert main([str(recipe(tmp_path, model_dir))]) == 0
    out = capsys.readouterr().out
    assert "F1_avg = 0.5 F1_QC + 0.5 F1_QI" in out
    run = tmp_path / "run"
    qc_config = yaml.safe_load((run / "QC" / "fold0" / "config.yaml").read_text())
    assert qc_config["init_from"] == str(run / "pre_QI" / "full" / "best")  # task-adaptive pre-training
    assert qc_config["data"]["fold"] == 0 and qc_config["data"]["task"] == "QC"
    for task in ("QC", "QI"):
        expected = sorted(json.loads(line)["id"] for line in (DEMO_DATA / f"test_{task}.txt").open())
        rows = [json.loads(line) for line in (run / "submission" / f"submit_{task}.txt").open()]
        assert [r["id"] for r in rows] == sorted(expected, key=int)  # every id once, in id order
        target = "category_path" if task == "QC" else "item_title"
        assert all(set(r) == {"id", "language", "origin_query", target, "prediction"} for r in rows)
        assert {r["prediction"] for r in rows} <= {0, 1}
    assert sorted(zipfile.ZipFile(run / "submission" / "submit.zip").namelist()) == ["submit_QC.txt",
                                                                                       "submit_QI.txt"]

    # Repeating the command redoes nothing: every run has its result.json, every fold its probabilities.
    stamps = {p: p.stat().st_mtime_ns for p in run.rglob("*.safetensors")}
    stamps.update({p: p.stat().st_mtime_ns for p in run.rglob("probabilities.jsonl")})
    assert main([str(recipe(tmp_path, model_dir))]) == 0
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps

    # New files are predicted anew from the trained folds, not answered from the cached probabilities.
    new_rows = [json.loads(line) for line in (DEMO_DATA / "test_QC.txt").open()][:5]
    new_file = tmp_path / "new_QC.txt"
    new_file.write_text("".join(json.dumps({**row, "id": str(9000 + i)}) + "\n" for i, row in enumerate(new_rows)))
    overrides = [f"predict.files=[{new_file}]", f"predict.out_dir={tmp_path / 'new'}"]
    predict(load_config(recipe(tmp_path, model_dir), overrides))
    ids = [json.loads(line)["id"] for line in (tmp_path / "new" / "submit_QC.txt").open()]
    assert ids == [str(9000 + i) for i in range(5)]


def test_final_stage_of_a_task_is_the_last_one_nothing_starts_from(tmp_path, model_dir):
    cfg = load_config(recipe(tmp_path, model_dir))
    assert {task: stage.name for task, stage in final_stages(cfg).items()} == {"QC": "QC", "QI": "QI"}


@pytest.mark.parametrize("stage_change, message", [
    ({"init_from": "QI"}, r"init_from 'QI' is not an earlier stage"),
    ({"name": "pre_QI"}, r"unique name"),
    ({"train": {"epoch": 3}}, r"unknown config key 'stages.QC.train.epoch'; did you mean 'train.epochs'"),
    ({"folds": [7]}, r"stages.QC.folds: fold 7 is not in \[0, 3\)"),
])
def test_bad_stages_fail_before_any_training(tmp_path, model_dir, stage_change, message):
    path = recipe(tmp_path, model_dir)
    cfg = yaml.safe_load(path.read_text())
    cfg["stages"][1].update(stage_change)
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(ConfigError, match=message):
        check_stages(load_config(path))
    assert not (tmp_path / "run").exists()
