"""Loading checkpoints: sharded files, multimodal Gemma3, hub ids offline, and clear errors on mismatches."""
import json
import os

import huggingface_hub.constants
import pytest
import torch
import transformers as tf
from safetensors.torch import load_file, save_file

from model import load_pretrained
from model.loading import CheckpointError, load_tokenizer, save_tensors

from hf_tiny import CONFIGS, randomize, save_tiny

IDS = torch.tensor([[5, 17, 3, 88, 42, 9, 61]])


@pytest.fixture(scope="module")
def qwen3_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("qwen3")
    save_tiny("qwen3", path)
    return path


def copy_checkpoint(src, dst, edit=lambda tensors: None):
    """A copy of a single-file checkpoint whose tensors went through `edit`."""
    tensors = load_file(src / "model.safetensors")
    edit(tensors)
    dst.mkdir()
    save_file(tensors, dst / "model.safetensors")
    (dst / "config.json").write_text((src / "config.json").read_text())
    return dst


@torch.no_grad()
def test_sharded_checkpoint_loads_like_transformers(tmp_path):
    hf = save_tiny("qwen2", tmp_path, max_shard_size="20KB")
    assert len(json.loads((tmp_path / "model.safetensors.index.json").read_text())["weight_map"]) > 2
    assert len(list(tmp_path.glob("model-*.safetensors"))) > 2
    ours = load_pretrained(tmp_path)
    assert (ours.lm_logits(ours(IDS)) - hf(IDS).logits).abs().max() < 1e-4


def test_loads_in_bfloat16(qwen3_dir):
    ours = load_pretrained(qwen3_dir, dtype=torch.bfloat16)
    assert {p.dtype for p in ours.parameters()} == {torch.bfloat16}


@torch.no_grad()
def test_same_dtype_on_cpu_maps_the_file_and_never_writes_it(qwen3_dir, tmp_path):
    """float32 on CPU: parameters are views of the file (no copy); writing to one leaves the file as it was."""
    path = copy_checkpoint(qwen3_dir, tmp_path / "copy")
    before = (path / "model.safetensors").read_bytes()
    ours = load_pretrained(path)
    weight = ours.embed_tokens.weight
    assert weight.untyped_storage().nbytes() == len(before)  # the storage is the whole mapped file
    want = ours.lm_logits(ours(IDS))
    weight.mul_(2.0)
    assert (path / "model.safetensors").read_bytes() == before
    assert torch.equal(load_pretrained(path).lm_logits(load_pretrained(path)(IDS)), want)
    assert load_pretrained(path, dtype=torch.bfloat16).embed_tokens.weight.untyped_storage().nbytes() < len(before)


def test_truncated_file_is_named(qwen3_dir, tmp_path):
    path = copy_checkpoint(qwen3_dir, tmp_path / "cut")
    data = (path / "model.safetensors").read_bytes()
    (path / "model.safetensors").write_bytes(data[:-100])
    with pytest.raises(ValueError, match=r"cut/model.safetensors: tensor .* cannot be read: it lies past the end"):
        load_pretrained(path)
    (path / "model.safetensors").write_bytes(b"\x10" + bytes(7) + b"not json at all!")
    with pytest.raises(ValueError, match=r"cut/model.safetensors: not a safetensors file"):
        load_pretrained(path)


def tiny_gemma3_multimodal():
    vision = tf.SiglipVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                                   image_size=28, patch_size=14)
    config = tf.Gemma3Config(text_config=CONFIGS["gemma3_text"]().to_dict(), vision_config=vision.to_dict(),
                             mm_tokens_per_image=4)
    model = tf.Gemma3ForConditionalGeneration(config).eval()
    randomize(model)
    return model


@pytest.mark.parametrize("layout", ["language_model.model.", "model.language_model."])
@torch.no_grad()
def test_multimodal_gemma3_loads_its_text_model(tmp_path, layout):
    """Both the original layout (language_model.model.*) and transformers 5's (model.language_model.*)."""
    hf = tiny_gemma3_multimodal()
    hf.save_pretrained(tmp_path / "saved")

    def relayout(tensors):
        for key in [k for k in tensors if k.startswith("language_model.model.")]:
            tensors[layout + key.removeprefix("language_model.model.")] = tensors.pop(key)

    path = copy_checkpoint(tmp_path / "saved", tmp_path / "relaid", relayout)
    assert any(k.startswith("vision_tower.") for k in load_file(path / "model.safetensors"))
    ours = load_pretrained(path)
    reference = hf.model.language_model(IDS).last_hidden_state
    assert (ours(IDS) - reference).abs().max() < 1e-4


def test_hub_id_resolves_from_the_cache_offline(qwen3_dir, tmp_path, monkeypatch):
    snapshot = tmp_path / "models--tiny--qwen3" / "snapshots" / "0123abc"
    snapshot.mkdir(parents=True)
    for name in ("config.json", "model.safetensors"):
        (snapshot / name).write_bytes((qwen3_dir / name).read_bytes())
    (tmp_path / "models--tiny--qwen3" / "refs").mkdir()
    (tmp_path / "models--tiny--qwen3" / "refs" / "main").write_text("0123abc")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    ours, local = load_pretrained("tiny/qwen3"), load_pretrained(qwen3_dir)
    assert torch.equal(ours(IDS), local(IDS))
    with pytest.raises(FileNotFoundError, match="'tiny/absent'"):
        load_pretrained("tiny/absent")


def drop_norm(tensors):
    del tensors["model.layers.1.input_layernorm.weight"]


def add_extra(tensors):
    tensors["model.layers.0.self_attn.extra.weight"] = torch.zeros(2)


def reshape_q(tensors):
    tensors["model.layers.0.self_attn.q_proj.weight"] = torch.zeros(3, 48)


@pytest.mark.parametrize("edit, error, message", [
    (drop_norm, CheckpointError, r"lacks 1 tensor\(s\), first 'layers.1.input_layernorm.weight'"),
    (add_extra, CheckpointError, r"model.safetensors: unexpected tensor 'model.layers.0.self_attn.extra.weight'"),
    (reshape_q, CheckpointError, r"tensor 'model.layers.0.self_attn.q_proj.weight' has shape \(3, 48\)"),
])
def test_mismatched_checkpoint_names_the_tensor(qwen3_dir, tmp_path, edit, error, message):
    path = copy_checkpoint(qwen3_dir, tmp_path / "bad", edit)
    with pytest.raises(error, match=message):
        load_pretrained(path)


def test_unknown_model_type_names_the_file(qwen3_dir, tmp_path):
    path = copy_checkpoint(qwen3_dir, tmp_path / "llama")
    (path / "config.json").write_text(json.dumps({**json.loads((path / "config.json").read_text()),
                                                  "model_type": "llama"}))
    with pytest.raises(CheckpointError, match=r"llama/config.json: unknown model_type 'llama'"):
        load_pretrained(path)


def test_missing_shard_is_named(tmp_path):
    save_tiny("qwen3", tmp_path, max_shard_size="20KB")
    shard = sorted(tmp_path.glob("model-*.safetensors"))[1]
    shard.unlink()
    with pytest.raises(FileNotFoundError, match=shard.name):
        load_pretrained(tmp_path)


def rewrite_header(path, edit):
    """Rewrite a safetensors file's JSON header through `edit(header)`, keeping the data bytes."""
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    edit(header)
    text = json.dumps(header).encode()
    path.write_bytes(len(text).to_bytes(8, "little") + text + raw[8 + n:])


def first_two(header):
    names = sorted((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"])
    return header[names[0]], header[names[1]]


def negative(header):
    first_two(header)[1]["data_offsets"] = [-256, 0]


def overlapping(header):
    a, b = first_two(header)
    size = b["data_offsets"][1] - b["data_offsets"][0]
    b["data_offsets"] = [a["data_offsets"][0], a["data_offsets"][0] + size]


def wrong_size(header):
    first_two(header)[0]["shape"] = [1]


@pytest.mark.parametrize("edit, problem", [
    (negative, r"must be non-negative integers"),
    (overlapping, r"overlaps the tensor before it"),
    (wrong_size, r"hold \d+ bytes, shape \[1\] of F32 needs 4"),
])
def test_malformed_header_offsets_are_refused(qwen3_dir, tmp_path, edit, problem):
    path = copy_checkpoint(qwen3_dir, tmp_path / "bad")
    rewrite_header(path / "model.safetensors", edit)
    with pytest.raises(CheckpointError, match=rf"bad/model.safetensors: tensor '.*'.* {problem}"):
        load_pretrained(path)


def test_shard_index_paths_outside_the_checkpoint_are_refused(tmp_path):
    save_tiny("qwen3", tmp_path / "ckpt", max_shard_size="20KB")
    index = tmp_path / "ckpt" / "model.safetensors.index.json"
    data = json.loads(index.read_text())
    name = next(iter(data["weight_map"].values()))
    (tmp_path / name).write_bytes((tmp_path / "ckpt" / name).read_bytes())  # a file outside it that exists
    data["weight_map"] = {k: f"../{v}" if v == name else v for k, v in data["weight_map"].items()}
    index.write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match=rf"index.json: shard '../{name}' is not a file name inside"):
        load_pretrained(tmp_path / "ckpt")


@pytest.mark.parametrize("name, content, message", [
    ("config.json", "{broken", r"config.json: not valid JSON"),
    ("config.json", "[1]", r"config.json: expected a JSON object"),
    ("model.safetensors.index.json", "{broken", r"model.safetensors.index.json: not valid JSON"),
    ("model.safetensors.index.json", "{}", r"model.safetensors.index.json: no 'weight_map'"),
])
def test_broken_json_files_are_named(qwen3_dir, tmp_path, name, content, message):
    path = copy_checkpoint(qwen3_dir, tmp_path / "bad")
    (path / name).write_text(content)
    with pytest.raises(CheckpointError, match=message):
        load_pretrained(path)


def test_broken_or_missing_tokenizer_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"tokenizer.json: tokenizer.json not found"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{broken")
    with pytest.raises(CheckpointError, match=rf"{tmp_path / 'tokenizer.json'}: not a readable tokenizer"):
        load_tokenizer(tmp_path)


def test_written_safetensors_respect_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        save_tensors({"x": torch.ones(2)}, tmp_path / "x.safetensors")
    finally:
        os.umask(old)
    assert oct((tmp_path / "x.safetensors").stat().st_mode & 0o777) == "0o640"
