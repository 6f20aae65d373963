"""LoRA: a frozen nn.Linear plus a trainable low-rank update (alpha / r) * B @ A, injected by module name."""
import logging
import math

import torch
import torch.nn.functional as F
from torch import nn

from kernels import dropout

log = logging.getLogger(__name__)

DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class LoRALinear(nn.Module):
    """y = base(x) + scaling * dropout(x) @ A.T @ B.T, with base frozen; A is (r, in), B is (out, r).

    A and B are float32 whatever the base dtype (they are the trained weights: small optimiser updates would
    round away in bf16), plain nn.Parameters on the base weight's device, meta included.
    """

    def __init__(self, base: nn.Linear, r: int, alpha: float, dropout: float = 0.0):
        super().__init__()
        self.base = base.requires_grad_(False)
        self.alpha, self.scaling = alpha, alpha / r
        device = base.weight.device
        self.lora_A = nn.Parameter(torch.empty(r, base.in_features, device=device, dtype=torch.float32))
        self.lora_B = nn.Parameter(torch.empty(base.out_features, r, device=device, dtype=torch.float32))
        self.dropout_p = dropout
        self.merged = False
        self.reset_parameters()

    def reset_parameters(self):
        """PEFT's init: A Kaiming-uniform (a=sqrt(5)), B zero, so the wrapped layer starts equal to base."""
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        if self.merged:
            return out
        x = dropout(x, self.dropout_p, self.training)
        # Cast the small weights, not the activations, to the input's dtype (autocast would do the same), and
        # scale B rather than the (tokens x out) product: one activation-sized multiply less, forward and backward.
        return out + F.linear(F.linear(x, self.lora_A.to(x.dtype)), (self.lora_B * self.scaling).to(x.dtype))

    def merged_weight(self, sign: int = 1) -> torch.Tensor:
        """base.weight + sign * scaling * B @ A, summed in float32, in the base weight's dtype."""
        w = self.base.weight
        return (w.float() + sign * self.scaling * (self.lora_B.float() @ self.lora_A.float())).to(w.dtype)

    @torch.no_grad()
    def merge(self):
        """Fold the update into base.weight; forward then skips the LoRA branch."""
        if not self.merged:
            self.base.weight.copy_(self.merged_weight())
            self.merged = True

    @torch.no_grad()
    def unmerge(self):
        """Subtract the update from base.weight again (exact up to rounding)."""
        if self.merged:
            self.base.weight.copy_(self.merged_weight(-1))
            self.merged = False


ENCODER_TARGETS = ("query", "key", "value", "dense")  # BERT-style encoders: attention, its output, the MLP, pooler


class LoRATargetError(ValueError):
    """A LoRA target that names no linear layer of the model."""


def add_lora(module: nn.Module, r: int = 16, alpha: float = 32, dropout: float = 0.0,
             targets=DEFAULT_TARGETS, modules_to_save=None) -> int:
    """Wrap every nn.Linear whose last name component is in `targets` in a LoRALinear, in place.

    Freezes all other parameters except those of child modules named in `modules_to_save` (PEFT's name for fully
    trained modules; default: the classifier's `head`, "score" or "classifier"), whose layers get no LoRA.
    Returns the number of trainable parameters.
    """
    modules_to_save = modules_to_save or (getattr(module, "head", "score"),)
    module.requires_grad_(False)
    found, linear, saved = set(), set(), ()
    for name, child in list(module.named_modules()):
        last = name.rpartition(".")[2]
        if name.startswith(saved):
            continue
        if last in modules_to_save:
            child.requires_grad_(True)
            saved += (f"{name}.",)
        elif isinstance(child, nn.Linear):
            linear.add(last)
            if last in targets:
                setattr(module.get_submodule(name.rpartition(".")[0]), last, LoRALinear(child, r, alpha, dropout))
                found.add(last)
    if missing := set(targets) - found:
        raise LoRATargetError(f"no linear layer named {', '.join(sorted(missing))} in {type(module).__name__} "
                              f"(its linear layers: {', '.join(sorted(linear))})")
    log.info("LoRA r=%d alpha=%g on %s: %s", r, alpha, ",".join(targets), parameter_summary(module))
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def parameter_summary(module: nn.Module) -> str:
    """'trainable 1,234 / total 56,789 (2.17%)'."""
    total = sum(p.numel() for p in module.parameters())
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    return f"trainable {trainable:,} / total {total:,} ({100 * trainable / max(total, 1):.2f}%)"


def lora_layers(module: nn.Module) -> dict[str, LoRALinear]:
    """Name -> LoRALinear for every LoRA layer in `module`."""
    return {name: m for name, m in module.named_modules() if isinstance(m, LoRALinear)}


def merge_for_inference(module: nn.Module) -> int:
    """Fold the update of every LoRA layer whose base weight is float32 into that weight: one matrix product per
    projection instead of three, the same numbers to float32 rounding. A bf16 weight stays unmerged (its rounding
    would eat much of a small update). Returns the number of layers merged."""
    layers = [layer for layer in lora_layers(module).values() if layer.base.weight.dtype == torch.float32]
    for layer in layers:
        layer.merge()
    return len(layers)


def store_frozen(module: nn.Module, dtype: torch.dtype) -> dict[str, tuple]:
    """Store every LoRA layer's frozen base weight and bias in `dtype`, the dtype autocast computes in; returns
    what they were, for restore_frozen. Autocast casts a frozen weight at every product of every step (it caches
    only weights that require grad); stored cast, the products read it as it is, with the same numbers, as a
    cast rounds the same way once as every time. Merge first: merge_for_inference sums in float32."""
    before = {}
    for name, layer in lora_layers(module).items():
        before[name] = (layer.base.weight.data, None if layer.base.bias is None else layer.base.bias.data)
        layer.base.to(dtype)
    return before


def restore_frozen(module: nn.Module, before: dict[str, tuple]) -> None:
    """Put back the base weights and biases store_frozen replaced."""
    for name, layer in lora_layers(module).items():
        layer.base.weight.data, bias = before[name]
        if bias is not None:
            layer.base.bias.data = bias


def merged_tensors(module: nn.Module):
    """(name, tensor) of module.state_dict() with every LoRALinear folded into plain Linear names (`x.weight`,
    `x.bias`). Lazy, one merged weight at a time; does not modify the module (other tensors are shared)."""
    layers = lora_layers(module)
    for key, tensor in module.state_dict().items():
        owner, _, leaf = key.rpartition(".")
        if owner in layers:
            continue
        if owner.endswith(".base") and owner[:-5] in layers:
            layer = layers[owner[:-5]]
            if leaf == "weight" and not layer.merged:
                tensor = layer.merged_weight().detach()
            key = f"{owner[:-5]}.{leaf}"
        yield key, tensor
