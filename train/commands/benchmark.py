"""Speed: this project against transformers + PEFT on the same model and examples, training and inference.

    python -m train.commands.benchmark [--model DIR | --model-shape qwen3-tiny] [--steps 40] [--repeats 2]
        [--batch-size 16] [--precisions float32 bf16] [--device cpu]

One model: a real Hugging Face checkpoint (--model, with its own tokenizer; a decoder or a BERT-style encoder) or
a random-weight one of a shape, saved once; 50 x batch-size random examples of the QC sample (one megabatch of
data.BatchSampler), max_length 128. Training configurations train LoRA (r 16, alpha 32, dropout 0.05, all
projections: a decoder's q/k/v/o/gate/up/down, an encoder's query/key/value/dense) and the head with AdamW,
clipping at 1.0, for `warmup` steps, then `steps` timed steps, all on the same examples in their warmup and in
their timed steps (an encoder has no packed configurations; its dropout is on in training on both sides):

    transformers + PEFT      AutoModelForSequenceClassification (SDPA) + get_peft_model; batches in random order
                             padded to their longest row (DataCollatorWithPadding, as HF Trainer does by default)
    transformers + PEFT, grouped   the same with length-grouped batches (Trainer's group_by_length)
    ours, padded             data.BatchSampler's length-grouped batches, collate_padded
    ours, packed             the same batches, collate_packed into rows of at most max_length tokens
    ours, packed, compiled   the same with each decoder block compiled (train.compile; with --compile only)
    ours, shared             data.share_prefix: the category path first, batches drawn from the whole sample as
                             the training sampler draws them (chunks of at most 8 examples of one path),
                             collate_shared computing each prefix once a batch

Inference configurations predict all the examples, sorted by length, in batches of --inference-batch-size (64),
under torch.inference_mode, once untimed (warm-up) and once timed, with the LoRA folded into the weights
(`merge_and_unload` for PEFT; for ours model.lora.merge_for_inference, as train/predict.py does):

    transformers + PEFT, inference     the PEFT model of the training configurations
    ours, inference                    model.adapters.build_classifier, as train/predict.py builds it
    ours, inference, shared            the same over whole groups of the sample (random paths, all their rows,
                                       as a test file holds them: as many examples), grouped as predict groups

Each configuration runs in each precision: float32, and bf16 autocast (LoRA and head weights stay float32, the
frozen projection weights are stored in bf16 on both sides, as autocast would cast them). On CUDA the base weights
are bf16 and only bf16 runs; on a CPU without native bf16 matrix products (AVX512-BF16 or
AMX) only float32 runs by default, as bf16 products crawl there (--precisions float32 bf16 times them anyway).
Each run is its own process, so that peak memory is its own, `repeats` times round-robin; each step's fastest
run counts (every run of a configuration does the same steps; other processes only ever slow one down).
Ratios are against transformers + PEFT in its faster precision: "x default" against its random-order batches,
"x best" against its fastest training configuration (for inference rows both are its inference).
Real tokens/s counts the non-pad tokens computed; "shared" is the examples' own tokens over those computed
(1.00x without shared prefixes). "of peak": model FLOPs (4 x non-embedding parameters x real tokens for
training: the forward and the input gradients of the backward, frozen weights get no weight gradients; 2 x for
inference; attention's own FLOPs left out) over the peak of the device in that precision: on CUDA the published
dense bf16 peak, on CPU the fastest of five (512 x hidden) x (hidden x intermediate) products the run measures.
"""
import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from data.batching import BatchSampler, Example, collate_packed, collate_padded, collate_shared, group_batches
from data.inputs import ENCODER_FAMILIES, encode, group_key, model_family, pad_token_id, token_types
from data.records import read_records
from model.families import family
from model.loading import read_config, read_json
from model.lora import DEFAULT_TARGETS, ENCODER_TARGETS
from train.cli import Parser, integer, run_command
from train.distributed import cpu_flags, native_bf16

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
@dataclass(frozen=True)
class Config:
    """One benchmarked configuration: whose model, how its batches are laid out, training or inference."""
    name: str
    side: Literal["transformers", "ours"]
    layout: Literal["random", "grouped", "sorted", "packed", "shared"]  # sorted: by length (inference)
    inference: bool = False
    compiled: bool = False


CONFIGS = {c.name: c for c in [
    Config("transformers + PEFT", "transformers", "random"),
    Config("transformers + PEFT, grouped", "transformers", "grouped"),
    Config("ours, padded", "ours", "grouped"),
    Config("ours, packed", "ours", "packed"),
    Config("ours, packed, compiled", "ours", "packed", compiled=True),
    Config("ours, shared", "ours", "shared"),
    Config("transformers + PEFT, inference", "transformers", "sorted", inference=True),
    Config("ours, inference", "ours", "sorted", inference=True),
    Config("ours, inference, shared", "ours", "shared", inference=True),
]}
PRECISIONS = ["float32", "bf16"]
MEGABATCH = 50  # steps whose examples data.BatchSampler sorts by length together (its default)
LORA = dict(r=16, alpha=32, dropout=0.05)
PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12}  # dense, per GPU


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
        fam, folder = model_family(shape["model_type"]), family(shape["model_type"]).tokenizer
        tokenizer_file = args.shared / "tokenizers" / folder / "tokenizer.json"
    sample = args.shared / "data" / "qc_sample.jsonl"
    for path in (sample, tokenizer_file):
        if not path.is_file():
            raise FileNotFoundError(f"{path}: not found (--shared names the folder with data/ and tokenizers/)")
    tokenizer = Tokenizer.from_file(str(tokenizer_file))
    records = read_records(sample)
    ids = encode(tokenizer, fam, records, args.max_length, translate=False)
    types = token_types(fam, ids)
    pad = pad_token_id(tokenizer, fam)
    order = np.random.default_rng(0).permutation(len(ids))[: MEGABATCH * args.batch_size]
    data = [[records[i].id, ids[i], records[i].label, None, types[i] if types else None] for i in order]
    shared = {"shared_train": [], "shared_inference": []} if fam in ENCODER_FAMILIES else \
        shared_examples(records, encode(tokenizer, fam, records, args.max_length, False, shared_first=True), len(order),
                        args)
    (directory / "examples.json").write_text(json.dumps({"pad": pad, "examples": data, **shared}))
    if args.model:
        (directory / "model").symlink_to(args.model.resolve())
        model = tf.AutoModelForSequenceClassification.from_pretrained(args.model, num_labels=2)
        non_embedding = sum(p.numel() for n, p in model.named_parameters() if "embed" not in n)
        return sum(p.numel() for p in model.parameters()), non_embedding
    torch.manual_seed(0)
    config = tf.AutoConfig.for_model(**shape, num_labels=2, pad_token_id=pad)
    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    with torch.device(args.device):
        model = tf.AutoModelForSequenceClassification.from_config(config, dtype=dtype)
    model.save_pretrained(directory / "model")
    non_embedding = sum(p.numel() for n, p in model.named_parameters() if "embed_tokens" not in n)
    return sum(p.numel() for p in model.parameters()), non_embedding


def shared_examples(records, ids, count: int, args) -> dict:
    """The shared configurations' examples, category path first: training batches as the shared-prefix sampler
    draws them from the whole sample; `count` inference examples of whole groups (random category paths)."""
    groups = [group_key(r, False, shared_first=True) for r in records]
    numbers = {g: n for n, g in enumerate(dict.fromkeys(groups))}
    rows = [[r.id, ids[i], r.label, groups[i]] for i, r in enumerate(records)]
    sampler = BatchSampler([len(x) for x in ids], args.batch_size, groups=[numbers[g] for g in groups])
    train = [[rows[i] for i in batch] for batch in list(sampler)[: args.warmup + args.steps]]
    members = {}
    for i, g in enumerate(groups):
        members.setdefault(g, []).append(i)
    inference = []
    for g in np.random.default_rng(0).permutation(list(members)):
        if len(inference) >= count:
            break
        inference += [rows[i] for i in members[g]]
    return {"shared_train": train, "shared_inference": inference}


def batches(config: Config, data: list, pad: int, args, shared: dict | None = None) -> list[dict]:
    """Training: `warmup` then `steps` batches of one training megabatch, length-grouped by data.BatchSampler as in
    training; the random-order configuration gets the same examples (warmup, then timed) shuffled into batches.
    Inference: every example, sorted by length, in batches of inference_batch_size. Shared: the examples and
    batches of shared_examples, grouped at inference as train/predict.py groups them."""
    if config.layout == "shared" and config.inference:
        rows = [Example(*e) for e in shared["shared_inference"]]
        return [collate_shared(part, pad) for part in group_batches(rows, args.inference_batch_size)]
    if config.layout == "shared":
        return [collate_shared([Example(*e) for e in batch], pad) for batch in shared["shared_train"]]
    rows = [Example(*e) for e in data]
    if config.inference:
        order = sorted(range(len(rows)), key=lambda i: len(rows[i].input_ids))
        size = args.inference_batch_size
        return [collate_padded([rows[i] for i in order[j:j + size]], pad) for j in range(0, len(order), size)]
    steps = list(BatchSampler([len(e.input_ids) for e in rows], args.batch_size, megabatch=MEGABATCH))
    steps = steps[: args.warmup + args.steps]
    if config.layout == "random":
        rng = np.random.default_rng(0)
        parts = (steps[: args.warmup], steps[args.warmup:])
        steps = [s for part in parts for s in np.array_split(rng.permutation(np.concatenate(part)), len(part))]
    if config.layout == "packed":
        return [collate_packed([rows[i] for i in s], pad, args.max_length) for s in steps]
    return [collate_padded([rows[i] for i in s], pad) for s in steps]


def build(config: Config, directory: Path, device: str, bf16: bool):
    """(model, forward(batch) -> logits) for a configuration, in train mode for training, eval for inference; for
    bf16 the frozen projection weights stored in bf16 on both sides (after merging), as training and prediction
    store them (model.lora.store_frozen)."""
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    inference = config.inference
    targets = ENCODER_TARGETS if read_config(directory / "model").encoder else DEFAULT_TARGETS
    inputs = ("input_ids", "attention_mask", "position_ids", "suffix_ids", "token_type_ids")
    if config.side == "ours":
        from model.adapters import build_classifier
        from model.lora import merge_for_inference, store_frozen

        model = build_classifier(directory / "model", LORA["r"], LORA["alpha"], 0.0 if inference else LORA["dropout"],
                                 targets, dtype, device)
        if inference:
            merge_for_inference(model)
        if bf16:
            store_frozen(model, torch.bfloat16)
        if config.compiled:
            for block in model.model.layers:
                block.compile()
        return model.train(not inference), lambda b: model(**{k: b[k] for k in inputs if k in b})
    import peft
    import transformers as tf

    tf.logging.set_verbosity_error()
    tf.logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning)  # deprecation notices from inside PEFT
    model = tf.AutoModelForSequenceClassification.from_pretrained(directory / "model", dtype=dtype,
                                                                  attn_implementation="sdpa").to(device)
    config = peft.LoraConfig(task_type="SEQ_CLS", r=LORA["r"], lora_alpha=LORA["alpha"],
                             lora_dropout=LORA["dropout"], target_modules=list(targets))
    model = peft.get_peft_model(model, config)
    if inference:
        model = model.merge_and_unload()
    for name, module in model.named_modules() if bf16 else ():  # the projections' frozen (or merged) weights
        if name.rpartition(".")[2] in (*targets, "base_layer") and isinstance(module, torch.nn.Linear):
            module.to(torch.bfloat16)
    return model.train(not inference), lambda b: model(input_ids=b["input_ids"],
                                                       attention_mask=b["attention_mask"].clamp(max=1),
                                                       **{k: b[k] for k in ("token_type_ids",) if k in b}).logits


def run_one(config: Config, precision: str, directory: Path, args) -> dict:
    """Run `config` in `precision` in this process; its speed, peak memory and the device's matrix-product peak."""
    torch.manual_seed(0)
    if args.threads:
        torch.set_num_threads(args.threads)
    spec = json.loads((directory / "examples.json").read_text())
    all_batches = batches(config, spec["examples"], spec["pad"], args, spec)
    own = {e[0]: len(e[1]) for e in spec["examples"] + spec["shared_inference"]} | \
        {e[0]: len(e[1]) for batch in spec["shared_train"] for e in batch}
    cuda, bf16 = args.device == "cuda", precision == "bf16"
    model, forward = build(config, directory, args.device, bf16)
    tensors = [{k: v.to(args.device) for k, v in b.items() if k != "ids"} for b in all_batches]
    loaded_peak = peak_memory(cuda)
    reset_peak_memory(cuda)
    step_seconds = []
    if config.inference:
        timed = all_batches
        with torch.inference_mode(), torch.autocast(args.device, torch.bfloat16, enabled=bf16):
            for i, batch in enumerate(tensors + tensors):  # all once to warm up, then all timed
                start = now(cuda)
                forward(batch)
                step_seconds.append(now(cuda) - start)
        step_seconds = step_seconds[len(tensors):]
    else:
        timed = all_batches[args.warmup:]
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=1e-4, weight_decay=1e-4)
        for batch in tensors:
            start = now(cuda)
            with torch.autocast(args.device, torch.bfloat16, enabled=bf16):
                logits = forward(batch)
            F.cross_entropy(logits.float(), batch["labels"]).backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step_seconds.append(now(cuda) - start)
        step_seconds = step_seconds[args.warmup:]
    shape = read_config(directory / "model")
    return {
        "examples": sum(len(b["labels"]) for b in timed), "step_seconds": step_seconds,
        "tokens": sum(int((b["attention_mask"] > 0).sum()) for b in timed),
        "own_tokens": sum(own[i] for b in timed for i in b["ids"]),
        "slots": sum(b["input_ids"].numel() for b in timed),
        "peak_mib": max(loaded_peak, peak_memory(cuda)), "train_peak_mib": peak_memory(cuda),
        "peak_flops": peak_flops(args.device, bf16, shape.hidden_size, shape.intermediate_size),
    }


def fastest_steps(best: dict | None, result: dict) -> dict:
    """`result` with each step's time the fastest of its runs so far (`best`, None before the first): a step does
    the same work in every run, and other processes only ever slow it down; `seconds` is their sum."""
    steps = result["step_seconds"] if best is None else list(map(min, best["step_seconds"], result["step_seconds"]))
    return {**result, "step_seconds": steps, "seconds": sum(steps)}


def now(cuda: bool) -> float:
    if cuda:
        torch.cuda.synchronize()
    return time.perf_counter()


def peak_flops(device: str, bf16: bool, hidden: int, intermediate: int) -> float | None:
    """FLOP/s: on CUDA the published dense bf16 peak of the GPU (None if unknown); on CPU the fastest of five
    (512 x hidden) x (hidden x intermediate) products in the precision, on this process's threads."""
    if device == "cuda":
        name = torch.cuda.get_device_name()
        return next((f for gpu, f in PEAK_BF16_FLOPS.items() if gpu in name), None)
    dtype = torch.bfloat16 if bf16 else torch.float32
    x, w = torch.randn(512, hidden, dtype=dtype), torch.randn(intermediate, hidden, dtype=dtype)
    times = []
    for _ in range(6):
        start = time.perf_counter()
        F.linear(x, w)
        times.append(time.perf_counter() - start)
    return 2 * 512 * hidden * intermediate / min(times[1:])


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


def cpu_name() -> str:
    """The CPU's model, torch's kernel capability and its bf16 flags: what decides a precision's speed."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    model = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "CPU")
    bf16 = sorted({"avx512_bf16", "amx_bf16"} & cpu_flags()) or ["no bf16 flags"]
    return f"{model} ({torch.backends.cpu.get_cpu_capability()}, {' '.join(bf16)})"


def table(results: dict, params: int, non_embedding: int, args) -> str:
    """A row per configuration and precision; ratios against transformers + PEFT in its faster precision."""
    cuda = args.device == "cuda"
    threads = args.threads or torch.get_num_threads()
    device = torch.cuda.get_device_name() if cuda else f"{cpu_name()}, {threads} threads"

    def speed(r):
        return r["examples"] / r["seconds"]

    def fastest(inference: bool, layouts):  # transformers + PEFT's fastest such run, in either precision
        return max((speed(r) for (n, _), r in results.items() if CONFIGS[n].side == "transformers"
                    and CONFIGS[n].inference == inference and CONFIGS[n].layout in layouts), default=None)
    inference_ref = fastest(True, ["sorted"])
    references = {False: (fastest(False, ["random"]), fastest(False, ["random", "grouped"])),
                  True: (inference_ref, inference_ref)}  # x default, x best
    lines = [f"{args.model or args.model_shape}: {params / 1e6:.1f}M parameters ({non_embedding / 1e6:.1f}M without "
             f"embeddings), {device}, {'bf16 weights, ' if cuda else ''}training {args.batch_size} examples per "
             f"step, {args.steps} timed steps after {args.warmup}; inference in batches of "
             f"{args.inference_batch_size}; each step the fastest of {args.repeats} runs, torch {torch.__version__}",
             f"memory in MiB: peak {'GPU memory allocated' if cuda else 'resident set (RSS)'} of the whole process "
             f"(loading included), and from the first step on ('steps')",
             f"{'configuration':<31} {'precision':<9} {'examples/s':>10} {'tokens/s':>9} {'padding':>7} {'shared':>6} "
             f"{'peak':>6} {'steps':>6} {'of peak':>7} {'x default':>9} {'x best':>6}"]
    if args.skipped_bf16:
        lines.insert(1, "bf16 not run: this CPU has no native bf16 matrix products (AVX512-BF16 or AMX), where they "
                        "crawl; --precisions float32 bf16 times them anyway")
    for name in args.configs:
        for precision in args.precisions:
            if (name, precision) not in results:
                lines.append(f"{name:<31} {precision:<9} failed (its error is printed above)")
                continue
            r = results[(name, precision)]
            tokens, inference = r["tokens"] / r["seconds"], CONFIGS[name].inference
            flops = (2 if inference else 4) * non_embedding * tokens
            of_peak = f"{100 * flops / r['peak_flops']:6.1f}%" if r["peak_flops"] else "-"
            ratios = [f"{speed(r) / ref:.2f}x" if ref else "-" for ref in references[inference]]  # default, best
            lines.append(f"{name:<31} {precision:<9} {speed(r):>10.1f} {tokens:>9.0f} "
                         f"{100 * (1 - r['tokens'] / r['slots']):>6.1f}% {r['own_tokens'] / r['tokens']:>5.2f}x "
                         f"{r['peak_mib']:>6.0f} "
                         f"{r['train_peak_mib']:>6.0f} {of_peak:>7} {ratios[0]:>9} {ratios[1]:>6}")
    return "\n".join(lines)


def _main(argv) -> None:
    parser = Parser(prog="python -m train.commands.benchmark", description=__doc__.split("\n")[0])
    parser.add_argument("--model-shape", choices=list(SHAPES), default="qwen3-tiny")
    parser.add_argument("--model", type=Path, help="a Hugging Face checkpoint directory (real weights and its own "
                        "tokenizer) instead of a random one of --model-shape")
    parser.add_argument("--steps", type=integer(1), default=40, help="timed optimizer steps")
    parser.add_argument("--repeats", type=integer(1), default=2, help="runs of each configuration, round-robin; "
                        "each step's fastest counts (other processes on the machine only ever slow a step down)")
    parser.add_argument("--warmup", type=integer(0), default=4)
    parser.add_argument("--batch-size", type=integer(1), default=16, help="examples per training step")
    parser.add_argument("--inference-batch-size", type=integer(1), default=64, help="examples per inference batch")
    parser.add_argument("--max-length", type=integer(8), default=128, help="tokens per example, and per packed row")
    parser.add_argument("--threads", type=integer(0), default=0, help="CPU threads (0: torch's default)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precisions", nargs="+", choices=PRECISIONS, help="default: bf16 on CUDA; float32 and "
                        "bf16 on a CPU with native bf16 products, float32 alone on others")
    parser.add_argument("--shared", type=Path, default=Path(__file__).resolve().parents[3] / "shared",
                        help="folder with data/qc_sample.jsonl and tokenizers/")
    parser.add_argument("--compile", action="store_true", help="also time 'ours, packed' with compiled blocks")
    parser.add_argument("--configs", nargs="+", choices=CONFIGS, help="default: all but the compiled one")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)  # run one configuration, print JSON
    args = parser.parse_args(argv)
    encoder = args.model is not None and read_config(args.model).encoder
    args.configs = args.configs or [name for name, c in CONFIGS.items() if (args.compile or not c.compiled)
                                    and not (encoder and c.layout in ("packed", "shared"))]
    native = native_bf16()
    args.skipped_bf16 = args.precisions is None and args.device == "cpu" and not native
    args.precisions = args.precisions or (["bf16"] if args.device == "cuda" else PRECISIONS[: 1 + native])
    if args.warmup + args.steps > MEGABATCH:
        parser.error(f"warmup + steps must be at most {MEGABATCH} (one megabatch of batches)")
    if args.child:  # the parent's flags, then the one configuration and precision it was started for
        config, precision = CONFIGS[args.configs[0]], args.precisions[0]
        args = argparse.Namespace(**json.loads((args.child / "args.json").read_text()))
        args.model, args.shared = (args.model and Path(args.model)), Path(args.shared)
        print(json.dumps(run_one(config, precision, Path(args.child), args)))
        return
    runs = [(name, precision) for name in args.configs for precision in args.precisions]
    with tempfile.TemporaryDirectory() as tmp:
        params, non_embedding = prepare(args, Path(tmp))
        (Path(tmp) / "args.json").write_text(json.dumps({**vars(args), "child": tmp}, default=str))
        results = {}
        for name, precision in [run for _ in range(args.repeats) for run in runs]:  # round-robin
            command = [sys.executable, "-m", "train.commands.benchmark", "--child", tmp, "--configs", name,
                       "--precisions", precision]
            out = subprocess.run(command, stdout=subprocess.PIPE, text=True)  # its stderr shows as it runs
            if out.returncode:
                print(f"{name} ({precision}): failed with exit status {out.returncode}", file=sys.stderr)
                continue
            result = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"{name} ({precision}): {sum(result['step_seconds']):.1f} s", file=sys.stderr)
            results[(name, precision)] = fastest_steps(results.get((name, precision)), result)
        print(table(results, params, non_embedding, args))
    if len(results) < len(runs):
        sys.exit(1)


def main(argv=None) -> int:
    return run_command(_main, sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())
