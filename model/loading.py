"""Hugging Face checkpoints in, decoders out: hub resolution, config.json, and safetensors streamed tensor by tensor.

The model is built on the `meta` device and materialised once in the target dtype; each tensor is then read from
its memory-mapped safetensors file and copied into place, so a 12B checkpoint never needs two copies in memory.
On CPU, a tensor already in the target dtype is not copied at all: the parameter is a copy-on-write view of the
file's pages, read only when used (a 262k-row embedding costs only the rows looked up) and never written back.
"""
import json
import os
from pathlib import Path

import torch

from model.config import ModelConfig
from model.decoder import Decoder

# Where text-model tensors live in the checkpoints we read, and what we ignore.
TEXT_PREFIXES = ("model.language_model.", "language_model.model.", "model.")  # multimodal Gemma3 (new, old), text
IGNORED_PREFIXES = ("vision_tower.", "multi_modal_projector.", "model.vision_tower.", "model.multi_modal_projector.")
DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
          "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
          "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2}


def resolve(path_or_id: str | os.PathLike) -> Path:
    """A local checkpoint directory as is; otherwise a hub model id (honours HF_HUB_OFFLINE and the HF cache)."""
    if Path(path_or_id).is_dir():
        return Path(path_or_id)
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(str(path_or_id), allow_patterns=["*.json", "*.safetensors", "tokenizer*"]))
    except Exception as e:
        raise FileNotFoundError(f"{path_or_id!r} is neither a local directory nor a reachable hub model: {e}") from e


def read_config(directory: Path) -> ModelConfig:
    path = directory / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no config.json in the checkpoint directory")
    return ModelConfig.from_hf(json.loads(path.read_text()), source=str(path))


def safetensors_files(directory: Path) -> list[Path]:
    """The checkpoint's files: the shards listed by model.safetensors.index.json, or model.safetensors."""
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        for name in names:
            if not (directory / name).is_file():
                raise FileNotFoundError(f"{directory / name}: shard listed in {index} is missing")
        return [directory / name for name in names]
    single = directory / "model.safetensors"
    if not single.is_file():
        raise FileNotFoundError(f"{directory}: neither model.safetensors nor model.safetensors.index.json found")
    return [single]


def canonical_name(key: str) -> str | None:
    """A checkpoint key in text-model form ("model.layers.0...", "lm_head.weight"), or None for vision tensors."""
    if key.startswith(IGNORED_PREFIXES):
        return None
    for prefix in TEXT_PREFIXES:
        if key.startswith(prefix):
            return "model." + key[len(prefix):]
    return key.removeprefix("language_model.")


def mapped_tensors(file: Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file as views of a private (copy-on-write) memory map of it."""
    size = file.stat().st_size
    with open(file, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        try:
            header = json.loads(f.read(n)) if 8 + n <= size else None
        except (UnicodeDecodeError, json.JSONDecodeError):
            header = None
    if not isinstance(header, dict):
        raise ValueError(f"{file}: not a safetensors file (unreadable header)")
    data = torch.empty(0, dtype=torch.uint8).set_(torch.UntypedStorage.from_file(str(file), shared=False, nbytes=size))
    tensors = {}
    for key, info in header.items():
        if key == "__metadata__":
            continue
        try:
            (begin, end), dtype = info["data_offsets"], DTYPES.get(info["dtype"])
            if dtype is None:
                raise ValueError(f"unknown dtype {info['dtype']!r}")
            raw = data[8 + n + begin: 8 + n + end]
            if 8 + n + end > size:
                raise ValueError("it lies past the end of the file (truncated?)")
            if raw.storage_offset() % dtype.itemsize:  # not aligned for a view: copy this one
                raw = raw.clone()
            tensors[key] = raw.view(dtype).view(info["shape"])
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            raise ValueError(f"{file}: tensor {key!r} cannot be read: {e}") from None
    return tensors


@torch.no_grad()
def load_safetensors(module: torch.nn.Module, files: list[Path], strip: str = "model.", optional=()) -> None:
    """Put every checkpoint tensor into `module`'s parameters, by canonical name minus `strip`: on CPU in the same
    dtype the parameter becomes a view of the file's memory map, otherwise it is copied (and cast).

    Fails, naming the tensor and file, on an unexpected tensor or a shape mismatch, and on a parameter the
    checkpoint lacks (except those in `optional`). A tied LM head stored in the checkpoint is skipped.
    """
    params = dict(module.named_parameters())
    loaded = set()
    for file in files:
        for key, tensor in mapped_tensors(file).items():
            name = canonical_name(key)
            if name is None:
                continue
            name = name.removeprefix(strip)
            if name not in params:
                if name.endswith("lm_head.weight"):
                    continue  # tied to the embeddings
                raise KeyError(f"{file}: unexpected tensor {key!r} (no parameter {name!r} in the model)")
            param = params[name]
            if tensor.shape != param.shape:
                raise ValueError(f"{file}: tensor {key!r} has shape {tuple(tensor.shape)}, model expects "
                                 f"{tuple(param.shape)}")
            if param.device.type == "cpu" and param.dtype == tensor.dtype:
                param.data = tensor
            else:
                param.copy_(tensor)
            loaded.add(name)
    missing = sorted(set(params) - loaded - set(optional))
    if missing:
        raise KeyError(f"{files[0].parent}: checkpoint lacks {len(missing)} tensor(s), first {missing[0]!r}")


def load_pretrained(path_or_id, dtype=torch.float32, device="cpu") -> Decoder:
    """The decoder of a Hugging Face checkpoint (local directory or hub id), in `dtype` on `device`."""
    directory = resolve(path_or_id)
    config = read_config(directory)
    files = safetensors_files(directory)
    with torch.device("meta"):
        model = Decoder(config).to(dtype)
    model.to_empty(device=device)
    load_safetensors(model, files)
    return model.eval()
