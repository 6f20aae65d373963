"""Every command turns a user error into one line `error: <where>: <what>` and exit status 1, no traceback."""
import errno
import subprocess
import sys
from pathlib import Path

import pytest

from train.cli import error_line, run_command

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


COMMANDS = sorted(p.stem for p in (ROOT / "train" / "commands").glob("*.py") if p.stem != "__init__")


@pytest.mark.slow
@pytest.mark.parametrize("name", COMMANDS)
def test_every_command_has_help_naming_it_and_is_listed(name):
    out = subprocess.run([sys.executable, "-m", f"train.commands.{name}", "--help"], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.startswith(f"usage: python -m train.commands.{name}"), out.stderr
    listed = (ROOT / "train" / "commands" / "__init__.py").read_text()
    assert f"\n    {name} " in listed
