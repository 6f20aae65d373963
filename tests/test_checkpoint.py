"""Checkpoints: exact round trip of weights, optimizer and RNG; atomic writes; the last k kept; no pickles."""
import json
import os

import pytest
import torch
from safetensors.torch import load_file

from model.classifier import load_classifier
from model.loading import CheckpointError
from model.lora import add_lora
from train.checkpoint import (
    LoopState,
    latest_checkpoint,
    load_checkpoint,
    resume_point,
    save_best,
    save_checkpoint,
)
from train.distributed import Dist

from fixtures import make_checkpoint

ONE = Dist(rank=0, world_size=1, device=torch.device("cpu"))


@pytest.fixture
def trained(tmp_path):
    """A tiny classifier with LoRA and an AdamW that has taken two steps."""
    torch.manual_seed(0)
    model = load_classifier(make_checkpoint(tmp_path / "model"))
    add_lora(model, r=4, alpha=8)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    ids = torch.randint(3, 30, (4, 6))
    for _ in range(2):
        model(ids).sum().backward()
        optimizer.step()
        optimizer.zero_grad()
    return model, optimizer


def trainable(model):
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def test_round_trip_restores_weights_optimizer_and_rng(trained, tmp_path):
    model, optimizer = trained
    before, moments = trainable(model), {k: {n: v.clone() for n, v in s.items()} for k, s in optimizer.state.items()}
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    torch.manual_seed(123)
    saved = LoopState(epoch=1, batch_in_epoch=3, global_batch=8, best_score=0.5, best_step=6, best={"f1": 0.5},
                      init={"path": "x", "sha256": "ab"})
    path = save_checkpoint(tmp_path / "run", 7, model, optimizer, saved, ONE, keep_last=2)
    expected_draw = torch.rand(3)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    optimizer.state.clear()
    torch.rand(5)

    state = load_checkpoint(path, model, optimizer, ONE)
    assert state == LoopState(**{**vars(saved), "step": 7})
    assert all(torch.equal(before[n], p) for n, p in trainable(model).items())
    for p, saved in moments.items():
        for key, value in saved.items():
            assert torch.equal(optimizer.state[p][key], value), key
    assert torch.equal(torch.rand(3), expected_draw)  # the RNG continues where it was saved
    for name, p in model.named_parameters():  # a checkpoint holds the trainable tensors only: the rest stays as is
        if not p.requires_grad:
            assert torch.equal(p, frozen[name] + 1.0), name


def test_files_are_safetensors_and_json_only(trained, tmp_path):
    model, optimizer = trained
    path = save_checkpoint(tmp_path / "run", 1, model, optimizer, LoopState(), ONE, keep_last=2)
    assert sorted(p.name for p in path.iterdir()) == [
        "adapters.json", "adapters.safetensors", "optimizer.safetensors", "rng-rank0.safetensors", "state.json"]
    weights = load_file(path / "adapters.safetensors")
    assert set(weights) == {n for n, p in model.named_parameters() if p.requires_grad}
    assert "score.weight" in weights  # the head is saved with the adapters
    assert json.loads((path / "state.json").read_text())["param_groups"][0]["lr"] == 1e-2


def test_only_the_last_k_are_kept_and_partial_writes_are_ignored(trained, tmp_path):
    model, optimizer = trained
    run = tmp_path / "run"
    for step in range(1, 5):
        save_checkpoint(run, step, model, optimizer, LoopState(), ONE, keep_last=2)
    (run / "checkpoints" / ".tmp-step-00000009").mkdir()  # a write killed half-way
    assert sorted(p.name for p in (run / "checkpoints").glob("step-*")) == ["step-00000003", "step-00000004"]
    assert latest_checkpoint(run).name == "step-00000004"
    assert latest_checkpoint(tmp_path / "empty") is None


def test_best_is_replaced_whole(trained, tmp_path):
    model, _ = trained
    save_best(tmp_path / "best", model, ONE, threshold=0.3)
    save_best(tmp_path / "best", model, ONE, threshold=0.7)
    assert json.loads((tmp_path / "best" / "adapters.json").read_text())["threshold"] == 0.7
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def _truncate(path):
    path.write_bytes(path.read_bytes()[:-7])


@pytest.mark.parametrize("damage, named", [
    (lambda p: _truncate(p / "adapters.safetensors"), "adapters.safetensors"),
    (lambda p: _truncate(p / "optimizer.safetensors"), "optimizer.safetensors"),
    (lambda p: _truncate(p / "rng-rank0.safetensors"), "rng-rank0.safetensors"),
    (lambda p: (p / "state.json").write_text('{"step": 4, "wor'), "state.json"),
    (lambda p: (p / "state.json").write_text('{"step": 4}'), "state.json"),
    (lambda p: (p / "optimizer.safetensors").unlink(), "optimizer.safetensors"),
])
def test_a_damaged_newest_checkpoint_is_named_and_the_one_before_resumes(trained, tmp_path, caplog, damage, named):
    model, optimizer = trained
    run = tmp_path / "run"
    for step in (3, 4):
        save_checkpoint(run, step, model, optimizer, LoopState(), ONE, keep_last=2)
    newest = run / "checkpoints" / "step-00000004"
    damage(newest)
    with pytest.raises(CheckpointError, match=str(newest / named)):
        load_checkpoint(newest, model, optimizer, ONE)
    assert resume_point(run) == run / "checkpoints" / "step-00000003"
    assert f"skipping damaged checkpoint: {newest / named}" in caplog.text
    assert load_checkpoint(resume_point(run), model, optimizer, ONE).step == 3
    damage(run / "checkpoints" / "step-00000003")
    with pytest.raises(CheckpointError, match=f"{run}: no readable checkpoint"):
        resume_point(run)


def test_a_lost_rank_rng_state_is_an_error_and_an_extra_rank_is_warned(trained, tmp_path, caplog):
    model, optimizer = trained
    path = save_checkpoint(tmp_path / "run", 2, model, optimizer, LoopState(), ONE, keep_last=2)
    (path / "rng-rank0.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"rng-rank0.safetensors: missing \(the checkpoint was written by 1"):
        load_checkpoint(path, model, optimizer, ONE)
    path = save_checkpoint(tmp_path / "run", 3, model, optimizer, LoopState(), ONE, keep_last=2)
    load_checkpoint(path, model, optimizer, Dist(rank=1, world_size=2, device=torch.device("cpu")))
    assert "no RNG state for rank 1 (written by 1 ranks)" in caplog.text


def test_written_files_respect_the_umask(trained, tmp_path):
    model, optimizer = trained
    old = os.umask(0o022)
    try:
        path = save_checkpoint(tmp_path / "run", 1, model, optimizer, LoopState(), ONE, keep_last=2)
    finally:
        os.umask(old)
    assert {p.name: oct(p.stat().st_mode & 0o777) for p in path.iterdir()} == {
        p.name: "0o644" for p in path.iterdir()}


def test_a_state_json_from_before_the_loop_state_class_resumes(trained, tmp_path):
    """state.json as the loop wrote it before LoopState (a dict with best_f1): it loads with the same values."""
    model, optimizer = trained
    path = save_checkpoint(tmp_path / "run", 4, model, optimizer, LoopState(), ONE, keep_last=2)
    meta = json.loads((path / "state.json").read_text())
    old = {"step": 4, "best_f1": 0.61, "best_step": 3, "global_batch": 8, "epoch": 1, "batch_in_epoch": 0,
           "best": {"f1": 0.61}, "world_size": 1, "param_groups": meta["param_groups"]}
    (path / "state.json").write_text(json.dumps(old))
    state = load_checkpoint(path, model, optimizer, ONE)
    assert state == LoopState(step=4, epoch=1, global_batch=8, best_score=0.61, best_step=3, best={"f1": 0.61})
