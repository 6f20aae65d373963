"""Triton RMSNorm: forward and backward kernels over rows of the last dimension, math in float32.

With n = x * rstd, rstd = 1 / sqrt(mean(x^2) + eps), and scale = weight (offset 0) or offset + weight:
  forward:   y = weight * n rounded to x's dtype (offset 0), or n * (offset + weight) (offset > 0)
  backward:  dn = dy * scale,  dx = rstd * (dn - n * mean(dn * n)),  dweight = sum over rows of dy * n
Each forward program normalizes one row; each backward program walks a slice of rows and writes its partial
dweight, summed afterwards in PyTorch. A row must fit in one block (any hidden size of these models does).
"""
import torch
import triton
import triton.language as tl


@triton.jit
def _forward(x_ptr, w_ptr, y_ptr, rstd_ptr, D, eps, OFFSET: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < D
    x = tl.load(x_ptr + row * D + cols, mask=mask, other=0.0).to(tl.float32)
    w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    rstd = tl.rsqrt(tl.sum(x * x, axis=0) / D + eps)
    n = x * rstd
    if OFFSET == 0:
        y = w * n.to(x_ptr.dtype.element_ty).to(tl.float32)
    else:
        y = n * (OFFSET + w)
    tl.store(y_ptr + row * D + cols, y.to(y_ptr.dtype.element_ty), mask=mask)
    tl.store(rstd_ptr + row, rstd)


@triton.jit
def _backward(dy_ptr, x_ptr, w_ptr, rstd_ptr, dx_ptr, dw_ptr, N, D, ROWS_PER_PROGRAM,
              OFFSET: tl.constexpr, BLOCK: tl.constexpr):
    program = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    mask = cols < D
    w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    scale = w if OFFSET == 0 else OFFSET + w
    dw = tl.zeros([BLOCK], dtype=tl.float32)
    first = program.to(tl.int64) * ROWS_PER_PROGRAM
    for row in range(first, tl.minimum(first + ROWS_PER_PROGRAM, N)):
        offsets = row * D + cols
        x = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(dy_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
        rstd = tl.load(rstd_ptr + row)
        n = x * rstd
        dn = dy * scale
        dx = rstd * (dn - n * tl.sum(dn * n, axis=0) / D)
        tl.store(dx_ptr + offsets, dx.to(dx_ptr.dtype.element_ty), mask=mask)
        if OFFSET == 0:
            n = n.to(x_ptr.dtype.element_ty).to(tl.float32)  # the forward scaled the rounded row
        dw += dy * n
    tl.store(dw_ptr + program * D + cols, dw, mask=mask)


def _launch_config(D: int):
    block = triton.next_power_of_2(D)
    return block, min(max(block // 256, 1), 16)  # BLOCK and num_warps: about 8 elements per thread


class TritonRMSNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, eps: float, offset: float):
        D = x.shape[-1]
        rows = x.reshape(-1, D).contiguous()
        out_dtype = x.dtype if offset else torch.promote_types(x.dtype, weight.dtype)
        y = torch.empty(rows.shape, dtype=out_dtype, device=x.device)
        rstd = torch.empty(rows.shape[0], dtype=torch.float32, device=x.device)
        block, warps = _launch_config(D)
        _forward[(rows.shape[0],)](rows, weight, y, rstd, D, eps, OFFSET=offset, BLOCK=block, num_warps=warps)
        ctx.save_for_backward(rows, weight, rstd)
        ctx.offset, ctx.shape = offset, x.shape
        return y.view(x.shape)

    @staticmethod
    def backward(ctx, dy):
        rows, weight, rstd = ctx.saved_tensors
        N, D = rows.shape
        dy = dy.reshape(N, D).contiguous()
        dx = torch.empty_like(rows)
        rows_per_program = 16  # enough programs to fill a GPU, few partial dweight rows to sum
        programs = triton.cdiv(N, rows_per_program)
        partial_dw = torch.empty(programs, D, dtype=torch.float32, device=rows.device)
        block, warps = _launch_config(D)
        _backward[(programs,)](dy, rows, weight, rstd, dx, partial_dw, N, D, rows_per_program,
                               OFFSET=ctx.offset, BLOCK=block, num_warps=warps)
        return dx.view(ctx.shape), partial_dw.sum(0).to(weight.dtype), None, None
