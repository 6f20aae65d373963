"""Exports. Merged: LoRA folded into the base weights, written as a Hugging Face checkpoint (config.json,
safetensors shards, model.safetensors.index.json) that transformers, load_pretrained and load_classifier all read.
PEFT: the trainable tensors in PEFT's format (adapter_model.safetensors + adapter_config.json)."""
import json
from pathlib import Path

import torch

from model.adapters import lora_settings, trainable_state
from model.classifier import EncoderClassifier, SequenceClassifier
from model.families import family
from model.loading import save_tensors
from model.lora import merged_tensors


def shards(tensors, max_bytes: int):
    """Group (name, tensor) pairs, in order, into dicts of at most max_bytes (a bigger tensor is alone)."""
    shard, size = {}, 0
    for name, tensor in tensors:
        nbytes = tensor.numel() * tensor.element_size()
        if shard and size + nbytes > max_bytes:
            yield shard
            shard, size = {}, 0
        shard[name], size = tensor, size + nbytes
    if shard:
        yield shard


@torch.no_grad()
def export_merged(module, directory, max_shard_bytes: int = 5 * 10**9, pad_token_id: int | None = None,
                  dtype: torch.dtype | None = None, labels=None) -> None:
    """Write `module` (a SequenceClassifier, an EncoderClassifier or a Decoder, with or without LoRA) as a Hugging
    Face checkpoint in `dtype` (default: the base model's), LoRA merged. The module is not modified; run it on one
    process (not FSDP-sharded). A classifier's labels (default LABEL_0, LABEL_1, ...) name its classes in id2label.
    An EncoderClassifier's names are already transformers' (`bert.`, `classifier.`).

    pad_token_id, if given, goes into config.json: transformers' *ForSequenceClassification needs one for batches
    and pools the last token that is not it (many base configs, Qwen2.5's among them, have none)."""
    classifier = isinstance(module, SequenceClassifier | EncoderClassifier)
    decoder = module.model if classifier else module
    dtype = dtype or next(decoder.parameters()).dtype  # the token embeddings
    config = {**decoder.config.hf, "architectures": [family(decoder.config.model_type).architectures[classifier]],
              "dtype": str(dtype).removeprefix("torch.")}
    config.pop("torch_dtype", None)
    if pad_token_id is not None:
        config["pad_token_id"] = pad_token_id
    if classifier:
        labels = labels or [f"LABEL_{i}" for i in range(module.num_labels)]
        config.update(id2label={str(i): label for i, label in enumerate(labels)},
                      label2id={label: i for i, label in enumerate(labels)})
    named = merged_tensors(module)
    if not classifier:  # a Decoder's keys are the HF *ForCausalLM keys without the leading "model."
        named = ((key if key.startswith("lm_head.") else f"model.{key}", t) for key, t in named)
    named = ((key, t.to(device="cpu", dtype=dtype).contiguous()) for key, t in named)

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    written, total = [], 0
    for i, shard in enumerate(shards(named, max_shard_bytes)):
        part = directory / f"part-{i:05d}.tmp"
        save_tensors(shard, part)
        written.append((part, list(shard)))
        total += sum(t.numel() * t.element_size() for t in shard.values())
    weight_map = {}
    for i, (part, keys) in enumerate(written, 1):
        name = f"model-{i:05d}-of-{len(written):05d}.safetensors"
        part.rename(directory / name)
        weight_map.update(dict.fromkeys(keys, name))
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    (directory / "config.json").write_text(json.dumps(config, indent=2) + "\n")


def peft_name(name: str) -> str:
    """Our parameter name as PEFT saves it: `x.lora_A` -> `base_model.model.x.lora_A.weight`."""
    suffix = ".weight" if name.endswith((".lora_A", ".lora_B")) else ""
    return f"base_model.model.{name}{suffix}"


def export_peft(classifier, directory, base_model_name_or_path: str) -> None:
    """Write a PEFT LoRA adapter (task SEQ_CLS, the head, `score` or `classifier`, in modules_to_save) loadable with
    PeftModel.from_pretrained(AutoModelForSequenceClassification.from_pretrained(base, num_labels=...), directory)."""
    lora = lora_settings(classifier)
    config = dict(peft_type="LORA", task_type="SEQ_CLS", base_model_name_or_path=str(base_model_name_or_path),
                  r=lora["r"], lora_alpha=lora["alpha"], lora_dropout=lora["dropout"], target_modules=lora["targets"],
                  modules_to_save=[classifier.head], bias="none", fan_in_fan_out=False, use_rslora=False,
                  use_dora=False, init_lora_weights=True, inference_mode=True)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {peft_name(name): t for name, t in trainable_state(classifier).items()}
    save_tensors(state, directory / "adapter_model.safetensors")
    (directory / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n")
