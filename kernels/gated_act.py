"""Gated MLP activation act(gate) * up, as the decoder computes it, with a Triton path for CUDA tensors.

act is "silu" (Qwen) or "gelu_pytorch_tanh" (Gemma's tanh-approximated GELU).
"""
import torch.nn.functional as F

ACTIVATIONS = {"silu": F.silu, "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh")}


def gated_act_reference(gate, up, act: str):
    return ACTIVATIONS[act](gate) * up


def gated_act(gate, up, act: str, use_triton: bool | None = None):
    """Triton kernels (forward and backward) for CUDA tensors or when use_triton is True; the reference otherwise."""
    if not (gate.is_cuda if use_triton is None else use_triton):
        return gated_act_reference(gate, up, act)
    from kernels.gated_act_triton import TritonGatedAct  # Triton is imported only where it is used

    return TritonGatedAct.apply(gate, up, act)
