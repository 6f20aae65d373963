"""What the user sees on rank 0: a progress line, a metrics JSON-lines file, and the curves (text and PNG)."""
import json
import sys
import time
from datetime import timedelta
from pathlib import Path

from train.metrics import fmt
from train.rundir import write_atomic


class Progress:
    """One line rewritten in place on a terminal (a new line every 1% of the run when output is a file)."""

    def __init__(self, total: int, start: int, stream=None):
        self.total, self.start, self.stream = total, start, stream or sys.stderr
        self.began = time.perf_counter()
        self.tty = self.stream.isatty()

    def update(self, step: int, loss: float, lr: float, tokens_per_s: float) -> None:
        elapsed = time.perf_counter() - self.began
        eta = elapsed / max(step - self.start, 1) * (self.total - step)
        line = (f"step {step}/{self.total} | loss {loss:.4f} | lr {lr:.2e} | {tokens_per_s:,.0f} tok/s"
                f" | ETA {timedelta(seconds=round(eta))}")
        if self.tty:
            self.stream.write(f"\r{line}\x1b[K" + ("\n" if step == self.total else ""))
        elif step == self.total or step % max(self.total // 100, 1) == 0:
            self.stream.write(line + "\n")
        self.stream.flush()

    def message(self, text: str) -> None:
        """A line of its own (evaluation results, checkpoints) that does not garble the progress line."""
        self.stream.write(("\r\x1b[K" if self.tty else "") + text + "\n")
        self.stream.flush()


class MetricsLog:
    """metrics.jsonl in the run directory: one JSON object per training step or evaluation, also given to each of
    `loggers` (train/loggers.py)."""

    def __init__(self, path, loggers=()):
        self.path, self.loggers = Path(path), list(loggers)

    def truncate_after(self, step: int) -> None:
        """Drop lines logged after `step` (a resumed run redoes those steps)."""
        if self.path.exists():
            keep = [line for line in self.path.read_text().splitlines() if json.loads(line)["step"] <= step]
            write_atomic(self.path, "".join(line + "\n" for line in keep))

    def append(self, **record) -> None:
        """One line; an undefined metric is None (null): NaN is not JSON, so it raises here rather than later."""
        with self.path.open("a") as f:
            f.write(json.dumps(record, allow_nan=False) + "\n")
        for logger in self.loggers:
            logger.log(record)

    def close(self) -> None:
        for logger in self.loggers:
            logger.close()

    def read(self) -> list[dict]:
        return [json.loads(line) for line in self.path.read_text().splitlines()] if self.path.exists() else []


CURVE_KEYS = ("loss", "f1", "auc", "all_positive_f1", "QC_f1", "QC_auc", "QI_f1", "QI_auc")


def text_curve(rows: list[dict]) -> str:
    """The validation curves as a table, one line per evaluation, with a bar for ROC-AUC from 0.5 to 1; "n/a"
    (and no bar) where a metric is undefined."""
    valid = [r for r in rows if r["split"] == "valid"]
    keys = [k for k in CURVE_KEYS if valid and k in valid[0]]
    auc = next((k for k in keys if k.endswith("auc")), None)
    scale = f"  {auc} 0.5 " if auc else ""
    lines = [" ".join(f"{k:>15}" for k in ["step", *keys]) + (f"{scale}|{' ' * 40}| 1.0" if auc else "")]
    for r in valid:
        bar = f"{' ' * len(scale)}|{'#' * round(min(max(r[auc] - 0.5, 0.0), 0.5) * 80)}" \
            if auc and r[auc] is not None else ""
        lines.append(" ".join([f"{r['step']:>15}", *(f"{fmt(r[k]):>15}" for k in keys)]) + bar)
    return "\n".join(lines) + "\n"


def plot(metrics_log: MetricsLog, run_dir) -> str:
    """metrics.txt (text_curve) and, with matplotlib, metrics.png of the training loss and validation loss / F1 /
    AUC in `run_dir`; returns what was written."""
    rows, run_dir = metrics_log.read(), Path(run_dir)
    write_atomic(run_dir / "metrics.txt", text_curve(rows))
    try:
        import matplotlib
    except ImportError:
        return f"curves written to {run_dir / 'metrics.txt'} (metrics.png needs matplotlib: pip install -e '.[plot]')"
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [r for r in rows if r["split"] == "train"]
    valid = [r for r in rows if r["split"] == "valid"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    left.plot([r["step"] for r in train], [r["loss"] for r in train], label="train", lw=0.8)
    left.plot([r["step"] for r in valid], [r["loss"] for r in valid], "o-", label="valid")
    left.set(xlabel="step", ylabel="loss", title="loss")
    for key in ("f1", "auc", "all_positive_f1"):
        if valid and key in valid[0]:
            right.plot([r["step"] for r in valid], [float("nan") if r[key] is None else r[key] for r in valid],
                       "o-" if key != "all_positive_f1" else "--", label=key)
    right.set(xlabel="step", title="validation")
    for ax in (left, right):
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(run_dir / "metrics.png", dpi=100)
    plt.close(fig)
    return f"curves written to {run_dir / 'metrics.txt'} and {run_dir / 'metrics.png'}"
