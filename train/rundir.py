"""One run per directory: an OS lock held while a run (or a recipe) writes there, a resume that refuses a config
whose result-changing settings differ from the run's own config.yaml, and files written whole or not at all."""
import fcntl
import os
import socket
from dataclasses import asdict
from pathlib import Path

import torch

from train.config import ConfigError, RunConfig, load_config
from train.distributed import Dist, all_reduce_sum

# Settings a resumed run may change, as they do not change what it learns: where and when it evaluates,
# checkpoints and prunes, and how a step is laid out (the loop refuses a change of the examples per step,
# batch_size x grad_accum x ranks; how they are split gives the same update, tested).
MAY_CHANGE = ("run_dir", "resume", "stages", "predict", "train.eval_every", "train.save_every", "train.keep_last",
              "train.eval_batch_size", "train.batch_size", "train.grad_accum", "train.activation_checkpointing",
              "train.compile", "data.max_tokens", "train.loggers")


def write_atomic(path, content: str | bytes) -> None:
    """Write `content` to a temporary sibling, then rename it over `path`: a reader (or a kill) sees the old file
    or the new one, never a part."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{path.name}")
    tmp.write_bytes(content.encode() if isinstance(content, str) else content)
    os.replace(tmp, path)


class RunLock:
    """An flock on DIR/.lock, naming its holder inside; the OS releases it when the process dies, so a killed run
    leaves no stale lock. Exclusive for a run (or a recipe) that writes there; `shared` for a prediction that
    only reads a trained run: any number of readers, but never next to a writer. Raises ConfigError at once,
    naming the holder, when it cannot be had."""

    def __init__(self, directory, shared: bool = False):
        directory = Path(directory)
        if shared and not directory.is_dir():
            raise ConfigError(f"run_dir {directory}: not found (is the run trained?)")
        directory.mkdir(parents=True, exist_ok=True)
        self.file = open(directory / ".lock", "a+")
        try:
            fcntl.flock(self.file, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            self.file.seek(0)
            holder = self.file.read().strip() or "another process"
            self.file.close()
            raise ConfigError(f"run_dir {directory}: in use by {holder}; wait for it to finish or choose another "
                              f"run_dir") from None
        self.file.seek(0)
        self.file.truncate()  # readers share the lock: the last to arrive is named
        self.file.write(f"process {os.getpid()} on {socket.gethostname()}{' (predicting)' if shared else ''}\n")
        self.file.flush()

    def release(self) -> None:
        fcntl.flock(self.file, fcntl.LOCK_UN)
        self.file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def lock_run_dir(directory, d: Dist) -> RunLock | None:
    """Rank 0 takes the lock; every rank raises if it could not (collective)."""
    lock, error = None, None
    if d.main:
        try:
            lock = RunLock(directory)
        except ConfigError as e:
            error = e
    if all_reduce_sum(torch.tensor([float(error is not None)], device=d.device), d).item():
        raise error or ConfigError(f"run_dir {directory}: in use by another process (see rank 0)")
    return lock


def flat(cfg: RunConfig) -> dict:
    """{"run_dir": ..., "train.lr": 1e-4, ...}: every key of a config by its dotted name."""
    out = {}
    for key, value in asdict(cfg).items():
        out.update({f"{key}.{k}": v for k, v in value.items()} if isinstance(value, dict) else {key: value})
    return out


def check_resume(cfg: RunConfig, saved_path: Path) -> None:
    """Refuse to resume a run whose saved config differs from `cfg` in a result-changing key; each is named."""
    saved, new = flat(load_config(saved_path)), flat(cfg)
    changed = [key for key in new if key.split(".")[0] not in MAY_CHANGE and key not in MAY_CHANGE
               and saved.get(key) != new[key]]
    if changed:
        listed = ", ".join(f"{k} ({saved.get(k)!r} -> {new[k]!r})" for k in changed)
        raise ConfigError(f"{saved_path}: resuming with other settings than the run was started with: {listed}; "
                          f"start a new run_dir (or set them back). Only {', '.join(MAY_CHANGE)} may change")
