"""The whole method end to end on the demo data: stages, folds, resume, summary, submission files."""
import json
import shutil
import zipfile
from pathlib import Path

import pytest
import torch
import yaml

from data.records import DataError, read_records
from model.loading import CheckpointError, file_hash, read_config
from model.lora import LoRALinear
from train.commands.demo import DEMO_DATA, build_model
from train.commands.predict import main as predict_main
from train.config import ConfigError, load_config
from train.main import main
from train.recipe import check_stages, final_stages, out_of_fold, predict


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
    stamps.update({p: p.stat().st_mtime_ns for p in run.rglob("probabilities.json")})
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
    ({"folds": [7]}, r"stages.QC.folds: fold 7 is not in \[-1, 3\)"),
])
def test_bad_stages_fail_before_any_training(tmp_path, model_dir, stage_change, message):
    path = recipe(tmp_path, model_dir)
    cfg = yaml.safe_load(path.read_text())
    cfg["stages"][1].update(stage_change)
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(ConfigError, match=message):
        check_stages(load_config(path))
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("folds", ["full", [0, 1]])
def test_a_stage_starting_from_folds_its_source_did_not_train_is_refused(tmp_path, model_dir, folds):
    path = recipe(tmp_path, model_dir)
    cfg = yaml.safe_load(path.read_text())
    cfg["stages"][3].update(init_from="QC", folds=folds)  # QC trains fold 0 only
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(ConfigError, match=r"stages\[3\] \(QI\): init_from 'QC' trains folds \[0\], so it has no run"):
        check_stages(load_config(path))


def qc_recipe(run_dir, model_dir, **predict):
    """One QC stage (fold 0 of 3), predicting the demo test file unless told otherwise."""
    cfg = {"run_dir": str(run_dir), "model": {"path": str(model_dir), "dtype": "float32"}, "lora": {"r": 4, "alpha": 8},
           "data": {"translations": str(DEMO_DATA / "translations.jsonl"), "n_folds": 3, "max_length": 32},
           "train": {"lr": 1e-3, "max_steps": 2, "batch_size": 8, "bf16": False},
           "stages": [{"name": "QC", "folds": [0], "data": {"train": str(DEMO_DATA / "train_QC.txt"), "task": "QC"}}],
           "predict": {"files": [str(DEMO_DATA / "test_QC.txt")], **predict}}
    path = Path(run_dir).parent / f"{Path(run_dir).name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def trained_qc(tmp_path_factory, model_dir):
    """A trained QC fold and its submission; tests work on copies of the run directory."""
    run = tmp_path_factory.mktemp("trained") / "run"
    assert main([str(qc_recipe(run, model_dir))]) == 0
    return run


@pytest.fixture
def run(trained_qc, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(trained_qc, copy)
    return copy


def cached(run):
    return json.loads((run / "QC" / "fold0" / "predictions" / "probabilities.json").read_text())


def test_cached_probabilities_follow_the_rows_content_not_their_ids(run, model_dir, tmp_path):
    cfg = load_config(qc_recipe(run, model_dir))
    first = cached(run)
    rows = [json.loads(line) for line in (DEMO_DATA / "test_QC.txt").open()]
    changed = tmp_path / "test_QC.txt"  # the same ids, every query another one
    changed.write_text("".join(json.dumps({**r, "origin_query": rows[(i + 7) % len(rows)]["origin_query"]},
                                          ensure_ascii=False) + "\n" for i, r in enumerate(rows)))
    predict(load_config(qc_recipe(run, model_dir), [f"predict.files=[{changed}]"]))
    second = cached(run)
    assert second["fingerprint"] != first["fingerprint"]
    assert second["probabilities"].keys() == first["probabilities"].keys()
    assert second["probabilities"] != first["probabilities"]
    (run / "QC" / "fold0" / "predictions" / "probabilities.json").unlink()  # computed afresh: the same numbers
    predict(load_config(qc_recipe(run, model_dir), [f"predict.files=[{changed}]"]))
    assert cached(run) == second
    predict(load_config(qc_recipe(run, model_dir), ["data.max_length=16"]))  # a setting that changes them
    assert cached(run)["fingerprint"] not in (first["fingerprint"], second["fingerprint"])
    predict(cfg)
    assert cached(run) == first


def test_a_float32_fold_predicts_with_its_lora_merged_and_the_unmerged_numbers(run, model_dir, monkeypatch):
    merged = cached(run)["probabilities"]
    calls = []
    monkeypatch.setattr(LoRALinear, "merge", lambda layer: calls.append(layer))  # predict without merging
    (run / "QC" / "fold0" / "predictions" / "probabilities.json").unlink()
    predict(load_config(qc_recipe(run, model_dir)))
    unmerged = cached(run)["probabilities"]
    assert len(calls) == 7 * read_config(model_dir).num_layers  # every LoRA layer of the fold model
    assert unmerged.keys() == merged.keys() and max(abs(merged[i] - unmerged[i]) for i in merged) < 1e-6
    calls.clear()
    predict(load_config(qc_recipe(run, model_dir), ["model.dtype=bfloat16"]))
    assert not calls  # a bf16 weight would round the update away: unmerged


def test_a_retrained_fold_never_serves_old_probabilities(run, model_dir):
    from safetensors.torch import load_file, save_file

    first = cached(run)
    weights = run / "QC" / "fold0" / "best" / "adapters.safetensors"
    tensors = load_file(weights)
    tensors["score.weight"] = tensors["score.weight"] * -3.0  # another fold model, same file names and ids
    save_file(tensors, weights)
    predict(load_config(qc_recipe(run, model_dir)))
    assert cached(run)["fingerprint"] != first["fingerprint"]
    assert cached(run)["probabilities"] != first["probabilities"]


def test_a_moved_base_model_is_found_through_the_configs_model_path(run, model_dir, tmp_path):
    moved = tmp_path / "moved-model"
    shutil.copytree(model_dir, moved)
    cfg = load_config(qc_recipe(run, tmp_path / "nowhere"), [f"model.path={moved}"])
    before = (run / "submission" / "submit_QC.txt").read_text()
    shutil.rmtree(run / "QC" / "fold0" / "predictions")
    predict(cfg)
    assert (run / "submission" / "submit_QC.txt").read_text() == before


@pytest.mark.parametrize("change, error, message", [
    ({"files": []}, ConfigError, r"predict.files: empty, nothing to predict"),
    ({"files": ["QI"]}, ConfigError, r"predict.files: .*test_QI.txt holds QI rows, but no stage trains QI"),
    ({"files": ["QX"]}, DataError, r"bad_task.txt, line 1, field 'task': task 'QX', expected QC or QI"),
    ({"files": ["QC", "again"]}, DataError, r"again_QC.txt, field 'id': id '\d+' is also in .*test_QC.txt"),
    ({"files": ["mixed"]}, DataError, r"mixed.txt, line 2, field 'task': task 'QI', expected QC"),
    ({"stages": []}, ConfigError, r"stages: the config has none"),
])
def test_nothing_is_written_for_an_empty_or_ambiguous_prediction(run, model_dir, tmp_path, change, error, message):
    qc_rows = (DEMO_DATA / "test_QC.txt").read_text().splitlines(keepends=True)
    qi_row = (DEMO_DATA / "test_QI.txt").read_text().splitlines(keepends=True)[0]
    files = {"QC": DEMO_DATA / "test_QC.txt", "QI": DEMO_DATA / "test_QI.txt", "QX": tmp_path / "bad_task.txt",
             "again": tmp_path / "again_QC.txt", "mixed": tmp_path / "mixed.txt"}
    files["QX"].write_text(qc_rows[0].replace('"QC"', '"QX"'))
    files["again"].write_text(qc_rows[3])
    files["mixed"].write_text(qc_rows[0] + qi_row)
    before = {p.name: p.read_bytes() for p in (run / "submission").iterdir()}
    cfg = load_config(qc_recipe(run, model_dir))
    if "files" in change:
        cfg.predict.files = [str(files[k]) for k in change["files"]]
    else:
        cfg.stages = []
    with pytest.raises(error, match=message):
        predict(cfg)
    assert {p.name: p.read_bytes() for p in (run / "submission").iterdir()} == before


@pytest.mark.parametrize("change, message", [
    (["predict.weight_power=1e6"], r"predict.weight_power: every fold of QC weighs 0 \(validation F1 \*\* 1000000.0\)"),
    (["undefined"], r"predict.ensemble: weighted_mean weighs folds by validation F1, which is undefined for QC/fold0"),
])
def test_a_weighted_ensemble_without_a_usable_weight_is_refused(run, model_dir, change, message):
    if change == ["undefined"]:  # a validation fold without a relevant row
        result = run / "QC" / "fold0" / "result.json"
        result.write_text(json.dumps({**json.loads(result.read_text()), "f1": None}))
        change = []
    with pytest.raises(ConfigError, match=message):
        predict(load_config(qc_recipe(run, model_dir, ensemble="weighted_mean"), change))


def test_predict_command_prints_one_error_line(run, model_dir, capsys):
    assert predict_main([str(qc_recipe(run, model_dir)), "predict.files=[]"]) == 1
    assert capsys.readouterr().err == "error: predict.files: empty, nothing to predict\n"


@pytest.mark.parametrize("damage, message", [
    ("adapters", r"QC/fold0/best/adapters.safetensors: tensor 'score.weight' holds NaN or infinite values"),
    ("cache", r"QC/fold0/predictions/probabilities.json: 1 of 120 probabilities are not finite \(first id '\d+'\)"),
    ("computed", r"QC/fold0/best/adapters.safetensors: 120 of 120 probabilities are not finite"),
])
def test_a_fold_that_predicts_nan_is_refused_naming_it(run, model_dir, monkeypatch, damage, message):
    from safetensors.torch import load_file, save_file

    import train.predict

    cache = run / "QC" / "fold0" / "predictions" / "probabilities.json"
    if damage == "adapters":  # a valid file whose weights are NaN: every probability would be NaN, none relevant
        weights = run / "QC" / "fold0" / "best" / "adapters.safetensors"
        save_file({k: v * float("nan") if k == "score.weight" else v for k, v in load_file(weights).items()},
                  weights)
    elif damage == "cache":
        cached = json.loads(cache.read_text())
        cached["probabilities"][next(iter(cached["probabilities"]))] = float("nan")
        cache.write_text(json.dumps(cached))
    else:
        cache.unlink()
        monkeypatch.setattr(train.predict, "probabilities", lambda _, items, *a: {e.id: float("nan") for e in items})
    before = {p.name: p.read_bytes() for p in (run / "submission").iterdir()}
    with pytest.raises(CheckpointError, match=message):
        predict(load_config(qc_recipe(run, model_dir)))
    assert {p.name: p.read_bytes() for p in (run / "submission").iterdir()} == before


def test_predict_and_a_training_of_a_fold_it_reads_refuse_each_other_at_once(run, model_dir):
    import train.loop
    from train.config import Fold, run_config
    from train.rundir import RunLock

    cfg = load_config(qc_recipe(run, model_dir))
    fold = run / "QC" / "fold0"
    with RunLock(fold):  # a training in progress there
        with pytest.raises(ConfigError, match=rf"run_dir {fold}: in use by process \d+"):
            predict(cfg)
    with RunLock(fold, shared=True):  # a prediction reading it
        with pytest.raises(ConfigError, match=rf"run_dir {fold}: in use by process \d+ .*\(predicting\)"):
            train.loop.train(run_config(cfg, cfg.stages[0], Fold(0)))
    with RunLock(fold, shared=True):  # predictions share it
        predict(cfg)


def test_a_recipe_on_one_class_completes_with_undefined_metrics_as_null_and_n_a(tmp_path, model_dir, capsys):
    relevant = tmp_path / "train_QC.txt"  # every label 1: validation AUC is undefined, F1 is not
    relevant.write_text("".join(json.dumps({**json.loads(line), "label": 1}, ensure_ascii=False) + "\n"
                                for line in (DEMO_DATA / "train_QC.txt").open()))
    path = qc_recipe(tmp_path / "run", model_dir)
    cfg = yaml.safe_load(path.read_text())
    cfg["stages"][0]["data"]["train"] = str(relevant)
    path.write_text(yaml.safe_dump(cfg))
    assert main([str(path)]) == 0
    out = capsys.readouterr().out
    fold = tmp_path / "run" / "QC" / "fold0"

    def no_nan(constant):
        raise AssertionError(f"{constant} in metrics.jsonl: not JSON")

    valid = [json.loads(line, parse_constant=no_nan) for line in (fold / "metrics.jsonl").open()]
    assert [r["auc"] for r in valid if r["split"] == "valid"] == [None] and json.loads((fold / "result.json")
                                                                                      .read_text())["auc"] is None
    assert "n/a" in (fold / "metrics.txt").read_text()
    lines = out.split("\n")
    header, mean = next(lines[i:i + 3:2] for i, line in enumerate(lines) if "AUC" in line)  # header, (fold0,) mean
    cells = [[line[j:j + 11].strip() for j in range(0, len(line), 11)] for line in (header, mean)]
    assert cells[1][0] == "mean" and cells[1][cells[0].index("AUC")] == "n/a"
    assert (tmp_path / "run" / "submission" / "submit.zip").is_file()


@pytest.fixture(scope="module")
def chained(tmp_path_factory, model_dir):
    """QI pre-training, then every QC fold starting from it."""
    tmp = tmp_path_factory.mktemp("chained")
    path = recipe(tmp, model_dir, predict={"files": [str(DEMO_DATA / "test_QC.txt")]})
    cfg = yaml.safe_load(path.read_text())
    cfg["stages"] = cfg["stages"][:2]
    cfg["stages"][1]["folds"] = [0, 1, 2]
    path.write_text(yaml.safe_dump(cfg))
    assert main([str(path)]) == 0
    return path


@pytest.mark.slow
def test_out_of_fold_rows_cover_every_training_row_once(chained):
    cfg = load_config(chained)
    stage = cfg.stages[1]
    oof = out_of_fold(cfg, stage, "QC")
    training = read_records(DEMO_DATA / "train_QC.txt", "QC", None)
    assert sorted(oof["ids"]) == sorted(r.id for r in training)  # every row once, by the fold that held it out
    assert set(oof["folds"]) == {"fold0", "fold1", "fold2"}
    labels = {r.id: r.label for r in training}
    assert oof["labels"] == [labels[i] for i in oof["ids"]]


@pytest.mark.slow
def test_a_stage_hand_off_is_recorded_evaluated_at_step_0_and_checked(chained, tmp_path, monkeypatch, capsys):
    run = load_config(chained).run_dir
    source = Path(run) / "pre_QI" / "full" / "best" / "adapters.safetensors"
    for fold in ("fold0", "fold1", "fold2"):
        result = json.loads((Path(run) / "QC" / fold / "result.json").read_text())
        assert result["init"] == {"path": str(source), "sha256": file_hash(source)}
        assert 0 <= result["step0"]["auc"] <= 1
        valid = [json.loads(line) for line in (Path(run) / "QC" / fold / "metrics.jsonl").open()]
        assert [r["step"] for r in valid if r["split"] == "valid"][0] == 0  # evaluated before any update
    capsys.readouterr()
    assert main([str(chained)]) == 0  # a finished recipe prints its summary again
    out = capsys.readouterr().out
    assert "F1@0" in out and "AUC@0" in out
    rows = len((DEMO_DATA / "train_QC.txt").read_text().splitlines())  # every row validated once, out of fold
    assert f"QC thresholds, out-of-fold F1 of each choice over {rows} rows (cross-fitted): 0.5 " in out

    import train.loop

    def fresh_adapters(model, *args, **kwargs):  # a hand-off that re-initialises what it loaded
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith("lora_B"):
                    p.zero_()
        return model

    monkeypatch.setattr(train.loop, "prepare_model", fresh_adapters)
    follow = tiny_follow(load_config(chained), tmp_path)
    with pytest.raises(CheckpointError, match=r"starting tensor '.*lora_B' differs from the file's"):
        train.loop.train(follow)


def tiny_follow(cfg, tmp_path):
    from train.config import Fold, run_config

    run = run_config(cfg, cfg.stages[1], Fold(0))
    run.run_dir = str(tmp_path / "follow")
    return run


@pytest.mark.slow
def test_language_held_out_folds_report_unseen_next_to_seen_languages(tmp_path, model_dir, capsys):
    path = qc_recipe(tmp_path / "run", model_dir)
    cfg = yaml.safe_load(path.read_text())
    cfg["data"].update(split="languages", held_out_languages=[["ja", "ko"], ["es"]])
    cfg["stages"][0]["folds"] = [0, 1]
    path.write_text(yaml.safe_dump(cfg))
    assert main([str(path)]) == 0
    out = capsys.readouterr().out
    assert "held-out languages [['ja', 'ko'], ['es']]" in out and "unseen F1" in out and "seen AUC" in out
    assert all(f"{head} {lang}" in out for head in ("AUC", "a-p") for lang in ("es", "ja", "ko"))
    for fold, held in (("fold0", {"ja", "ko"}), ("fold1", {"es"})):
        result = json.loads((tmp_path / "run" / "QC" / fold / "result.json").read_text())
        assert result["held_out"] == sorted(held) and 0 <= result["unseen_auc"] <= 1
        assert result["unseen_rows"] > 0 and result["seen_rows"] > 0


@pytest.mark.slow
def test_one_joint_model_fills_both_submission_files(tmp_path, model_dir, capsys):
    path = DEMO_DATA.parent / "demo-joint.yaml"
    overrides = [f"run_dir={tmp_path / 'joint'}", f"model.path={model_dir}", "train.max_steps=2",
                 f"data.translations={DEMO_DATA / 'translations.jsonl'}",
                 f"stages=[{{name: joint, folds: [0, 1], data: {{train: [{DEMO_DATA / 'train_QC.txt'}, "
                 f"{DEMO_DATA / 'train_QI.txt'}]}}}}]",
                 f"predict.files=[{DEMO_DATA / 'test_QC.txt'}, {DEMO_DATA / 'test_QI.txt'}]"]
    cfg = load_config(path, overrides)
    assert {task: s.name for task, s in final_stages(cfg).items()} == {"QC": "joint", "QI": "joint"}
    assert main([str(path), *overrides]) == 0
    out = capsys.readouterr().out
    assert "joint (QC+QI, validation)" in out and "QC F1" in out and "QI F1" in out
    assert "F1 avg" not in out  # the tasks' mean is no language
    result = json.loads((tmp_path / "joint" / "joint" / "fold0" / "result.json").read_text())
    assert result["task_mean_f1"] == pytest.approx((result["QC_f1"] + result["QI_f1"]) / 2)
    assert "F1_avg = 0.5 F1_QC + 0.5 F1_QI" in out
    for task in ("QC", "QI"):
        oof = out_of_fold(cfg, cfg.stages[0], task)
        assert oof["ids"] and all(i.startswith(f"{task}:") for i in oof["ids"])
        rows = [json.loads(line) for line in (tmp_path / "joint" / "submission" / f"submit_{task}.txt").open()]
        assert len(rows) == sum(1 for _ in (DEMO_DATA / f"test_{task}.txt").open())
