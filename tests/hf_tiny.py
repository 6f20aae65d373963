"""Tiny random Hugging Face checkpoints of every family, built offline with transformers (a test-only reference)."""
import json
from pathlib import Path

import torch
import transformers as tf

from data.inputs import TEMPLATES, model_family

from fixtures import family_tokenizer

# Small shapes that still exercise each family: GQA ratio 2 (Gemma: 4), head_dim independent of hidden / heads,
# sliding windows shorter than the test sequences, linear RoPE scaling on Gemma3's global layers.
COMMON = dict(vocab_size=97, hidden_size=48, intermediate_size=80, num_attention_heads=4, num_key_value_heads=2,
              head_dim=16, max_position_embeddings=128, pad_token_id=0)
CONFIGS = {
    "qwen2": lambda: tf.Qwen2Config(**COMMON, num_hidden_layers=2, tie_word_embeddings=False, rope_theta=10000.0),
    "qwen3": lambda: tf.Qwen3Config(**COMMON, num_hidden_layers=2, tie_word_embeddings=True),
    "gemma": lambda: tf.GemmaConfig(**{**COMMON, "num_key_value_heads": 1}, num_hidden_layers=2),
    "gemma2": lambda: tf.Gemma2Config(**COMMON, num_hidden_layers=3, sliding_window=4, query_pre_attn_scalar=20,
                                      attn_logit_softcapping=5.0, final_logit_softcapping=3.0),
    "gemma3_text": lambda: tf.Gemma3TextConfig(
        **COMMON, num_hidden_layers=3, sliding_window=4, query_pre_attn_scalar=16,
        layer_types=["sliding_attention", "full_attention", "sliding_attention"],
        rope_parameters={"full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6},
                         "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}}),
}
FAMILIES = list(CONFIGS)
# The encoders: RoBERTa's real pad id (1, so positions start at 2), BERT's two token types.
ENCODER_COMMON = dict(vocab_size=97, hidden_size=48, intermediate_size=80, num_attention_heads=4, num_hidden_layers=2,
                      max_position_embeddings=40)
ENCODER_CONFIGS = {
    "bert": lambda: tf.BertConfig(**ENCODER_COMMON, type_vocab_size=2, pad_token_id=0),
    "roberta": lambda: tf.RobertaConfig(**ENCODER_COMMON, type_vocab_size=1, pad_token_id=1),
    "xlm-roberta": lambda: tf.XLMRobertaConfig(**ENCODER_COMMON, type_vocab_size=1, pad_token_id=1),
}
ENCODERS = list(ENCODER_CONFIGS)


def randomize(model: torch.nn.Module, seed: int = 0) -> None:
    """Random weights of a scale that makes every norm weight, bias and scale matter (HF init leaves norms at 1)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3)


def tiny_model(family: str, seed: int = 0, **config_values):
    """A random transformers *ForCausalLM of `family`, float32, eval mode; config_values replace the config's."""
    config = CONFIGS[family]()
    for key, value in config_values.items():
        setattr(config, key, value)
    model = tf.AutoModelForCausalLM.from_config(config, attn_implementation="eager").eval()
    randomize(model, seed)
    return model


def save_tiny(family: str, path, seed: int = 0, config_values=None, **save_kwargs):
    """Save a tiny random checkpoint to `path`; returns the transformers model."""
    model = tiny_model(family, seed, **(config_values or {}))
    model.save_pretrained(path, **save_kwargs)
    return model


def save_tiny_with_tokenizer(model_type: str, path) -> Path:
    """A tiny random checkpoint of `model_type` with a small BPE tokenizer of its family (fixtures.family_tokenizer)
    and a tokenizer_config.json such as the family's hub checkpoints have."""
    family = model_family(model_type)
    tokenizer = family_tokenizer(family)
    pad = tokenizer.token_to_id(TEMPLATES[family].pad)
    save_tiny(model_type, path, config_values=dict(vocab_size=tokenizer.get_vocab_size(), pad_token_id=pad))
    tokenizer.save(str(path / "tokenizer.json"))
    hub = {"gemma": {"tokenizer_class": "GemmaTokenizer", "add_bos_token": True, "bos_token": "<bos>"},
           "qwen": {"tokenizer_class": "Qwen2Tokenizer", "add_bos_token": False}}[family]
    (path / "tokenizer_config.json").write_text(json.dumps({**hub, "pad_token": TEMPLATES[family].pad}))
    return path


def tiny_encoder(family: str, path=None, seed: int = 0, num_labels: int = 2, **config_changes):
    """A random transformers *ForSequenceClassification encoder, float32, eval mode; saved to `path` if given."""
    config = ENCODER_CONFIGS[family]()
    config.num_labels = num_labels
    for key, value in config_changes.items():
        setattr(config, key, value)
    model = tf.AutoModelForSequenceClassification.from_config(config, attn_implementation="eager").eval()
    randomize(model, seed)
    if path is not None:
        model.save_pretrained(path)
    return model


def padded_batch(padding: str, length: int = 11, seed: int = 0, pad: int = 0):
    """Token ids (3, length) and a 0/1 mask: full rows ("none"), or rows of length, 7 and 3 real tokens padded
    on the "right" or "left"; padding positions hold id `pad` (the tiny models' pad_token_id), real ones never."""
    ids = torch.randint(1, 97, (3, length), generator=torch.Generator().manual_seed(seed))
    mask = torch.ones(3, length, dtype=torch.long)
    if padding != "none":
        for row, n in enumerate((length, 7, 3)):
            if padding == "right":
                mask[row, n:] = 0
            else:
                mask[row, : length - n] = 0
    ids[ids == pad] = pad + 1
    return torch.where(mask.bool(), ids, pad), mask
