"""What the user sees on rank 0: a progress line, a metrics JSON-lines file, and a PNG of the curves."""
import json
import sys
import time
from datetime import timedelta
from pathlib import Path


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
    """metrics.jsonl in the run directory: one JSON object per training step or evaluation."""

    def __init__(self, path):
        self.path = Path(path)

    def truncate_after(self, step: int) -> None:
        """Drop lines logged after `step` (a resumed run redoes those steps)."""
        if self.path.exists():
            keep = [line for line in self.path.read_text().splitlines() if json.loads(line)["step"] <= step]
            self.path.write_text("".join(line + "\n" for line in keep))

    def append(self, **record) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")

    def read(self) -> list[dict]:
        return [json.loads(line) for line in self.path.read_text().splitlines()] if self.path.exists() else []


def plot(log: MetricsLog, path) -> str:
    """Write the training loss and validation loss / F1 / AUC curves to `path`; returns what was done."""
    try:
        import matplotlib
    except ImportError:
        return f"no plot: matplotlib is not installed (pip install -e '.[plot]'), the curves are in {log.path}"
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = log.read()
    train = [r for r in rows if r["split"] == "train"]
    valid = [r for r in rows if r["split"] == "valid"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    left.plot([r["step"] for r in train], [r["loss"] for r in train], label="train", lw=0.8)
    left.plot([r["step"] for r in valid], [r["loss"] for r in valid], "o-", label="valid")
    left.set(xlabel="step", ylabel="loss", title="loss")
    for key in ("f1", "auc", "all_positive_f1"):
        right.plot([r["step"] for r in valid], [r[key] for r in valid], "o-" if key != "all_positive_f1" else "--",
                   label=key)
    right.set(xlabel="step", title="validation")
    for ax in (left, right):
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return f"curves written to {path}"
