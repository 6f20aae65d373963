"""The padding waste of padded (random order, length-grouped), packed and shared-prefix batches of a file.

    python -m train.commands.padding FILE TOKENIZER_DIR FAMILY [--batch-size B --max-length L --row-tokens R]
        [--suffixes-per-prefix K]

Shared-prefix batches (data.share_prefix) put the category path of a QC row first and are drawn from groups as
training draws them (chunks of at most K examples of one prefix); next to their padding, the examples' own tokens
over the tokens computed and over the token slots (the factor fewer a step computes than padded rows of them).
"""
import sys
from pathlib import Path

from tokenizers import Tokenizer

from data.batching import BatchSampler, collate_packed, collate_padded, collate_shared, examples, padding_waste
from data.inputs import LengthError, encode, group_key, pad_token_id
from data.records import read_records
from train.cli import Parser, integer, run_command
from train.config import ConfigError


def _main(argv) -> int:
    parser = Parser(prog="python -m train.commands.padding", description=__doc__.split("\n\n")[0])
    parser.add_argument("file", type=Path)
    parser.add_argument("tokenizer", type=Path, help="folder with the model's tokenizer.json")
    parser.add_argument("family", choices=["qwen", "gemma"])
    parser.add_argument("--batch-size", type=integer(1), default=16)
    parser.add_argument("--max-length", type=integer(8), default=128)
    parser.add_argument("--row-tokens", type=integer(1), default=128, help="token budget of a packed row")
    parser.add_argument("--seed", type=integer(0), default=0)
    parser.add_argument("--suffixes-per-prefix", type=integer(1), default=8, help="data.suffixes_per_prefix")
    args = parser.parse_args(argv)
    if args.row_tokens < args.max_length:
        parser.error(f"argument --row-tokens: must hold one example of --max-length {args.max_length}, got "
                     f"{args.row_tokens}")
    records = read_records(args.file, training=False)
    if not (args.tokenizer / "tokenizer.json").is_file():
        raise FileNotFoundError(f"{args.tokenizer / 'tokenizer.json'}: not found")
    tokenizer = Tokenizer.from_file(str(args.tokenizer / "tokenizer.json"))
    try:
        data = examples(records, encode(tokenizer, args.family, records, args.max_length, translate=False))
    except LengthError as e:
        raise ConfigError(f"--max-length: {e}") from None
    pad, lengths = pad_token_id(tokenizer, args.family), [len(e.input_ids) for e in data]
    print(f"{len(data)} examples, {sum(lengths) / len(data):.1f} tokens on average, batches of {args.batch_size}")
    for name, grouped, collate in [
        ("padded, random order", False, lambda b: collate_padded(b, pad)),
        ("padded, length-grouped", True, lambda b: collate_padded(b, pad)),
        (f"packed, rows of <= {args.row_tokens} tokens", False, lambda b: collate_packed(b, pad, args.row_tokens)),
    ]:
        sampler = BatchSampler(lengths, args.batch_size, args.seed, group_by_length=grouped)
        batches = [collate([data[i] for i in idx]) for idx in sampler]
        slots = sum(b["input_ids"].numel() for b in batches)
        print(f"{name:>40}: {100 * padding_waste(batches):5.1f}% padding, {slots} token slots")
    try:
        shared = examples(records, encode(tokenizer, args.family, records, args.max_length, False, shared_first=True),
                          [group_key(r, False, shared_first=True) for r in records])
    except LengthError as e:
        raise ConfigError(f"--max-length: {e}") from None
    numbers = {g: n for n, g in enumerate(dict.fromkeys(e.group for e in shared))}
    sampler = BatchSampler(lengths, args.batch_size, args.seed, groups=[numbers[e.group] for e in shared],
                           group_size=args.suffixes_per_prefix)
    batches = [collate_shared([shared[i] for i in idx], pad) for idx in sampler]
    own = sum(len(e.input_ids) for e in shared)
    computed, slots = sum(int((b["attention_mask"] > 0).sum()) for b in batches), sum(b["input_ids"].numel()
                                                                                        for b in batches)
    print(f"{f'shared prefix, <= {args.suffixes_per_prefix} per prefix':>40}: {100 * padding_waste(batches):5.1f}% "
          f"padding, {slots} token slots; own tokens / computed {own / computed:.2f}x, / slots {own / slots:.2f}x")
    return 0


def main(argv=None) -> int:
    return run_command(_main, sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())
