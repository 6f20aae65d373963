"""train.loggers: TensorBoard event files with the values of metrics.jsonl, read back with TensorBoard's reader."""
import json
import shutil
import sys
from pathlib import Path

import pytest

from train.config import ConfigError, load_config, save_config
from train.loop import train
from train.main import main

from fixtures import tiny_config


def scalars(run_dir: Path) -> dict[str, dict[int, float]]:
    """tag -> step -> value of the event files in run_dir, as TensorBoard reads them."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir))
    events.Reload()
    return {tag: {e.step: e.value for e in events.Scalars(tag)} for tag in events.Tags()["scalars"]}


def test_tensorboard_gets_the_scalars_of_metrics_jsonl_and_a_resume_continues_them(tmp_path):
    pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed: pip install -e '.[tensorboard]'")
    cfg = tiny_config(tmp_path, max_steps=4, eval_every=2, save_every=2)
    cfg.train.loggers = ["tensorboard"]
    train(cfg)
    shutil.rmtree(Path(cfg.run_dir) / "checkpoints" / "step-00000004")  # as if killed before its last checkpoint
    train(cfg)  # resumes from step 2: steps 3 and 4 are logged again, the first process's hidden
    rows = [json.loads(line) for line in (Path(cfg.run_dir) / "metrics.jsonl").read_text().splitlines()]
    want = {}
    for row in rows:
        for key, value in row.items():
            if key not in ("step", "split"):
                want.setdefault(f"{row['split']}/{key}", {})[row["step"]] = value
    got = scalars(Path(cfg.run_dir))
    assert got.keys() == want.keys() and {"train/loss", "train/lr", "valid/f1", "valid/auc"} <= got.keys()
    for tag, values in want.items():
        assert got[tag] == pytest.approx(values, rel=1e-6), tag  # event files hold float32
    assert sorted(got["train/loss"]) == [1, 2, 3, 4] and sorted(got["valid/f1"]) == [2, 4]
    assert len(list(Path(cfg.run_dir).glob("events.out.tfevents.*"))) == 2  # one file per process


def test_an_unknown_logger_names_the_key_and_a_missing_package_names_the_extra(tmp_path, monkeypatch, capsys):
    config = tmp_path / "cfg.yaml"
    save_config(tiny_config(tmp_path), config)
    with pytest.raises(ConfigError, match=r"train.loggers\[0\]: 'wandb' is not one of tensorboard"):
        load_config(config, ["train.loggers=[wandb]"])
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if tensorboard were not installed
    assert main([str(config), "train.loggers=[tensorboard]"]) == 1
    assert capsys.readouterr().err.splitlines()[-1] == ("error: train.loggers: tensorboard needs the tensorboard "
                                                        "package: pip install -e '.[tensorboard]'")
    assert not (tmp_path / "run").exists()  # refused before the run started
