"""Training speed: this project (padded, packed) against transformers + PEFT, on the same model and examples.

    python -m train.commands.benchmark [--model-shape qwen3-tiny] [--steps 12] [--repeats 2] [--batch-size 16]
        [--device cpu]

One random-weight checkpoint of the shape, saved once; 50 x batch-size random examples of the QC sample (one
megabatch of data.BatchSampler), tokenized with the family's tokenizer (max_length 128). Every configuration
trains LoRA (r 16, alpha 32, dropout 0.05, all projections) and the score head with AdamW, clipping at 1.0, for
`warmup` steps, then `steps` timed steps; all configurations see the same examples in their warmup and in their
timed steps. Each runs in its own process, so that peak memory is its own, `repeats` times round-robin; the
table shows each configuration's fastest run:

    transformers + PEFT      AutoModelForSequenceClassification (SDPA) + get_peft_model; batches in random order
                             padded to their longest row (DataCollatorWithPadding, as HF Trainer does by default)
    transformers + PEFT, grouped   the same with length-grouped batches (Trainer's group_by_length)
    ours, padded             data.BatchSampler's length-grouped batches, collate_padded
    ours, packed             the same batches, collate_packed into rows of at most max_length tokens
    ours, packed, compiled   the same with each decoder block compiled (train.compile; with --compile only)

On CPU everything runs in float32 (bf16 matmuls have no hardware support on most CPUs and are slower); on CUDA
the base weights are bf16 and compute runs under bf16 autocast, LoRA and head weights float32, on both sides.
Real tokens/s counts non-pad tokens; MFU (CUDA) = 4 x non-embedding parameters x real tokens/s (forward, and
the input gradients of the backward: frozen weights get none; attention's own FLOPs left out) / peak bf16 FLOP/s.
"""
import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from data.batching import BatchSampler, Example, collate_packed, collate_padded
from data.inputs import encode, model_family, pad_token_id
from data.records import read_records
from model.loading import read_json
from model.lora import DEFAULT_TARGETS
from train.cli import run_command

SHAPES = {  # Hugging Face config fields; the 0.6b / 1b shapes are Qwen3-0.6B's and gemma-3-1b-pt's
    "qwen3-tiny": dict(model_type="qwen3", vocab_size=151936, hidden_size=512, intermediate_size=1536,
                       num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=4, head_dim=64,
                       rope_theta=1e6, tie_word_embeddings=True),
    "gemma3-tiny": dict(model_type="gemma3_text", vocab_size=262144, hidden_size=512, intermediate_size=2048,
                        num_hidden_layers=6, num_attention_heads=4, num_key_value_heads=1, head_dim=128,
                        query_pre_attn_scalar=128, sliding_window=512),
    "qwen3-0.6b": dict(model_type="qwen3", vocab_size=151936, hidden_size=1024, intermediate_size=3072,
                       num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=8, head_dim=128,
                       rope_theta=1e6, tie_word_embeddings=True),
    "gemma3-1b": dict(model_type="gemma3_text", vocab_size=262144, hidden_size=1152, intermediate_size=6912,
                      num_hidden_layers=26, num_attention_heads=4, num_key_value_heads=1, head_dim=256,
                      query_pre_attn_scalar=256, sliding_window=512),
}
CONFIGS = ["transformers + PEFT", "transformers + PEFT, grouped", "ours, padded", "ours, packed",
           "ours, packed, compiled"]
MEGABATCH = 50  # steps whose examples data.BatchSampler sorts by length together (its default)
LORA = dict(r=16, alpha=32, dropout=0.05, targets=DEFAULT_TARGETS)
PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12}  # dense, per GPU
TOKENIZERS = {"qwen3": ("qwen", "qwen3"), "gemma3_text": ("gemma", "gemma3")}  # model_type: family, folder


def prepare(args, directory: Path):
    """Save the examples' token ids (warmup, then timed) and, without --model, the random checkpoint of the shape
    under `directory` (with --model, directory/model links to it)."""
    import transformers as tf
    from tokenizers import Tokenizer

    if args.model:
        model_type = read_json(args.model / "config.json", "--model's config.json")["model_type"]
        fam, tokenizer_file = model_family(model_type), args.model / "tokenizer.json"
    else:
        shape = SHAPES[args.model_shape]
        fam, folder = TOKENIZERS[shape["model_type"]]
        tokenizer_file = args.shared / "tokenizers" / folder / "tokenizer.json"
    sample = args.shared / "data" / "qc_sample.jsonl"
    for path in (sample, tokenizer_file):
        if not path.is_file():
            raise FileNotFoundError(f"{path}: not found (--shared names the folder with data/ and tokenizers/)")
    tokenizer = Tokenizer.from_file(str(tokenizer_file))
    records = read_records(sample)
    ids = encode(tokenizer, fam, records, args.max_length, translate=False)
    pad = pad_token_id(tokenizer, fam)
    order = np.random.default_rng(0).permutation(len(ids))[: MEGABATCH * args.batch_size]
    data = [[records[i].id, ids[i], records[i].label] for i in order]
    (directory / "examples.json").write_text(json.dumps({"pad": pad, "examples": data}))
    if args.model:
        (directory / "model").symlink_to(args.model.resolve())
        model = tf.AutoModelForSequenceClassification.from_pretrained(args.model, num_labels=2)
        non_embedding = sum(p.numel() for n, p in model.named_parameters() if "embed_tokens" not in n)
        return sum(p.numel() for p in model.parameters()), non_embedding
    torch.manual_seed(0)
    config = tf.AutoConfig.for_model(**shape, num_labels=2, pad_token_id=pad)
    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    with torch.device(args.device):
        model = tf.AutoModelForSequenceClassification.from_config(config, dtype=dtype)
    model.save_pretrained(directory / "model")
    non_embedding = sum(p.numel() for n, p in model.named_parameters() if "embed_tokens" not in n)
    return sum(p.numel() for p in model.parameters()), non_embedding


def batches(name: str, data: list, pad: int, args) -> list[dict]:
    """`warmup` then `steps` batches of one training megabatch, length-grouped by data.BatchSampler as in
    training; the random-order configuration gets the same examples (warmup, then timed) shuffled into batches."""
    rows = [Example(*e) for e in data]
    steps = list(BatchSampler([len(e.input_ids) for e in rows], args.batch_size, megabatch=MEGABATCH))
    steps = steps[: args.warmup + args.steps]
    if name == "transformers + PEFT":
        rng = np.random.default_rng(0)
        parts = (steps[: args.warmup], steps[args.warmup:])
        steps = [s for part in parts for s in np.array_split(rng.permutation(np.concatenate(part)), len(part))]
    if "packed" in name:
        return [collate_packed([rows[i] for i in s], pad, args.max_length) for s in steps]
    return [collate_padded([rows[i] for i in s], pad) for s in steps]


def build(name: str, directory: Path, device: str):
    """(model, forward(batch) -> logits) for a configuration."""
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    if name.startswith("ours"):
        from model.classifier import load_classifier
        from model.lora import add_lora

        model = load_classifier(directory / "model", dtype=dtype, device=device)
        add_lora(model, LORA["r"], LORA["alpha"], LORA["dropout"], LORA["targets"])
        if name.endswith("compiled"):
            for block in model.model.layers:
                block.compile()
        return model, lambda b: model(b["input_ids"], b["attention_mask"], b["position_ids"])
    import peft
    import transformers as tf

    tf.logging.set_verbosity_error()
    tf.logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning)  # deprecation notices from inside PEFT
    model = tf.AutoModelForSequenceClassification.from_pretrained(directory / "model", dtype=dtype,
                                                                  attn_implementation="sdpa").to(device)
    config = peft.LoraConfig(task_type="SEQ_CLS", r=LORA["r"], lora_alpha=LORA["alpha"],
                             lora_dropout=LORA["dropout"], target_modules=list(LORA["targets"]))
    model = peft.get_peft_model(model, config)
    return model, lambda b: model(input_ids=b["input_ids"], attention_mask=b["attention_mask"].clamp(max=1)).logits


def run_one(name: str, directory: Path, args) -> dict:
    """Train `name` in this process; its speed and peak memory."""
    torch.manual_seed(0)
    if args.threads:
        torch.set_num_threads(args.threads)
    spec = json.loads((directory / "examples.json").read_text())
    all_batches = batches(name, spec["examples"], spec["pad"], args)
    model, forward = build(name, directory, args.device)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4, weight_decay=1e-4)
    cuda = args.device == "cuda"
    tensors = [{k: v.to(args.device) for k, v in b.items() if k != "ids"} for b in all_batches]
    loaded_peak = peak_memory(cuda)
    reset_peak_memory(cuda)
    for i, batch in enumerate(tensors):
        if i == args.warmup:
            if cuda:
                torch.cuda.synchronize()
            start = time.perf_counter()
        with torch.autocast(args.device, torch.bfloat16, enabled=cuda):
            logits = forward(batch)
        F.cross_entropy(logits.float(), batch["labels"]).backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    timed = all_batches[args.warmup:]
    return {
        "examples": sum(len(b["labels"]) for b in timed), "seconds": seconds,
        "tokens": sum(int((b["attention_mask"] > 0).sum()) for b in timed),
        "slots": sum(b["input_ids"].numel() for b in timed),
        "peak_mib": max(loaded_peak, peak_memory(cuda)), "train_peak_mib": peak_memory(cuda),
    }


def peak_memory(cuda: bool) -> float:
    """MiB: the most GPU memory allocated, or the process's peak resident set (VmHWM), since the last reset."""
    if cuda:
        return torch.cuda.max_memory_allocated() / 2**20
    return int(re.search(r"VmHWM:\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1)) / 1024


def reset_peak_memory(cuda: bool):
    """From here on, the peak counts only what is in use now and what is allocated later."""
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    else:
        Path("/proc/self/clear_refs").write_text("5")  # Linux: reset VmHWM to the current resident set


def table(results: dict, params: int, non_embedding: int, args) -> str:
    """A row per configuration; ratios are against transformers + PEFT in random order."""
    cuda = args.device == "cuda"
    device = torch.cuda.get_device_name() if cuda else f"CPU, {args.threads or torch.get_num_threads()} threads"
    peak_flops = next((f for name, f in PEAK_BF16_FLOPS.items() if name in device), None)
    base = results.get(CONFIGS[0])

    def ratio(r, key):  # examples: per second
        if base is None:
            return "-"
        per = (r["seconds"], base["seconds"]) if key == "examples" else (1, 1)
        return f"{(r[key] / per[0]) / (base[key] / per[1]):.2f}x"
    lines = [f"{args.model or args.model_shape}: {params / 1e6:.1f}M parameters ({non_embedding / 1e6:.1f}M without "
             f"embeddings), "
             f"{device}, {'bf16 autocast' if cuda else 'float32'}, {args.batch_size} examples per step, "
             f"{args.steps} timed steps after {args.warmup}, fastest of {args.repeats} runs, torch {torch.__version__}",
             f"memory in MiB: peak {'GPU memory allocated' if cuda else 'resident set (RSS)'} of the whole process "
             f"(loading included), and from the first step on ('steps')",
             f"{'configuration':<29} {'examples/s':>10} {'tokens/s':>9} {'padding':>7} {'peak':>6} {'steps':>6} "
             f"{'MFU':>5} {'x examples/s':>12} {'x peak':>6} {'x steps':>7}"]
    for name in args.configs:
        if name not in results:
            lines.append(f"{name:<29} failed (its error is printed above)")
            continue
        r = results[name]
        speed, tokens = r["examples"] / r["seconds"], r["tokens"] / r["seconds"]
        mfu = f"{100 * 4 * non_embedding * tokens / peak_flops:4.1f}%" if peak_flops else "-"
        lines.append(f"{name:<29} {speed:>10.1f} {tokens:>9.0f} {100 * (1 - r['tokens'] / r['slots']):>6.1f}% "
                     f"{r['peak_mib']:>6.0f} {r['train_peak_mib']:>6.0f} {mfu:>5} {ratio(r, 'examples'):>12} "
                     f"{ratio(r, 'peak_mib'):>6} {ratio(r, 'train_peak_mib'):>7}")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m train.commands.benchmark", description=__doc__.split("\n")[0])
    parser.add_argument("--model-shape", choices=list(SHAPES), default="qwen3-tiny")
    parser.add_argument("--model", type=Path, help="a Hugging Face checkpoint directory (real weights and its own "
                        "tokenizer) instead of a random one of --model-shape")
    parser.add_argument("--steps", type=int, default=12, help="timed optimizer steps")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each configuration, round-robin; the "
                        "fastest counts (other processes on the machine only ever slow a run down)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=16, help="examples per step")
    parser.add_argument("--max-length", type=int, default=128, help="tokens per example, and per packed row")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--shared", type=Path, default=Path(__file__).resolve().parents[3] / "shared",
                        help="folder with data/qc_sample.jsonl and tokenizers/")
    parser.add_argument("--compile", action="store_true", help="also time 'ours, packed' with compiled blocks")
    parser.add_argument("--configs", nargs="+", choices=CONFIGS, help=argparse.SUPPRESS)
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)  # run one configuration, print JSON
    args = parser.parse_args(argv)
    args.configs = args.configs or CONFIGS[:5 if args.compile else 4]
    if args.warmup + args.steps > MEGABATCH:
        parser.error(f"warmup + steps must be at most {MEGABATCH} (one megabatch of batches)")
    if args.child:
        print(json.dumps(run_one(args.configs[0], args.child, args)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        params, non_embedding = prepare(args, Path(tmp))
        results = {}
        for name in [name for _ in range(args.repeats) for name in args.configs]:  # round-robin
            command = [sys.executable, "-m", "train.commands.benchmark", "--child", tmp, "--configs", name] + [
                f"--{k.replace('_', '-')}={getattr(args, k)}"
                for k in ("model_shape", "steps", "warmup", "batch_size", "max_length", "threads", "device")] + (
                ["--model", str(args.model)] if args.model else [])
            out = subprocess.run(command, stdout=subprocess.PIPE, text=True)  # its stderr shows as it runs
            if out.returncode:
                print(f"{name}: failed with exit status {out.returncode}", file=sys.stderr)
                continue
            result = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"{name}: {result['seconds']:.1f} s", file=sys.stderr)
            if name not in results or result["seconds"] < results[name]["seconds"]:
                results[name] = result
        print(table(results, params, non_embedding, args))
    if len(results) < len(args.configs):
        sys.exit(1)


if __name__ == "__main__":
    sys.exit(run_command(main, sys.argv[1:]))
