"""Adapter checkpoints: the trainable tensors (LoRA A/B and the head) as safetensors plus a JSON description,
and the same tensors exported in PEFT's format (adapter_model.safetensors + adapter_config.json)."""
import json
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors import safe_open
from safetensors.torch import save_file
from torch.distributed.tensor import DTensor

from model.lora import lora_layers

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
    info = dict(model_type=classifier.model.config.model_type, num_labels=classifier.score.out_features,
                **lora_settings(classifier), **meta)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_file(state, directory / WEIGHTS, metadata={"format": "pt"})
    (directory / META).write_text(json.dumps(info, indent=2) + "\n")


@torch.no_grad()
def load_adapters(classifier, directory) -> dict:
    """Copy adapters.safetensors into the classifier's trainable parameters (call after add_lora, before
    sharding); returns adapters.json. Any missing, unexpected or mis-shaped tensor is an error naming it."""
    path, info_path = Path(directory) / WEIGHTS, Path(directory) / META
    info = json.loads(info_path.read_text())
    model_type = classifier.model.config.model_type
    if info["model_type"] != model_type:
        raise ValueError(f"{info_path}: adapters for model_type {info['model_type']!r}, model is {model_type!r}")
    params = {name: p for name, p in classifier.named_parameters() if p.requires_grad}
    with safe_open(path, framework="pt") as f:
        keys = set(f.keys())
        if missing := sorted(params.keys() - keys):
            raise KeyError(f"{path}: no tensor {missing[0]!r} ({len(missing)} trainable parameters missing)")
        if unexpected := sorted(keys - params.keys()):
            raise KeyError(f"{path}: unexpected tensor {unexpected[0]!r} (not a trainable parameter of the model; "
                           f"same LoRA targets?)")
        for name in sorted(keys):
            shape, want = tuple(f.get_slice(name).get_shape()), tuple(params[name].shape)
            if shape != want:
                raise ValueError(f"{path}: tensor {name!r} has shape {shape}, the model expects {want}")
        for name in keys:
            params[name].copy_(f.get_tensor(name))
    return info


def peft_name(name: str) -> str:
    """Our parameter name as PEFT saves it: `x.lora_A` -> `base_model.model.x.lora_A.weight`."""
    suffix = ".weight" if name.endswith((".lora_A", ".lora_B")) else ""
    return f"base_model.model.{name}{suffix}"


def export_peft(classifier, directory, base_model_name_or_path: str) -> None:
    """Write a PEFT LoRA adapter (task SEQ_CLS, `score` in modules_to_save) loadable with
    PeftModel.from_pretrained(AutoModelForSequenceClassification.from_pretrained(base, num_labels=...), directory)."""
    lora = lora_settings(classifier)
    config = dict(peft_type="LORA", task_type="SEQ_CLS", base_model_name_or_path=str(base_model_name_or_path),
                  r=lora["r"], lora_alpha=lora["alpha"], lora_dropout=lora["dropout"], target_modules=lora["targets"],
                  modules_to_save=["score"], bias="none", fan_in_fan_out=False, use_rslora=False, use_dora=False,
                  init_lora_weights=True, inference_mode=True)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {peft_name(name): t for name, t in trainable_state(classifier).items()}
    save_file(state, directory / "adapter_model.safetensors", metadata={"format": "pt"})
    (directory / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n")
