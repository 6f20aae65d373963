"""RMSNorm over the last dimension, as the decoder computes it, with a Triton path for CUDA tensors.

offset 0 (Qwen): weight * normalized(x.float()).type_as(x), so the result has the promoted dtype of x and weight.
offset > 0 (Gemma): (normalized(x.float()) * (offset + weight.float())).type_as(x), so the result has x's dtype.
"""
import torch

from kernels.switch import triton_for


def rms_norm_reference(x, weight, eps: float, offset: float = 0.0):
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    if offset:
        return (h * (offset + weight.float())).type_as(x)
    return weight * h.type_as(x)


def rms_norm(x, weight, eps: float, offset: float = 0.0):
    """Triton kernels (forward and backward) where kernels.switch says so; the reference otherwise."""
    if not triton_for(x):
        return rms_norm_reference(x, weight, eps, offset)
    from kernels.rmsnorm_triton import TritonRMSNorm  # Triton is imported only where it is used

    return TritonRMSNorm.apply(x, weight, eps, offset)
