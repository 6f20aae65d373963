"""Adapter checkpoints: save/load round trip, clear errors on mismatch, and PEFT export read by peft itself."""
import json

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import transformers as tf
from peft import PeftModel
from safetensors.torch import load_file
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard

from model.adapters import load_adapters, save_adapters
from model.classifier import load_classifier
from model.export import export_peft
from model.loading import CheckpointError
from model.lora import add_lora

from hf_tiny import CONFIGS, padded_batch, save_tiny

IDS, MASK = padded_batch("right", length=9)  # pad id 0 (HF pools on it)


def trained(base, seed=0, **lora):
    """A classifier on `base` with LoRA and head set to random values, as after training."""
    classifier = load_classifier(base)
    add_lora(classifier, **{"r": 4, "alpha": 8, **lora})
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in classifier.parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    return classifier


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    path = tmp_path_factory.mktemp("qwen2")
    save_tiny("qwen2", path)
    return path


@torch.no_grad()
def test_round_trip_restores_adapters_and_head(base, tmp_path):
    ours = trained(base)
    save_adapters(ours, tmp_path, base_model=str(base))
    fresh = load_classifier(base)
    add_lora(fresh, r=4, alpha=8)
    assert not torch.equal(fresh(IDS, MASK), ours(IDS, MASK))
    info = load_adapters(fresh, tmp_path)
    assert torch.equal(fresh(IDS, MASK), ours(IDS, MASK))
    assert torch.equal(fresh.score.weight, ours.score.weight)
    assert info == json.loads((tmp_path / "adapters.json").read_text())
    assert info == dict(model_type="qwen2", num_labels=2, r=4, alpha=8, dropout=0.0, base_model=str(base),
                        targets=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])


def test_mismatched_base_shapes_name_the_tensor_and_file(base, tmp_path):
    save_adapters(trained(base), tmp_path / "adapters")
    config = CONFIGS["qwen2"]()
    config.intermediate_size = 64
    tf.AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path / "other")
    other = load_classifier(tmp_path / "other")
    add_lora(other, r=4, alpha=8)
    file = str(tmp_path / "adapters" / "adapters.safetensors")
    with pytest.raises(CheckpointError, match=r"tensor 'model\.layers\.0\.mlp\.down_proj\.lora_A' has shape \(4, 80\), "
                                         r"the model expects \(4, 64\)") as err:
        load_adapters(other, tmp_path / "adapters")
    assert file in str(err.value)
    fewer = load_classifier(base)
    add_lora(fewer, r=4, alpha=8, targets=("q_proj", "v_proj"))
    with pytest.raises(CheckpointError, match=r"unexpected tensor 'model\.layers\.0\.mlp\.down_proj\.lora_A'"):
        load_adapters(fewer, tmp_path / "adapters")
    more = load_classifier(base)
    add_lora(more, r=4, alpha=8, modules_to_save=("score", "norm"))
    with pytest.raises(CheckpointError, match=r"no tensor 'model\.norm\.weight'"):
        load_adapters(more, tmp_path / "adapters")


@pytest.mark.parametrize("damage, message", [
    (lambda d: (d / "adapters.json").write_text("{not json"), r"adapters.json: not valid JSON"),
    (lambda d: (d / "adapters.json").write_text("{}"), r"adapters.json: no 'model_type' entry"),
    (lambda d: (d / "adapters.json").unlink(), r"adapters.json: adapters.json not found"),
    (lambda d: (d / "adapters.safetensors").write_bytes((d / "adapters.safetensors").read_bytes()[:-9]),
     r"adapters.safetensors: tensor .* cannot be read: it lies past the end of the file"),
])
def test_damaged_adapter_files_are_named(base, tmp_path, damage, message):
    save_adapters(trained(base), tmp_path / "adapters")
    damage(tmp_path / "adapters")
    fresh = load_classifier(base)
    add_lora(fresh, r=4, alpha=8)
    with pytest.raises((CheckpointError, FileNotFoundError), match=message):
        load_adapters(fresh, tmp_path / "adapters")


@pytest.mark.parametrize("family", ["qwen2", "gemma2"])
@torch.no_grad()
def test_peft_export_loads_in_peft_with_same_logits(family, tmp_path):
    save_tiny(family, tmp_path / "base")
    ours = trained(tmp_path / "base", targets=("q_proj", "v_proj", "down_proj")).eval()
    export_peft(ours, tmp_path / "peft", base_model_name_or_path=str(tmp_path / "base"))
    hf = tf.AutoModelForSequenceClassification.from_pretrained(tmp_path / "base", num_labels=2,
                                                                attn_implementation="eager")
    peft = PeftModel.from_pretrained(hf, tmp_path / "peft").eval()
    want = peft(input_ids=IDS, attention_mask=MASK).logits
    assert (ours(IDS, MASK) - want).abs().max() < 1e-4
    assert (peft.merge_and_unload()(input_ids=IDS, attention_mask=MASK).logits - want).abs().max() < 1e-5


def save_sharded(rank, base, out):
    """One of two gloo ranks: FSDP2-shard a trained classifier and save its adapters (collective)."""
    dist.init_process_group("gloo", init_method=f"file://{out}.store", rank=rank, world_size=2)
    mesh = init_device_mesh("cpu", (2,))  # CPU even where CUDA exists (a forked child cannot use it)
    classifier = trained(base)
    for block in classifier.model.layers:
        fully_shard(block, mesh=mesh)
    fully_shard(classifier, mesh=mesh)
    save_adapters(classifier, out)
    dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.multiprocess
def test_save_gathers_fsdp2_shards_on_rank_0(base, tmp_path):
    mp.start_processes(save_sharded, args=(str(base), str(tmp_path / "out")), nprocs=2, start_method="fork")
    want = {name: p for name, p in trained(base).named_parameters() if p.requires_grad}
    got = load_file(tmp_path / "out" / "adapters.safetensors")
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
