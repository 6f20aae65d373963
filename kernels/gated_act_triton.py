"""Triton gated activation y = act(gate) * up: elementwise forward and backward kernels, math in float32.

  silu(g) = g s with s = sigmoid(g);                 silu'(g) = s (1 + g (1 - s))
  gelu_tanh(g) = g (1 + t) / 2, t = tanh(u), u = sqrt(2/pi) (g + 0.044715 g^3);
  gelu_tanh'(g) = (1 + t) / 2 + g (1 - t^2) sqrt(2/pi) (1 + 3 * 0.044715 g^2) / 2
  backward: dgate = dy * up * act'(gate),  dup = dy * act(gate)
"""
import torch
import triton
import triton.language as tl

BLOCK = 1024


@triton.jit
def _act_and_grad(g, GELU: tl.constexpr):
    """act(g) and act'(g) in float32; tanh(u) is written 2 sigmoid(2u) - 1."""
    if GELU:
        k = 0.7978845608028654  # sqrt(2 / pi)
        t = 2 * tl.sigmoid(2 * k * (g + 0.044715 * g * g * g)) - 1
        act = 0.5 * g * (1 + t)
        grad = 0.5 * (1 + t) + 0.5 * g * (1 - t * t) * k * (1 + 3 * 0.044715 * g * g)
    else:
        s = tl.sigmoid(g)
        act = g * s
        grad = s * (1 + g * (1 - s))
    return act, grad


@triton.jit
def _forward(gate_ptr, up_ptr, y_ptr, n, GELU: tl.constexpr, BLOCK: tl.constexpr):
    offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offsets < n
    gate = tl.load(gate_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    up = tl.load(up_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    act, _ = _act_and_grad(gate, GELU)
    tl.store(y_ptr + offsets, (act * up).to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _backward(dy_ptr, gate_ptr, up_ptr, dgate_ptr, dup_ptr, n, GELU: tl.constexpr, BLOCK: tl.constexpr):
    offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offsets < n
    dy = tl.load(dy_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    gate = tl.load(gate_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    up = tl.load(up_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    act, grad = _act_and_grad(gate, GELU)
    tl.store(dgate_ptr + offsets, (dy * up * grad).to(dgate_ptr.dtype.element_ty), mask=mask)
    tl.store(dup_ptr + offsets, (dy * act).to(dup_ptr.dtype.element_ty), mask=mask)


class TritonGatedAct(torch.autograd.Function):
    @staticmethod
    def forward(ctx, gate, up, act: str):
        assert gate.shape == up.shape and gate.dtype == up.dtype, "gate and up must match in shape and dtype"
        gate, up = gate.contiguous(), up.contiguous()
        ctx.gelu = {"silu": False, "gelu_pytorch_tanh": True}[act]
        y = torch.empty_like(gate)
        _forward[(triton.cdiv(gate.numel(), BLOCK),)](gate, up, y, gate.numel(), GELU=ctx.gelu, BLOCK=BLOCK)
        ctx.save_for_backward(gate, up)
        return y

    @staticmethod
    def backward(ctx, dy):
        gate, up = ctx.saved_tensors
        dy = dy.contiguous()
        dgate, dup = torch.empty_like(gate), torch.empty_like(up)
        _backward[(triton.cdiv(gate.numel(), BLOCK),)](dy, gate, up, dgate, dup, gate.numel(),
                                                       GELU=ctx.gelu, BLOCK=BLOCK)
        return dgate, dup, None
