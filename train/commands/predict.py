"""Predict again from a recipe's trained folds: `python -m train.commands.predict CONFIG.yaml [key.sub=value ...]`.

For new files (`predict.files=[a.txt,b.txt]`), another ensemble or threshold (`predict.ensemble=vote`), or a base
model that moved (`model.path=NEW`). Writes run_dir/submission/ (or predict.out_dir) as the recipe does.
"""
import sys

from train.cli import Parser, run_command
from train.config import ConfigError, load_config
from train.recipe import predict
from train.rundir import RunLock


def _main(argv) -> int:
    parser = Parser(prog="python -m train.commands.predict", description=__doc__.split("\n\n")[0])
    parser.add_argument("config", help="the recipe's YAML config (its run_dir holds the trained folds)")
    parser.add_argument("overrides", nargs="*", help="key.sub=value, e.g. predict.files=[test_QC.txt]")
    args = parser.parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    if not cfg.run_dir:
        raise ConfigError("run_dir is required: it holds the trained folds to predict with")
    lock = RunLock(cfg.run_dir)
    try:
        print(f"submission: {predict(cfg)}")
    finally:
        lock.release()
    return 0


def main(argv=None) -> int:
    return run_command(_main, sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())
