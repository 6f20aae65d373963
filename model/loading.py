"""Hugging Face checkpoints in, decoders out: hub resolution, config.json, and safetensors streamed tensor by tensor.

The model is built on the `meta` device and materialised once in the target dtype; each tensor is then read from
its memory-mapped safetensors file and copied into place, so a 12B checkpoint never needs two copies in memory.
On CPU, a tensor already in the target dtype is not copied at all: the parameter is a copy-on-write view of the
file's pages, read only when used (a 262k-row embedding costs only the rows looked up) and never written back.
Every damaged or malformed file (JSON, safetensors header, shard index) is a CheckpointError naming the file.
Written safetensors files respect the umask, as every other file does.
"""
import hashlib
import json
import os
from pathlib import Path

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer

from model.config import ModelConfig
from model.decoder import Decoder

# Where text-model tensors live in the checkpoints we read, and what we ignore.
TEXT_PREFIXES = ("model.language_model.", "language_model.model.", "model.")  # multimodal Gemma3 (new, old), text
IGNORED_PREFIXES = ("vision_tower.", "multi_modal_projector.", "model.vision_tower.", "model.multi_modal_projector.")
DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
          "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
          "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2}


class CheckpointError(ValueError):
    """A damaged or mismatched checkpoint file: the message names the file (and the tensor)."""


def read_json(path: Path, what: str = "JSON file"):
    """The parsed JSON of a checkpoint file; a missing or malformed file is an error naming it."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: {what} not found")
    try:
        return json.loads(path.read_bytes())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None


def load_tokenizer(path_or_id) -> Tokenizer:
    """The checkpoint's tokenizer.json; a missing or unreadable one is an error naming it."""
    path = resolve(path_or_id) / "tokenizer.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: tokenizer.json not found in the checkpoint directory")
    try:
        return Tokenizer.from_file(str(path))
    except Exception as e:  # the tokenizers library raises a bare Exception for a malformed file
        raise CheckpointError(f"{path}: not a readable tokenizer ({e})") from None


def file_hash(path: Path) -> str:
    """sha256 of a file's bytes, read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """Write a safetensors file with the permissions of any other file (safetensors itself writes mode 0600)."""
    save_file(tensors, path, metadata={"format": "pt"})
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


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
    raw = read_json(path, "config.json of the checkpoint")
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    try:
        return ModelConfig.from_hf(raw, source=str(path))
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(str(e) if str(path) in str(e) else f"{path}: {e}") from None


def safetensors_files(directory: Path) -> list[Path]:
    """The checkpoint's files: the shards listed by model.safetensors.index.json, or model.safetensors."""
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        raw = read_json(index)
        weight_map = raw.get("weight_map") if isinstance(raw, dict) else None
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise CheckpointError(f"{index}: no 'weight_map' of tensor name -> shard file name")
        names = sorted(set(weight_map.values()))
        for name in names:
            if Path(name).name != name or name in ("", ".", ".."):  # "../x" would read outside the checkpoint
                raise CheckpointError(f"{index}: shard {name!r} is not a file name inside the checkpoint directory")
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


def read_header(file: Path) -> tuple[int, dict]:
    """(data section start, {name: (dtype, shape, begin, end)}) of a safetensors file, checked against the file:
    offsets non-negative, in order, without gap or overlap, inside the data section and equal to shape x dtype."""
    size = file.stat().st_size
    with open(file, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        try:
            header = json.loads(f.read(n)) if 8 + n <= size else None
        except (UnicodeDecodeError, json.JSONDecodeError):
            header = None
    if not isinstance(header, dict):
        raise CheckpointError(f"{file}: not a safetensors file (unreadable header)")
    start, entries = 8 + n, {}
    for key, info in header.items():
        if key == "__metadata__":
            continue
        try:
            dtype, shape, (begin, end) = DTYPES.get(info["dtype"]), info["shape"], info["data_offsets"]
            if dtype is None:
                raise ValueError(f"unknown dtype {info['dtype']!r}")
            if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in [begin, end, *shape]):
                raise ValueError(f"offsets {[begin, end]} and shape {shape} must be non-negative integers")
            if end - begin != dtype.itemsize * torch.Size(shape).numel():
                raise ValueError(f"offsets {[begin, end]} hold {end - begin} bytes, shape {shape} of {info['dtype']} "
                                 f"needs {dtype.itemsize * torch.Size(shape).numel()}")
            if start + end > size:
                raise ValueError("it lies past the end of the file (truncated?)")
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"{file}: tensor {key!r} cannot be read: {e}") from None
        entries[key] = (dtype, shape, begin, end)
    position = 0
    for key, (_, _, begin, end) in sorted(entries.items(), key=lambda kv: kv[1][2:]):
        if begin != position:
            problem = "overlaps the tensor before it" if begin < position else "leaves a gap before it"
            raise CheckpointError(f"{file}: tensor {key!r} at offsets {[begin, end]} {problem}")
        position = end
    return start, entries


def mapped_tensors(file: Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file as views of a private (copy-on-write) memory map of it."""
    start, entries = read_header(file)
    size = file.stat().st_size
    data = torch.empty(0, dtype=torch.uint8).set_(torch.UntypedStorage.from_file(str(file), shared=False, nbytes=size))
    tensors = {}
    for key, (dtype, shape, begin, end) in entries.items():
        raw = data[start + begin: start + end]
        if raw.storage_offset() % dtype.itemsize:  # not aligned for a view: copy this one
            raw = raw.clone()
        tensors[key] = raw.view(dtype).view(shape)
    return tensors


@torch.no_grad()
def load_safetensors(module: torch.nn.Module, files: list[Path], strip: str = "model.", optional=(),
                     rename=canonical_name) -> set[str]:
    """Put every checkpoint tensor into `module`'s parameters, by `rename(key)` (None: ignored) minus `strip`: on CPU
    in the same dtype the parameter becomes a view of the file's memory map, otherwise it is copied (and cast).
    Returns the names of the parameters loaded.

    Fails, naming the tensor and file, on an unexpected tensor or a shape mismatch, and on a parameter the
    checkpoint lacks (except those in `optional`). A tied LM head stored in the checkpoint is skipped.
    """
    params = dict(module.named_parameters())
    loaded = set()
    for file in files:
        for key, tensor in mapped_tensors(file).items():
            name = rename(key)
            if name is None:
                continue
            name = name.removeprefix(strip)
            if name not in params:
                if name.endswith("lm_head.weight"):
                    continue  # tied to the embeddings
                raise CheckpointError(f"{file}: unexpected tensor {key!r} (no parameter {name!r} in the model)")
            param = params[name]
            if tensor.shape != param.shape:
                raise CheckpointError(f"{file}: tensor {key!r} has shape {tuple(tensor.shape)}, model expects "
                                 f"{tuple(param.shape)}")
            if param.device.type == "cpu" and param.dtype == tensor.dtype:
                param.data = tensor
            else:
                param.copy_(tensor)
            loaded.add(name)
    missing = sorted(set(params) - loaded - set(optional))
    if missing:
        raise CheckpointError(f"{files[0].parent}: checkpoint lacks {len(missing)} tensor(s), first {missing[0]!r}")
    return loaded


def load_pretrained(path_or_id, dtype=torch.float32, device="cpu") -> Decoder:
    """The decoder of a Hugging Face checkpoint (local directory or hub id), in `dtype` on `device`."""
    directory = resolve(path_or_id)
    config = read_config(directory)
    if config.encoder:
        raise CheckpointError(f"{directory}: a {config.model_type} encoder has no decoder to load: load it as a "
                              f"classifier (model.load_classifier)")
    files = safetensors_files(directory)
    with torch.device("meta"):
        model = Decoder(config).to(dtype)
    model.to_empty(device=device)
    load_safetensors(model, files)
    return model.eval()
