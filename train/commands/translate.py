"""Translate the queries of competition files to English with an instruction-tuned decoder, cached and resumable.

    python -m train.commands.translate --model google/gemma-3-4b-it --output translations.jsonl train_QC.txt dev_QC.txt
    torchrun --nproc_per_node=4 -m train.commands.translate --model ... --output ... FILES  # queries across ranks

Unique queries only, in length-sorted batches. Every finished batch is appended to OUTPUT.rank<R>.part, so an
interrupted run resumes without redoing finished queries (with any number of ranks). At the end the
`origin_query, translated_query` file the data pipeline reads is written to OUTPUT, atomically: one line per
unique query, so files whose ids overlap (train and test, QC and QI) share one translation file. A translation that
fails or comes back empty falls back to the original query and is counted in the report.
"""
import argparse
import json
import sys
import time
from pathlib import Path

import torch
from jinja2.sandbox import ImmutableSandboxedEnvironment

from data import read_records
from data.batching import Example, collate_padded
from model import load_pretrained
from model.generate import generate
from model.loading import load_tokenizer, read_json, resolve
from train.cli import Parser, integer, run_command
from train.distributed import barrier, init_distributed, shutdown
from train.rundir import write_atomic

INSTRUCTION = ("Translate this e-commerce search query into English. Reply with the translation only.\n\n"
               "Query: {query}")


class Prompter:
    """Prompt token ids from the checkpoint's chat template (tokenizer_config.json), or a plain prompt."""

    def __init__(self, directory: Path):
        self.tokenizer = load_tokenizer(directory)
        config_path = directory / "tokenizer_config.json"
        config = read_json(config_path) if config_path.is_file() else {}
        special = {k: v.get("content") if isinstance(v, dict) else v for k, v in config.items() if k.endswith("_token")}
        self.special = special
        template = config.get("chat_template")
        self.template = ImmutableSandboxedEnvironment().from_string(template) if isinstance(template, str) else None

    def __call__(self, query: str) -> list[int]:
        text = INSTRUCTION.format(query=query)
        if self.template is None:
            return self.tokenizer.encode(f"{text}\nEnglish:").ids
        prompt = self.template.render(messages=[{"role": "user", "content": text}], add_generation_prompt=True,
                                      enable_thinking=False, raise_exception=_raise, **self.special)
        return self.tokenizer.encode(prompt, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        text = self.tokenizer.decode(ids, skip_special_tokens=True).strip()
        return text.splitlines()[0].strip() if text else ""


def _raise(message):
    raise ValueError(f"chat template: {message}")


def eos_token_ids(directory: Path, prompter: Prompter) -> set[int]:
    """End-of-turn ids from config.json, generation_config.json and the tokenizer's eos token."""
    ids = set()
    for name in ("config.json", "generation_config.json"):
        if (directory / name).is_file():
            value = read_json(directory / name).get("eos_token_id")
            ids |= set(value if isinstance(value, list) else [value] if value is not None else [])
    eos = prompter.special.get("eos_token")
    if eos and prompter.tokenizer.token_to_id(eos) is not None:
        ids.add(prompter.tokenizer.token_to_id(eos))
    return ids


def read_done(output: Path) -> dict[str, str | None]:
    """query -> translation (None = failed) from the part files of earlier, possibly interrupted, runs."""
    done = {}
    for part in sorted(output.parent.glob(output.name + ".rank*.part")):
        for line in part.read_text().split("\n"):  # not splitlines(): a query may hold U+2028
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by the interruption: that query is redone
            done[row["query"]] = row["translation"]
    return done


def translate(decoder, prompter: Prompter, queries: list[str], part: Path, batch_size: int,
              max_new_tokens: int, eos: set[int], pad: int, say) -> None:
    """Translate `queries` in length-sorted batches, appending each finished batch to `part`."""
    prompts = sorted(((prompter(q), q) for q in queries), key=lambda p: len(p[0]))
    if part.exists() and not part.read_bytes().endswith(b"\n"):
        with part.open("a") as f:
            f.write("\n")  # end the line an interruption cut short, so the next one starts cleanly
    began = time.perf_counter()
    for start in range(0, len(prompts), batch_size):
        batch = prompts[start:start + batch_size]
        padded = collate_padded([Example(q, p, None) for p, q in batch], pad, padding_side="left")
        ids, mask = (padded[k].to(decoder.embed_tokens.weight.device) for k in ("input_ids", "attention_mask"))
        try:
            with torch.autocast(ids.device.type, torch.bfloat16, enabled=ids.device.type == "cuda"):
                new = generate(decoder, ids, mask, max_new_tokens, eos, pad).tolist()
            texts = [prompter.decode([t for t in row if t not in eos and t != pad]) or None for row in new]
        except RuntimeError as e:
            say(f"batch of {len(batch)} queries failed ({e}); they fall back to the original query")
            texts = [None] * len(batch)
        with part.open("a") as f:
            f.writelines(json.dumps({"query": q, "translation": t}, ensure_ascii=False) + "\n"
                         for (_, q), t in zip(batch, texts))
        done = min(start + batch_size, len(prompts))
        say(f"translated {done}/{len(prompts)} queries ({done / (time.perf_counter() - began):.1f}/s)")


def _main(argv) -> None:
    parser = Parser(prog="python -m train.commands.translate", description=__doc__,
                    formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="+", type=Path, help="competition files (JSON lines or CSV)")
    parser.add_argument("--model", required=True, help="instruction-tuned checkpoint: local directory or hub id")
    parser.add_argument("--output", required=True, type=Path, help="the origin_query, translated_query JSON-lines file")
    parser.add_argument("--batch-size", type=integer(1), default=32)
    parser.add_argument("--max-new-tokens", type=integer(1), default=48)
    parser.add_argument("--skip-english", action="store_true", help="rows with language 'en' keep their query")
    args = parser.parse_args(argv)

    dist = init_distributed()
    say = (lambda text: print(text, file=sys.stderr, flush=True)) if dist.main else (lambda text: None)
    records = [r for path in args.files for r in read_records(path, training=False, lowercase=False)]
    english = {r.query for r in records if args.skip_english and r.language == "en"}
    done = read_done(args.output)
    todo = sorted({r.query for r in records} - english - set(done) - {""})
    say(f"{len(records)} rows, {len(todo)} unique queries to translate ({len(done)} already done)")
    barrier(dist)  # every rank has read the part files before any rank appends to them
    if todo:
        directory = resolve(args.model)
        prompter = Prompter(directory)
        decoder = load_pretrained(directory, torch.bfloat16 if dist.device.type == "cuda" else torch.float32,
                                  dist.device)
        part = args.output.parent / f"{args.output.name}.rank{dist.rank}.part"
        pad = decoder.config.pad_token_id or 0
        translate(decoder, prompter, todo[dist.rank::dist.world_size], part, args.batch_size,
                  args.max_new_tokens, eos_token_ids(directory, prompter), pad, say)
    barrier(dist)
    if dist.main:
        done = read_done(args.output)
        queries = list(dict.fromkeys(r.query for r in records))
        failed = [q for q in queries if q not in english and not done.get(q)]
        write_atomic(args.output, "".join(
            json.dumps({"origin_query": q, "translated_query": q if q in english else done.get(q) or q},
                       ensure_ascii=False) + "\n" for q in queries))
        say(f"wrote {args.output}: {len(queries)} queries of {len(records)} rows, {len(failed)} without a "
            f"translation (original query kept)")
    shutdown(dist)


def main(argv=None) -> int:
    return run_command(_main, sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())
