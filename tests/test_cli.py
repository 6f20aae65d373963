"""Every command turns a user error into one line `error: <where>: <what>` and exit status 1, no traceback."""
import errno
import subprocess
import sys
from pathlib import Path

import pytest

from train.cli import error_line, run_command

from fixtures import make_records

ROOT = Path(__file__).resolve().parents[1]


def test_os_errors_read_as_file_then_problem():
    assert error_line(OSError(errno.ENOSPC, "No space left on device", "runs/x/best")) == \
        "error: runs/x/best: No space left on device"
    assert error_line(FileNotFoundError("data.train: file not found: x.jsonl")) == \
        "error: data.train: file not found: x.jsonl"


def test_bugs_keep_their_traceback():
    def buggy(argv):
        raise IndexError("a bug")

    with pytest.raises(IndexError):
        run_command(buggy, [])


@pytest.mark.slow
@pytest.mark.parametrize("command, expected", [
    (["-m", "train.commands.folds", "nowhere.jsonl"], "error: nowhere.jsonl: file not found"),
    (["-m", "train.commands.folds", "BAD"], "error: BAD, line 1: malformed JSON"),
    (["-m", "train.commands.padding", "BAD", "nowhere", "qwen"], "error: BAD, line 1: malformed JSON"),
    (["train/main.py", "BAD_YAML"], "error: BAD_YAML, line 3: mapping values are not allowed here"),
    (["-m", "train.commands.predict", "nowhere.yaml"], "error: nowhere.yaml: config file not found"),
    (["-m", "train.commands.translate", "BAD", "--model", "x", "--output", "t.jsonl"],
     "error: BAD, line 1: malformed JSON"),
    (["-m", "train.commands.submission", "check", "nowhere.zip", "BAD"], "error: nowhere.zip: file not found"),
    (["-m", "train.commands.demo", "BAD_YAML"], "error: BAD_YAML, line 3: mapping values are not allowed here"),
    (["-m", "train.commands.benchmark", "--shared", "nowhere"], "error: nowhere/data/qc_sample.jsonl: not found"),
    (["-m", "train.commands.score", "nowhere", "-"], "error: nowhere/config.yaml: not found"),
    (["-m", "train.commands.export", "nowhere", "out"], "error: nowhere/config.yaml: not found"),
])
def test_each_command_prints_one_error_line(tmp_path, command, expected):
    (tmp_path / "bad.jsonl").write_text("{not json\n")
    (tmp_path / "bad.yaml").write_text("train:\n  lr: 1\n   epochs: 2\n")
    replace = {"BAD": str(tmp_path / "bad.jsonl"), "BAD_YAML": str(tmp_path / "bad.yaml")}
    command = [replace.get(c, c) for c in command]
    out = subprocess.run([sys.executable, *command], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 1, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(expected.replace("BAD_YAML", replace["BAD_YAML"]).replace(
        "BAD", replace["BAD"])), out.stderr


@pytest.mark.parametrize("command, argv, expected", [  # each kind of value a user types that used to crash
    ("padding", ["F", "T", "qwen", "--batch-size", "0"], "padding: argument --batch-size: must be >= 1, got 0"),
    ("translate", ["F", "--model", "m", "--output", "o", "--batch-size", "-4"],
     "translate: argument --batch-size: must be >= 1, got -4"),
    ("folds", ["F", "--folds", "two"], "folds: argument --folds: expected an integer, got 'two'"),
    ("folds", ["F", "--folds", "40"], r"--folds: need 2 <= n_folds <= number of groups (10), got n_folds=40 in F "
                                      r"at --levels 2"),
    ("padding", ["F", "T", "qwen", "--row-tokens", "64"],
     "padding: argument --row-tokens: must hold one example of --max-length 128, got 64"),
    ("benchmark", ["--steps", "0"], "benchmark: argument --steps: must be >= 1, got 0"),
    ("demo_data", ["out", "--train-rows", "0"], "demo_data: argument --train-rows: must be >= 1, got 0"),
    ("submission", ["check", "F"], "submission check: the following arguments are required: inputs"),
    ("predict", [], "predict: the following arguments are required: config"),
])
def test_a_bad_flag_is_one_error_line_naming_it(tmp_path, capsys, command, argv, expected):
    import importlib

    make_records(tmp_path / "f.jsonl", 12, seed=0)  # 12 rows in 10 category groups
    argv = [str(tmp_path / "f.jsonl") if a == "F" else str(tmp_path) if a == "T" else a for a in argv]
    assert importlib.import_module(f"train.commands.{command}").main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and expected.replace("F", str(tmp_path / "f.jsonl")) \
        in err, err


def test_the_training_entry_point_names_a_missing_config_argument(capsys):
    from train.main import main

    assert main([]) == 1
    assert capsys.readouterr().err.startswith("error: train/main.py: the following arguments are required: config")


COMMANDS = sorted(p.stem for p in (ROOT / "train" / "commands").glob("*.py") if p.stem != "__init__")


@pytest.mark.slow
@pytest.mark.parametrize("name", COMMANDS)
def test_every_command_has_help_naming_it_and_is_listed(name):
    out = subprocess.run([sys.executable, "-m", f"train.commands.{name}", "--help"], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.startswith(f"usage: python -m train.commands.{name}"), out.stderr
    listed = (ROOT / "train" / "commands" / "__init__.py").read_text()
    assert f"\n    {name} " in listed
