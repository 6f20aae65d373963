"""LoRALinear numerics against float64 math, merge/unmerge, injection by name, meta-device creation."""
import copy
import math

import pytest
import torch
from torch import nn

from model.lora import (
    DEFAULT_TARGETS,
    LoRALinear,
    add_lora,
    merge_for_inference,
    merged_tensors,
    restore_frozen,
    store_frozen,
)

from fixtures import randomize_trainable


class Block(nn.Module):
    """Stand-in for a decoder layer: attention and MLP projections plus a norm that must stay frozen."""

    def __init__(self, d=16):
        super().__init__()
        self.self_attn = nn.ModuleDict({n: nn.Linear(d, d, bias=n == "q_proj")
                                        for n in ("q_proj", "k_proj", "v_proj", "o_proj")})
        self.mlp = nn.ModuleDict({"gate_proj": nn.Linear(d, 2 * d), "up_proj": nn.Linear(d, 2 * d),
                                  "down_proj": nn.Linear(2 * d, d)})
        self.norm = nn.LayerNorm(d)

    def forward(self, x):
        a = self.self_attn
        x = x + a["o_proj"](a["q_proj"](x) * a["k_proj"](x).sigmoid() + a["v_proj"](x))
        m = self.mlp
        return self.norm(x + m["down_proj"](m["gate_proj"](x) * m["up_proj"](x)))


def test_init_matches_peft_and_starts_at_base():
    torch.manual_seed(0)
    base = nn.Linear(256, 64)
    layer = LoRALinear(base, r=32, alpha=16)
    assert torch.equal(layer.lora_B, torch.zeros(64, 32))
    bound = 1 / math.sqrt(256)  # kaiming_uniform_(a=sqrt(5)) on fan_in=256
    assert layer.lora_A.abs().max() <= bound
    assert layer.lora_A.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.05)
    x = torch.randn(3, 256)
    assert torch.equal(layer(x), base(x))
    assert layer.scaling == 0.5 and not layer.base.weight.requires_grad and not layer.base.bias.requires_grad


def test_forward_matches_float64_math():
    torch.manual_seed(0)
    layer = LoRALinear(nn.Linear(24, 40), r=4, alpha=8)
    nn.init.normal_(layer.lora_B)
    x = torch.randn(2, 5, 24)
    w, b, A, B = (t.double() for t in (layer.base.weight, layer.base.bias, layer.lora_A, layer.lora_B))
    want = x.double() @ w.T + b + 2.0 * (x.double() @ A.T @ B.T)
    torch.testing.assert_close(layer(x).double(), want, atol=1e-5, rtol=1e-5)


def test_dropout_only_on_lora_input():
    torch.manual_seed(0)
    layer = LoRALinear(nn.Linear(8, 8), r=2, alpha=2, dropout=1.0)
    nn.init.normal_(layer.lora_B)
    x = torch.randn(4, 8)
    assert torch.equal(layer(x), layer.base(x))  # train mode: every LoRA input zeroed, base untouched
    assert not torch.allclose(layer.eval()(x), layer.base(x))


def test_merge_unmerge_exact():
    torch.manual_seed(0)
    layer = LoRALinear(nn.Linear(32, 48), r=8, alpha=16)
    nn.init.normal_(layer.lora_B)
    w0 = layer.base.weight.clone()
    x = torch.randn(5, 32)
    y = layer(x)
    layer.merge()
    layer.merge()  # idempotent
    want = w0.double() + 2.0 * layer.lora_B.double() @ layer.lora_A.double()
    torch.testing.assert_close(layer.base.weight.double(), want, atol=1e-6, rtol=0)
    torch.testing.assert_close(layer(x), y, atol=1e-5, rtol=0)
    layer.unmerge()
    torch.testing.assert_close(layer.base.weight, w0, atol=1e-6, rtol=0)
    torch.testing.assert_close(layer(x), y, atol=1e-6, rtol=0)


def test_add_lora_replaces_targets_and_freezes_the_rest():
    torch.manual_seed(0)
    block = Block(16)
    block.score = nn.Linear(16, 2, bias=False)
    n = add_lora(block, r=4, alpha=8)
    names = {name for name, m in block.named_modules() if isinstance(m, LoRALinear)}
    assert {name.rpartition(".")[2] for name in names} == set(DEFAULT_TARGETS)
    trainable = {name for name, p in block.named_parameters() if p.requires_grad}
    assert trainable == {f"{m}.{ab}" for m in names for ab in ("lora_A", "lora_B")} | {"score.weight"}
    lora = 4 * (4 * (16 + 16)) + 2 * 4 * (16 + 32) + 4 * (32 + 16)
    assert n == lora + 2 * 16


def test_add_lora_subset_and_unknown_target():
    block = Block(16)
    n = add_lora(block, r=2, alpha=2, targets=("v_proj",))
    assert isinstance(block.self_attn["v_proj"], LoRALinear) and isinstance(block.self_attn["q_proj"], nn.Linear)
    assert n == 2 * (16 + 16)
    with pytest.raises(ValueError, match="qproj"):
        add_lora(Block(16), targets=("qproj",))


def test_merge_for_inference_folds_float32_layers_only():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 16), nn.Linear(16, 16).to(torch.bfloat16))
    model[0], model[1] = LoRALinear(model[0], r=4, alpha=8), LoRALinear(model[1], r=4, alpha=8)
    for layer in model:
        nn.init.normal_(layer.lora_B)
    x = torch.randn(3, 16)
    want = model[0](x)
    assert merge_for_inference(model) == 1
    assert model[0].merged and not model[1].merged
    torch.testing.assert_close(model[0](x), want, atol=1e-5, rtol=0)


def test_merged_tensors_loads_into_plain_module_and_leaves_original():
    torch.manual_seed(0)
    plain = Block(16)
    lora = copy.deepcopy(plain)
    add_lora(lora, r=4, alpha=8, dropout=0.1)
    randomize_trainable(lora)
    lora.eval()
    before = {k: v.clone() for k, v in lora.state_dict().items()}
    sd = dict(merged_tensors(lora))
    assert sd.keys() == plain.state_dict().keys()
    plain.load_state_dict(sd)
    x = torch.randn(3, 16)
    torch.testing.assert_close(plain(x), lora(x), atol=1e-5, rtol=0)
    assert all(torch.equal(v, lora.state_dict()[k]) for k, v in before.items())
    for m in lora.modules():
        if isinstance(m, LoRALinear):
            m.merge()
    torch.testing.assert_close(dict(merged_tensors(lora))["mlp.down_proj.weight"], sd["mlp.down_proj.weight"])


def test_lora_on_meta_device_is_plain_parameters_and_materializes():
    with torch.device("meta"):
        block = Block(16)
    add_lora(block, r=4, alpha=8)
    layer = block.mlp["up_proj"]
    assert layer.lora_A.is_meta and type(layer.lora_A) is nn.Parameter and type(layer.lora_B) is nn.Parameter
    block.to_empty(device="cpu")
    layer.reset_parameters()
    assert torch.equal(layer.lora_B, torch.zeros(32, 4)) and layer.lora_A.abs().max() <= 0.25


def test_bf16_base_keeps_float32_adapters():
    torch.manual_seed(0)
    layer = LoRALinear(nn.Linear(16, 8).to(torch.bfloat16), r=2, alpha=4)
    nn.init.normal_(layer.lora_B)
    assert layer.lora_A.dtype == layer.lora_B.dtype == torch.float32
    x = torch.randn(3, 16, dtype=torch.bfloat16)
    y = layer(x)
    assert y.dtype == torch.bfloat16
    want = layer.base(x).float() + 2.0 * (x.float() @ layer.lora_A.T @ layer.lora_B.T)
    torch.testing.assert_close(y.float(), want, atol=0.05, rtol=0.02)
    y.float().sum().backward()
    assert layer.lora_A.grad.dtype == torch.float32 and layer.base.weight.grad is None


@pytest.mark.parametrize("merged", [False, True])
def test_frozen_weights_stored_in_bf16_give_autocasts_own_numbers(merged):
    """Under bf16 autocast, base weights (and biases) stored in bf16 give the outputs and LoRA gradients that
    float32 ones cast at every product give, bit for bit, merged (inference) or not; restore_frozen puts the
    float32 tensors back."""
    torch.manual_seed(0)
    block = Block(16)
    add_lora(block, r=4, alpha=8)
    randomize_trainable(block)
    if merged:
        merge_for_inference(block)
    x = torch.randn(2, 5, 16)

    def run():
        with torch.autocast("cpu", torch.bfloat16):
            out = block(x)
        if merged:  # inference: nothing to train
            return out, []
        out.float().square().sum().backward()
        grads = [p.grad.clone() for p in block.parameters() if p.requires_grad]
        block.zero_grad(set_to_none=True)
        return out, grads

    want, want_grads = run()
    before = {k: v.clone() for k, v in block.state_dict().items()}
    stored = store_frozen(block, torch.bfloat16)
    q = block.self_attn["q_proj"].base
    assert q.weight.dtype == q.bias.dtype == torch.bfloat16 and block.norm.weight.dtype == torch.float32
    got, got_grads = run()
    assert torch.equal(got, want) and all(map(torch.equal, got_grads, want_grads))
    restore_frozen(block, stored)
    assert all(v.dtype == before[k].dtype and torch.equal(v, before[k]) for k, v in block.state_dict().items())
