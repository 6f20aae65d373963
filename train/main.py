"""Entry point: `[torchrun --nproc_per_node=N] train/main.py CONFIG.yaml [key.sub=value ...]`.

A config with `stages` runs the whole recipe (train/recipe.py); without, it trains one run directory.
"""
import logging
import os
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script (torchrun train/main.py): make the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from train.cli import Parser, run_command  # noqa: E402
from train.config import load_config  # noqa: E402
from train.loop import train  # noqa: E402
from train.recipe import run_recipe  # noqa: E402


def main(argv=None) -> int:
    return run_command(_main, argv)


def _main(argv) -> int:
    parser = Parser(prog="train/main.py", description="Fine-tune a decoder + LoRA + head into a relevance classifier.")
    parser.add_argument("config", help="YAML run config (see configs/)")
    parser.add_argument("overrides", nargs="*", help="key.sub=value, e.g. train.lr=2e-4 run_dir=runs/try")
    args = parser.parse_args(argv)
    rank = int(os.environ.get("RANK", 0))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING, format="%(message)s")
    cfg = load_config(args.config, args.overrides)
    if cfg.stages:
        run_recipe(cfg, rank)
        return 0
    result = train(cfg).summary()
    if rank == 0:
        print("best:", {k: round(v, 4) if isinstance(v, float) else v for k, v in result.items()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
