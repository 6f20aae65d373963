"""`./run.sh demo`: the whole method, offline, on the shipped demo dataset and a tiny model built here.

The model is a randomly initialised Qwen3-shaped decoder (2 layers, hidden 128) with a byte-level BPE tokenizer
trained on the demo files, written as a Hugging Face checkpoint by the project's own export. Then the recipe in
configs/demo.yaml runs: stage 1 on the other task's full data, stage 2 on the target task fold by fold, for both
tasks, then the fold-ensembled predictions and submit.zip. It ends with the validation curves of each final
stage's first fold (its metrics.txt), so the learning is visible without matplotlib.

    python -m train.commands.demo [key.sub=value ...]        # overrides of configs/demo.yaml, e.g. train.max_steps=5
    python -m train.commands.demo configs/demo-joint.yaml    # another demo config
"""
import json
import os
import sys
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from data.inputs import TEMPLATES
from data.records import read_rows
from model import Decoder, ModelConfig
from model.export import export_merged
from train.cli import Parser, run_command
from train.config import load_config, stage_folds
from train.main import main as train_main
from train.recipe import final_stages

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs" / "demo.yaml"
DEMO_DATA = ROOT / "configs" / "demo"
MODEL = dict(model_type="qwen3", hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, head_dim=32, rms_norm_eps=1e-6, rope_theta=10000.0, tie_word_embeddings=True,
             max_position_embeddings=512, initializer_range=0.02)


def build_tokenizer(texts, vocab_size: int = 800) -> Tokenizer:
    """Byte-level BPE trained on `texts`, with the Qwen template's special tokens."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    specials = sorted({TEMPLATES["qwen"].close, TEMPLATES["qwen"].pad})
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(texts, trainer)
    return tokenizer


def build_model(directory: Path) -> None:
    """A tiny random Qwen3-style checkpoint (config.json, safetensors, tokenizer.json) in `directory`."""
    texts = []
    for path in DEMO_DATA.glob("*.txt"):
        texts += [str(v) for _, row in read_rows(path) for k, v in row.items() if k not in ("id", "label")]
    texts += [row["translated_query"] for _, row in read_rows(DEMO_DATA / "translations.jsonl")]
    tokenizer = build_tokenizer(texts)
    pad = tokenizer.token_to_id(TEMPLATES["qwen"].pad)
    hf = {**MODEL, "vocab_size": tokenizer.get_vocab_size(), "pad_token_id": pad}
    torch.manual_seed(0)
    decoder = Decoder(ModelConfig.from_hf(hf))
    with torch.no_grad():
        for name, p in decoder.named_parameters():
            if not name.endswith("norm.weight"):
                p.normal_(0.0, hf["initializer_range"])
    export_merged(decoder, directory)
    tokenizer.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps({"pad_token": TEMPLATES["qwen"].pad}) + "\n")


def _main(argv) -> int:
    parser = Parser(prog="python -m train.commands.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("args", nargs="*", metavar="[CONFIG.yaml] key.sub=value",
                        help=f"a demo config (default {CONFIG.relative_to(ROOT)}), then overrides of it")
    args = parser.parse_args(argv).args
    config = CONFIG
    if args and args[0].endswith(".yaml"):
        config, args = (ROOT / args[0]).resolve(), args[1:]
    os.chdir(ROOT)  # the demo config's paths are relative to the repository
    model_dir = ROOT / "runs" / "demo" / "model"
    args = [str(config), f"model.path={model_dir}", *args]
    cfg = load_config(args[0], args[1:])
    if not (model_dir / "tokenizer.json").is_file():
        build_model(model_dir)
    status = train_main(args)
    if status == 0:
        for stage in {s.name: s for s in final_stages(cfg).values()}.values():
            first = stage_folds(stage)[0].name
            curves = Path(cfg.run_dir) / stage.name / first / "metrics.txt"
            print(f"\n{stage.name}, {first}: validation during training ({curves})")
            print(curves.read_text(), end="")
    return status


def main(argv=None) -> int:
    return run_command(_main, sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())
