"""Export a trained run (or one fold of a recipe) for other tools:
`python -m train.commands.export RUN_OR_RECIPE_DIR OUT [--format merged|peft] [--fold K] [--task QC|QI]`.

merged: a Hugging Face *ForSequenceClassification checkpoint (LoRA folded in; --dtype float32 or bfloat16) that
`pipeline("text-classification", model=OUT)` and AutoModelForSequenceClassification load; peft: the LoRA adapter
and head for PeftModel over the base model. Either way OUT gets the base model's tokenizer, whose pair call
`tokenizer(query, target)` makes the run's template, and README.md, the model card (template, threshold,
validation metrics, base model, this command). An existing OUT is an error unless --force.
"""
import argparse
import shlex
import sys

from train.cli import run_command
from train.exporting import export_run


def _main(argv) -> int:
    parser = argparse.ArgumentParser(prog="python -m train.commands.export", description=__doc__.split("\n\n")[0])
    parser.add_argument("directory", help="a run directory (its best/ model) or a recipe's run_dir")
    parser.add_argument("out", help="the directory to write")
    parser.add_argument("--format", choices=["merged", "peft"], default="merged")
    parser.add_argument("--fold", help="a recipe's fold of its final stage (K or full), when it has several")
    parser.add_argument("--task", choices=["QC", "QI"], help="when the recipe or run trains both tasks")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32", help="merged weights' dtype")
    parser.add_argument("--force", action="store_true", help="replace OUT if it exists")
    args = parser.parse_args(argv)
    command = shlex.join(["python", "-m", "train.commands.export", *argv])
    out = export_run(args.directory, args.out, args.format, args.fold, args.task, args.dtype, args.force, command)
    print(f"exported ({args.format}): {out}")
    return 0


def main(argv=None) -> int:
    return run_command(_main, sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())
