"""Gated MLP activation act(gate) * up, as the decoder computes it, with a Triton path for CUDA tensors.

act is "silu" (Qwen) or "gelu_pytorch_tanh" (Gemma's tanh-approximated GELU).
"""
import torch.nn.functional as F

from kernels.switch import triton_for

ACTIVATIONS = {"silu": F.silu, "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh")}


def gated_act_reference(gate, up, act: str):
    return ACTIVATIONS[act](gate) * up


def gated_act(gate, up, act: str):
    """Triton kernels (forward and backward) where kernels.switch says so; the reference otherwise."""
    if not triton_for(gate):
        return gated_act_reference(gate, up, act)
    from kernels.gated_act_triton import TritonGatedAct  # Triton is imported only where it is used

    return TritonGatedAct.apply(gate, up, act)
