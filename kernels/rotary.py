"""Rotary position embedding in the half-rotation layout, as the decoder applies it, with a Triton path for CUDA.

x: (..., D) with D even; cos, sin: float32, broadcastable to x (the decoder's are (B, 1, T, D) for x (B, H, T, D)).
y = x * cos + rotate_half(x) * sin, with rotate_half(x) = (-x2, x1) for the halves x1, x2 of the last dimension.
"""
import torch

from kernels.switch import triton_for


def apply_rotary_reference(x, cos, sin):
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos.to(x.dtype) + rotated * sin.to(x.dtype)


def apply_rotary(x, cos, sin):
    """Triton kernels (forward and backward) where kernels.switch says so; the reference otherwise.

    Gradients flow to x only: cos and sin are constants.
    """
    if not triton_for(x):
        return apply_rotary_reference(x, cos, sin)
    from kernels.rotary_triton import TritonRotary  # Triton is imported only where it is used

    return TritonRotary.apply(x, cos, sin)
