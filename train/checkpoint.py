"""Run-directory checkpoints: trainable weights, optimizer, RNG and loop state, written atomically, the last k kept.

    run_dir/checkpoints/step-00000120/
        adapters.safetensors    LoRA A/B + head, full (unsharded) float32 tensors (model.adapters format,
        adapters.json           so load_adapters and init_from read a checkpoint as they read best/)
        optimizer.safetensors   AdamW moments and step per parameter, "<param name>:<key>"
        rng-rank<r>.safetensors each rank's torch (and CUDA) RNG state
        state.json              LoopState (step, data position, the best evaluation), the writer's world size
                                and the optimizer's param groups
    run_dir/best/               adapters of the best evaluation, with the tuned threshold in adapters.json

A checkpoint is written to a hidden temporary directory and renamed when complete, so every `step-*`
directory is whole. Only tensors and JSON are written: nothing is unpickled on load. A checkpoint damaged
afterwards (a truncated file, a broken state.json) is skipped with a warning naming the file, and the run resumes
from the newest one that reads back whole.
"""
import json
import logging
import shutil
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from model.adapters import META, WEIGHTS, save_adapters
from model.loading import CheckpointError, mapped_tensors, read_header, read_json, save_tensors
from train.distributed import Dist, all_gather_lists, barrier

log = logging.getLogger(__name__)
VALIDATION = "validation.json"  # in best/: the validation probabilities of that model, for out-of-fold thresholds
STATE_KEYS = ("step", "world_size", "param_groups")  # every state.json has these


@dataclass
class LoopState:
    """The training loop's state between optimizer steps, as state.json holds it (with the writer's world size and
    the optimizer's param groups). A state.json from before this class (best_f1 for best_score) reads the same."""
    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    global_batch: int = 0  # examples per optimizer step (batch_size x grad_accum x ranks): fixed for a run
    best_score: float = -1.0  # the selection score (train.loop.selection_score) of the best evaluation
    best_step: int = 0
    best: dict | None = None  # the best evaluation's metrics; None before the first
    init: dict | None = None  # the init_from audit: adapters path and sha256
    step0: dict | None = None  # the evaluation before the first update

    @classmethod
    def from_json(cls, meta: dict) -> "LoopState":
        renamed = {"best_f1": "best_score"}
        values = {renamed.get(k, k): v for k, v in meta.items()}
        return cls(**{f.name: values[f.name] for f in fields(cls) if f.name in values})

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


def save_checkpoint(run_dir, step: int, model, optimizer, state: LoopState, d: Dist, keep_last: int) -> Path:
    """Write checkpoints/step-<step> (collective: every rank calls it) and prune all but the newest keep_last."""
    root = Path(run_dir) / "checkpoints"
    final = root / f"step-{step:08d}"
    tmp = _staging(final, d)
    save_adapters(model, tmp, step=step)
    optim = get_optimizer_state_dict(model, optimizer, options=GATHER)
    rng = all_gather_lists([_rng_state(d.device)], d)
    if d.main:
        save_tensors({f"{name}:{key}": value.contiguous() for name, per in optim["state"].items()
                      for key, value in per.items()}, tmp / "optimizer.safetensors")
        for rank, states in enumerate(rng):
            save_tensors({k: v.cpu() for k, v in states.items()}, tmp / f"rng-rank{rank}.safetensors")
        meta = dict(asdict(state), step=step, world_size=d.world_size, param_groups=optim["param_groups"])
        (tmp / "state.json").write_text(json.dumps(meta, indent=1))
        _publish(tmp, final)
        for old in sorted(root.glob("step-*"))[:-keep_last]:
            shutil.rmtree(old)
    barrier(d)
    return final


def save_best(directory, model, d: Dist, validation: dict | None = None, **meta) -> None:
    """Write the adapters + head with `meta` (threshold, metrics) to `directory` atomically (collective), and
    the model's validation probabilities (id -> P(relevant)) to validation.json beside them."""
    directory = Path(directory)
    tmp = _staging(directory, d)
    save_adapters(model, tmp, **meta)
    if d.main:
        if validation is not None:
            (tmp / VALIDATION).write_text(json.dumps(validation, ensure_ascii=False))
        _publish(tmp, directory)
    barrier(d)


def latest_checkpoint(run_dir) -> Path | None:
    """The newest checkpoint directory of a run, or None (whether it reads back whole: see resume_point)."""
    done = sorted((Path(run_dir) / "checkpoints").glob("step-*"))
    return done[-1] if done else None


def check_checkpoint(path: Path) -> dict:
    """state.json of a checkpoint whose every file reads back whole; else a CheckpointError naming the file."""
    meta = read_json(path / "state.json", "state.json")
    if not isinstance(meta, dict) or any(key not in meta for key in STATE_KEYS):
        raise CheckpointError(f"{path / 'state.json'}: lacks one of {', '.join(STATE_KEYS)}")
    read_json(path / META, "adapters.json")
    for name in (WEIGHTS, "optimizer.safetensors", *(p.name for p in sorted(path.glob("rng-rank*.safetensors")))):
        if not (path / name).is_file():
            raise CheckpointError(f"{path / name}: missing")
        read_header(path / name)
    return meta


def resume_point(run_dir, warn: bool = True) -> Path | None:
    """The newest checkpoint that reads back whole; damaged newer ones are skipped with a warning naming the
    file. None when the run has no checkpoint; an error when it has some but none is readable."""
    done = sorted((Path(run_dir) / "checkpoints").glob("step-*"), reverse=True)
    damaged = []
    for path in done:
        try:
            check_checkpoint(path)
        except (CheckpointError, OSError) as e:
            damaged.append(str(e))
            if warn:
                log.warning("skipping damaged checkpoint: %s", e)
            continue
        if damaged and warn:
            log.warning("resuming from %s, the newest complete checkpoint", path)
        return path
    if damaged:
        raise CheckpointError(f"{run_dir}: no readable checkpoint; newest: {damaged[0]}")
    return None


def load_checkpoint(path, model, optimizer, d: Dist) -> LoopState:
    """Restore weights, optimizer and this rank's RNG from `path`; returns the loop state saved with them."""
    path = Path(path)
    meta = check_checkpoint(path)
    set_model_state_dict(model, mapped_tensors(path / WEIGHTS), options=SCATTER)
    state = {}
    for flat, value in mapped_tensors(path / "optimizer.safetensors").items():
        name, key = flat.rsplit(":", 1)
        state.setdefault(name, {})[key] = value.clone()
    set_optimizer_state_dict(model, optimizer, {"state": state, "param_groups": meta.pop("param_groups")},
                             options=SCATTER)
    rng_file = path / f"rng-rank{d.rank}.safetensors"
    if rng_file.is_file():
        rng = mapped_tensors(rng_file)
        torch.set_rng_state(rng["cpu"].clone())
        if "cuda" in rng:
            torch.cuda.set_rng_state(rng["cuda"].clone(), d.device)
    elif d.rank < meta["world_size"]:  # written by this many ranks, so this rank's state was written and is lost
        raise CheckpointError(f"{rng_file}: missing (the checkpoint was written by {meta['world_size']} ranks); "
                              f"resuming without it would not continue the run")
    else:
        log.warning("%s: no RNG state for rank %d (written by %d ranks): its dropout starts from the seed",
                    path, d.rank, meta["world_size"])
    return LoopState.from_json(meta)
