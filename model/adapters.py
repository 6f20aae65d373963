"""Adapter checkpoints: the trainable tensors (LoRA A/B and the head) as safetensors plus a JSON description, and
the one builder of a classifier (base + LoRA + head) that training and prediction share."""
import json
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor

from model.classifier import EncoderClassifier, SequenceClassifier, load_classifier
from model.loading import CheckpointError, mapped_tensors, read_json, save_tensors
from model.lora import add_lora, lora_layers

WEIGHTS, META = "adapters.safetensors", "adapters.json"


def trainable_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Name -> full CPU tensor of every trainable parameter. FSDP2 shards are gathered: call on every rank."""
    state = {}
    for name, p in module.named_parameters():
        if p.requires_grad:
            full = p.full_tensor() if isinstance(p, DTensor) else p
            state[name] = full.detach().cpu().contiguous()
    return state


def lora_settings(module: torch.nn.Module) -> dict:
    """targets (in module order), r, alpha and dropout of the LoRA layers in `module`."""
    layers = lora_layers(module)
    if not layers:
        raise ValueError(f"{type(module).__name__} has no LoRA layers: call add_lora first")
    first = next(iter(layers.values()))
    targets = list(dict.fromkeys(name.rpartition(".")[2] for name in layers))
    return dict(targets=targets, r=first.lora_A.shape[0], alpha=first.alpha, dropout=first.dropout_p)


def save_adapters(classifier, directory, **meta) -> None:
    """Write adapters.safetensors (every trainable tensor) and adapters.json (model_type, num_labels, LoRA
    settings, and `meta`, e.g. base_model=<path or hub id>). Under FSDP2 call on every rank; rank 0 writes."""
    state = trainable_state(classifier)
    if dist.is_initialized() and dist.get_rank() != 0:
        return
    info = dict(model_type=classifier.model.config.model_type, num_labels=classifier.num_labels,
                **lora_settings(classifier), **meta)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_tensors(state, directory / WEIGHTS)
    (directory / META).write_text(json.dumps(info, indent=2) + "\n")


def read_adapters(directory) -> tuple[dict, dict[str, torch.Tensor]]:
    """(adapters.json, tensors of adapters.safetensors) of a directory; a damaged file is an error naming it."""
    path, info_path = Path(directory) / WEIGHTS, Path(directory) / META
    info = read_json(info_path, "adapters.json")
    for key in ("model_type", "num_labels", "targets", "r", "alpha"):
        if not isinstance(info, dict) or key not in info:
            raise CheckpointError(f"{info_path}: no {key!r} entry")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: adapter weights not found")
    return info, mapped_tensors(path)


@torch.no_grad()
def load_adapters(classifier, directory) -> dict:
    """Copy adapters.safetensors into the classifier's trainable parameters (call after add_lora, before
    sharding); returns adapters.json. Any missing, unexpected, mis-shaped or non-finite tensor is an error naming
    it."""
    info, tensors = read_adapters(directory)
    path, info_path = Path(directory) / WEIGHTS, Path(directory) / META
    model_type = classifier.model.config.model_type
    if info["model_type"] != model_type:
        raise CheckpointError(f"{info_path}: adapters for model_type {info['model_type']!r}, model is {model_type!r}")
    params = {name: p for name, p in classifier.named_parameters() if p.requires_grad}
    if missing := sorted(params.keys() - tensors.keys()):
        raise CheckpointError(f"{path}: no tensor {missing[0]!r} ({len(missing)} trainable parameters missing)")
    if unexpected := sorted(tensors.keys() - params.keys()):
        raise CheckpointError(f"{path}: unexpected tensor {unexpected[0]!r} (not a trainable parameter of the "
                              f"model; same LoRA targets?)")
    for name in sorted(tensors):
        shape, want = tuple(tensors[name].shape), tuple(params[name].shape)
        if shape != want:
            raise CheckpointError(f"{path}: tensor {name!r} has shape {shape}, the model expects {want}")
        if not torch.isfinite(tensors[name]).all():
            raise CheckpointError(f"{path}: tensor {name!r} holds NaN or infinite values")
    for name, tensor in tensors.items():
        params[name].copy_(tensor)
    return info



def build_classifier(base, r: int, alpha: float, dropout: float, targets, dtype=torch.float32, device="cpu",
                     num_labels: int = 2, adapters=None) -> SequenceClassifier | EncoderClassifier:
    """The pretrained decoder or encoder of `base` (frozen, in `dtype`) + LoRA on `targets` + a head (float32,
    trainable);
    with `adapters` (a save_adapters directory), their LoRA and head weights."""
    classifier = load_classifier(base, num_labels=num_labels, dtype=dtype, device=device)
    add_lora(classifier, r, alpha, dropout, tuple(targets))
    if adapters:
        load_adapters(classifier, adapters)
    return classifier
