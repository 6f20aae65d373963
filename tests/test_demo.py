"""The demo learns both tasks, by a margin that does not hang on the CPU's rounding (fold 0 of each task)."""
import json

import pytest
import yaml

from train.commands.demo import CONFIG, ROOT, build_model
from train.main import main


@pytest.mark.slow
def test_the_demo_recipe_learns_qc_and_qi_well_above_chance(tmp_path, monkeypatch):
    cfg = yaml.safe_load(CONFIG.read_text())
    for stage in cfg["stages"]:
        stage["folds"] = stage["folds"] if stage["folds"] == "full" else [0]  # both tasks, fold 0 only
    cfg.update(run_dir=str(tmp_path / "run"), predict={"files": []})
    cfg["model"]["path"] = str(tmp_path / "model")
    build_model(tmp_path / "model")
    (tmp_path / "demo.yaml").write_text(yaml.safe_dump(cfg))
    monkeypatch.chdir(ROOT)  # the demo config's data paths are relative to the repository
    assert main([str(tmp_path / "demo.yaml")]) == 0
    for task in ("QC", "QI"):
        result = json.loads((tmp_path / "run" / task / "fold0" / "result.json").read_text())
        # Measured 2026-12-01 (AMD EPYC; native AVX512 bf16, ATEN_CPU_CAPABILITY=avx2 / default float32; seeds
        # 0-2): QI fold 0 AUC 0.82-0.92, QC 0.9 and more; the shipped config before (dropout 0.1, 3 epochs) left
        # QI at 0.54-0.64. AUC 0.75 is chance (0.5) plus most of that margin.
        assert result["auc"] > 0.75, (task, result)
        assert result["f1"] > result["all_positive_f1"] + 0.05, (task, result)
