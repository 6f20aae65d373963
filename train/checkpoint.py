"""Run-directory checkpoints: trainable weights, optimizer, RNG and loop state, written atomically, the last k kept.

    run_dir/checkpoints/step-00000120/
        adapters.safetensors    LoRA A/B + head, full (unsharded) float32 tensors (model.adapters format,
        adapters.json           so load_adapters and init_from read a checkpoint as they read best/)
        optimizer.safetensors   AdamW moments and step per parameter, "<param name>:<key>"
        rng-rank<r>.safetensors each rank's torch (and CUDA) RNG state
        state.json              loop state (step, epoch, data position, best F1), optimizer param groups
    run_dir/best/               adapters of the best evaluation, with the tuned threshold in adapters.json

A checkpoint is written to a hidden temporary directory and renamed when complete, so every `step-*`
directory is whole. Only tensors and JSON are written: nothing is unpickled on load.
"""
import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_optimizer_state_dict,
                                                     set_model_state_dict, set_optimizer_state_dict)

from model.adapters import WEIGHTS, save_adapters
from train.distributed import Dist, all_gather_lists, barrier

GATHER = StateDictOptions(full_state_dict=True, cpu_offload=True)
SCATTER = StateDictOptions(full_state_dict=True, ignore_frozen_params=True, strict=False)


def _rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _staging(directory: Path, d: Dist) -> Path:
    """An empty hidden sibling of `directory` to write into (collective)."""
    tmp = directory.with_name(f".tmp-{directory.name}")
    if d.main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier(d)
    return tmp


def _publish(tmp: Path, directory: Path) -> None:
    """Rename the finished `tmp` to `directory`, replacing an older one (rank 0 only)."""
    old = directory.with_name(f".old-{directory.name}")
    if directory.exists():
        directory.rename(old)
    tmp.rename(directory)
    shutil.rmtree(old, ignore_errors=True)


def save_checkpoint(run_dir, step: int, model, optimizer, state: dict, d: Dist, keep_last: int) -> Path:
    """Write checkpoints/step-<step> (collective: every rank calls it) and prune all but the newest keep_last."""
    root = Path(run_dir) / "checkpoints"
    final = root / f"step-{step:08d}"
    tmp = _staging(final, d)
    save_adapters(model, tmp, step=step)
    optim = get_optimizer_state_dict(model, optimizer, options=GATHER)
    rng = all_gather_lists([_rng_state(d.device)], d)
    if d.main:
        save_file({f"{name}:{key}": value.contiguous() for name, per in optim["state"].items()
                   for key, value in per.items()}, tmp / "optimizer.safetensors")
        for rank, states in enumerate(rng):
            save_file({k: v.cpu() for k, v in states.items()}, tmp / f"rng-rank{rank}.safetensors")
        meta = dict(state, step=step, world_size=d.world_size, param_groups=optim["param_groups"])
        (tmp / "state.json").write_text(json.dumps(meta, indent=1))
        _publish(tmp, final)
        for old in sorted(root.glob("step-*"))[:-keep_last]:
            shutil.rmtree(old)
    barrier(d)
    return final


def save_best(directory, model, d: Dist, **meta) -> None:
    """Write the adapters + head with `meta` (threshold, metrics) to `directory` atomically (collective)."""
    directory = Path(directory)
    tmp = _staging(directory, d)
    save_adapters(model, tmp, **meta)
    if d.main:
        _publish(tmp, directory)
    barrier(d)


def latest_checkpoint(run_dir) -> Path | None:
    """The newest complete checkpoint of a run directory, or None."""
    done = sorted((Path(run_dir) / "checkpoints").glob("step-*"))
    return done[-1] if done else None


def load_checkpoint(path, model, optimizer, d: Dist) -> dict:
    """Restore weights, optimizer and this rank's RNG from `path`; returns the loop state saved with them."""
    path = Path(path)
    meta = json.loads((path / "state.json").read_text())
    set_model_state_dict(model, load_file(path / WEIGHTS), options=SCATTER)
    state = {}
    for flat, value in load_file(path / "optimizer.safetensors").items():
        name, key = flat.rsplit(":", 1)
        state.setdefault(name, {})[key] = value
    set_optimizer_state_dict(model, optimizer, {"state": state, "param_groups": meta.pop("param_groups")},
                             options=SCATTER)
    rng_file = path / f"rng-rank{d.rank}.safetensors"
    if rng_file.exists():  # absent when resuming on more ranks than wrote the checkpoint
        rng = load_file(rng_file)
        torch.set_rng_state(rng["cpu"])
        if "cuda" in rng:
            torch.cuda.set_rng_state(rng["cuda"], d.device)
    return meta
