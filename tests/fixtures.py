"""Shared test helpers: the device, a free port, random trainable weights, word-level and small BPE tokenizers,
tiny training runs (a random Qwen3-style checkpoint, labelled QC files, a config over them), and plain SGD for
comparing runs."""
import json
import random
import socket
from pathlib import Path

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import WhitespaceSplit

from data.inputs import ENCODER_FAMILIES, QUESTIONS, TEMPLATES
from model import Decoder, ModelConfig
from train.config import RunConfig

TOPICS = {"shoes": ["sneaker", "boot", "sandal"], "phones": ["iphone", "android", "charger"],
          "kitchen": ["pan", "knife", "kettle"], "toys": ["lego", "doll", "puzzle"]}
WORDS = ["cheap", "red", "new", "kids", "men", "women", "best", "mini"]
HF_CONFIG = dict(model_type="qwen3", vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, head_dim=8, rms_norm_eps=1e-6,
                 tie_word_embeddings=True, rope_theta=10000.0)


DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # where the GPU-or-CPU tests run


def free_port() -> int:
    """A TCP port nobody listens on, for a torch.distributed rendezvous."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def randomize_trainable(module, seed: int = 0, std: float = 0.1) -> None:
    """Random values in every trainable parameter (LoRA B and the head start at zero or small)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=gen).to(p) * std)


def word_tokenizer(words, unk: str = "[UNK]", pre_tokenizer=None) -> Tokenizer:
    """One token per word of `words` (ids in order), split on whitespace unless told otherwise."""
    tokenizer = Tokenizer(WordLevel({w: i for i, w in enumerate(dict.fromkeys(words))}, unk_token=unk))
    tokenizer.pre_tokenizer = pre_tokenizer or WhitespaceSplit()
    return tokenizer


def family_tokenizer(family: str, vocab_size: int = 400) -> Tokenizer:
    """A small BPE tokenizer of the test words and the question template, with the family's special tokens:
    byte-level as Qwen's, or SentencePiece-style (spaces as "▁", unknown characters <unk>) as Gemma's."""
    tpl = TEMPLATES[family]
    specials = [t for t in (tpl.pad, tpl.close, tpl.bos) if t] + (["<unk>"] if family == "gemma" else [])
    if family == "qwen":
        tokenizer = Tokenizer(models.BPE())
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = decoders.ByteLevel()
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    else:
        tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
        tokenizer.normalizer = normalizers.Replace(" ", "▁")
        tokenizer.decoder = decoders.Replace("▁", " ")
        alphabet = []
    texts = [" ".join(WORDS), " ".join(TOPICS), *(" ".join(ws) for ws in TOPICS.values()), *QUESTIONS["QC"],
             *QUESTIONS["QI"], "- , \n"]
    tokenizer.train_from_iterator(texts * 3, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                                                 initial_alphabet=alphabet))
    return tokenizer


def make_checkpoint(directory: Path) -> Path:
    """A random tiny Qwen3 checkpoint in Hugging Face layout, with a word-level tokenizer.json."""
    directory.mkdir(parents=True, exist_ok=True)
    specials = sorted({t for name, tpl in TEMPLATES.items() if name not in ENCODER_FAMILIES
                       for t in (tpl.bos, tpl.close, tpl.pad) if t})
    vocab = [*specials, "[UNK]", "-", "no", "yes", *WORDS, *TOPICS, *(w for ws in TOPICS.values() for w in ws)]
    word_tokenizer(vocab).save(str(directory / "tokenizer.json"))
    torch.manual_seed(0)
    decoder = Decoder(ModelConfig.from_hf(HF_CONFIG))
    save_file({f"model.{k}": v.contiguous() for k, v in decoder.state_dict().items()}, directory / "model.safetensors")
    (directory / "config.json").write_text(json.dumps(HF_CONFIG))
    return directory


def make_encoder_checkpoint(directory: Path, family: str = "bert", **config_changes) -> Path:
    """A random tiny BERT-style checkpoint (transformers' bare encoder, no head; config.json fields changed as
    given) with a word-level tokenizer.json that has the encoder templates' special tokens."""
    from hf_tiny import tiny_encoder

    specials = sorted({t for name in ENCODER_FAMILIES for tpl in [TEMPLATES[name]] for t in (tpl.bos, tpl.close,
                                                                                             tpl.pad)})
    vocab = [*specials, "[UNK]", "-", *WORDS, *TOPICS, *(w for ws in TOPICS.values() for w in ws)]
    directory.mkdir(parents=True, exist_ok=True)
    word_tokenizer(vocab).save(str(directory / "tokenizer.json"))
    tiny_encoder(family, **config_changes).base_model.save_pretrained(directory)
    return directory


def make_records(path: Path, n: int, seed: int) -> Path:
    """n QC rows in the competition's JSON-lines schema; relevant when the query names the category's topic."""
    rng = random.Random(seed)
    with path.open("w") as f:
        for i in range(n):
            topic, other = rng.sample(list(TOPICS), 2)
            label = rng.random() < 0.6
            item = rng.choice(TOPICS[topic if label else other])
            query = " ".join(rng.sample(WORDS, rng.randint(0, 3)) + [item])
            row = dict(id=f"{path.stem}-{i}", task="QC", language=rng.choice(["en", "fr"]), origin_query=query,
                       category_path=f"{topic},{rng.choice(WORDS)}", label=int(label))
            f.write(json.dumps(row) + "\n")
    return path


def tiny_config(tmp: Path, run_dir: str = "run", model: Path | None = None, **train) -> RunConfig:
    """A float32, dropout-free config over the data and the tiny checkpoint (or `model`), made once per directory."""
    if model is None and not (tmp / "model").exists():
        make_checkpoint(tmp / "model")
    model = model or tmp / "model"
    if not (tmp / "train.jsonl").exists():
        make_records(tmp / "train.jsonl", 32, seed=1)
        make_records(tmp / "valid.jsonl", 12, seed=2)
    cfg = RunConfig(run_dir=str(tmp / run_dir))
    cfg.model.path, cfg.model.dtype = str(model), "float32"
    cfg.lora.r, cfg.lora.alpha, cfg.lora.dropout = 4, 8, 0.0
    cfg.data.train, cfg.data.valid, cfg.data.max_length = [str(tmp / "train.jsonl")], str(tmp / "valid.jsonl"), 16
    settings = dict(lr=1e-2, warmup_ratio=0.0, epochs=1, batch_size=8, grad_accum=1, bf16=False, keep_last=10,
                    seed=0, eval_batch_size=4)
    for key, value in {**settings, **train}.items():
        setattr(cfg.train, key, value)
    return cfg


def make_qi_records(path: Path, n: int, seed: int) -> Path:
    """n QI rows numbered like the QC file's (ids overlap, as the competition's do); relevant when the title
    names the query's item."""
    rng = random.Random(seed)
    items = [w for ws in TOPICS.values() for w in ws]
    with path.open("w") as f:
        for i in range(n):
            item, other = rng.sample(items, 2)
            label = rng.random() < 0.5
            row = dict(id=f"train-{i}", task="QI", language=rng.choice(["en", "fr"]),
                       origin_query=f"{rng.choice(WORDS)} {item}",
                       item_title=f"{rng.choice(WORDS)} {item if label else other}", label=int(label))
            f.write(json.dumps(row) + "\n")
    return path


# Comparing the weights of two runs that differ only in the order of their float32 sums (micro-batches, packing,
# ranks, compiled kernels): the comparison must not depend on the CPU's summation order (SIMD width, oneDNN
# blocking, thread split), which differs between hosts. After AdamW steps it does: AdamW divides each gradient
# entry by its running RMS, so a near-zero entry that rounds another way becomes a step of about +-lr either way,
# whatever the code (4 steps at lr 1e-2 differed by 2.2e-5 on an Intel AVX512 host). SGD with momentum 0.5 is
# linear in the gradients and carries a rounding difference dg at most 1 / (1 - 0.5) = 2 times per step:
# |dw| <~ 2 * steps * lr * |dg|. Gradients are clipped to norm <= 1 (every entry <= 1) and summed over at most a
# few hundred float32 terms, so |dg| <~ 100 * 2**-24 = 6e-6 at worst, and at SGD_LR and 4 steps |dw| <~ 2.4e-5 at
# worst; measured (2026-12-01, AMD EPYC, native AVX512 and ATEN_CPU_CAPABILITY=default / avx2) it is <= 1.1e-7.
# A bug (a micro-batch or rank weighted wrong, dropped or doubled) changes g by a share of itself and moves the
# weights by ~ lr * |g|, 1e-3 and more here (lora_B moves 0.027 in 4 steps). SGD_ATOL sits between the two.
SGD_LR, SGD_ATOL = 0.5, 1e-5


def sgd(params, lr, weight_decay):
    """torch.optim.AdamW's stand-in in runs that are compared with each other (see above)."""
    return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay, momentum=0.5)
