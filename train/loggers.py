"""Where a run's scalars go besides metrics.jsonl (`train.loggers`): TensorBoard event files in the run directory,
so each run directory is one TensorBoard run (`tensorboard --logdir runs/recipe` shows every stage and fold), with
the values of metrics.jsonl: per update `train/loss`, `train/lr`, ..., per evaluation `valid/f1`, `valid/auc`, ...
"""
from pathlib import Path

from train.config import ConfigError


def summary_writer():
    """torch's SummaryWriter class, or a ConfigError naming the extra to install when tensorboard is missing."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ConfigError("train.loggers: tensorboard needs the tensorboard package: "
                          "pip install -e '.[tensorboard]'") from None
    return SummaryWriter


def check_loggers(names) -> None:
    """Fail now, before a run loads its model, if a configured logger cannot work."""
    if "tensorboard" in names:
        summary_writer()


class TensorBoard:
    """Event files in `run_dir`. A resumed run continues after `step`: events logged after it by the interrupted
    process are hidden (purge_step), as metrics.jsonl drops those lines."""

    def __init__(self, run_dir, step: int):
        self.writer = summary_writer()(log_dir=str(Path(run_dir)), purge_step=step + 1, flush_secs=10)

    def log(self, record: dict) -> None:
        for key, value in record.items():
            if key not in ("step", "split") and isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(f"{record['split']}/{key}", value, record["step"])

    def close(self) -> None:
        self.writer.close()


LOGGERS = {"tensorboard": TensorBoard}


def open_loggers(names, run_dir, step: int) -> list:
    """The configured loggers of a run directory whose metrics.jsonl continues after `step`."""
    return [LOGGERS[name](run_dir, step) for name in names]
