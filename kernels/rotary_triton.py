"""Triton rotary embedding: one kernel for the forward and the backward, each program rotating a tile of rows.

For the halves x1, x2 of a row and c1, c2, s1, s2 of its cos/sin row (cast to x's dtype, as the reference does):
  forward:   y1 = x1 c1 - x2 s1,   y2 = x2 c2 + x1 s2
  backward:  the transposed map,  dx1 = dy1 c1 + dy2 s2,   dx2 = dy2 c2 - dy1 s1
Products and sums are in float32, rounded once. cos/sin are broadcast without copies: `cos_rows[r]` is the row
of the (contiguous) cos and sin that row r of x reads.
"""
import torch
import triton
import triton.language as tl


@triton.jit
def _rotary(x_ptr, cos_ptr, sin_ptr, cos_rows_ptr, y_ptr, N, HALF,
            BACKWARD: tl.constexpr, ROWS: tl.constexpr, BLOCK: tl.constexpr):
    rows = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    cols = tl.arange(0, BLOCK)
    mask = (rows < N)[:, None] & (cols < HALF)[None, :]
    cos_rows = tl.load(cos_rows_ptr + rows, mask=rows < N, other=0)
    x_first = (rows * 2 * HALF)[:, None] + cols[None, :]  # offsets of the first halves in x and y
    cs_first = (cos_rows * 2 * HALF)[:, None] + cols[None, :]  # and in cos and sin
    dtype = x_ptr.dtype.element_ty
    x1 = tl.load(x_ptr + x_first, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(x_ptr + x_first + HALF, mask=mask, other=0.0).to(tl.float32)
    c1 = tl.load(cos_ptr + cs_first, mask=mask, other=0.0).to(dtype).to(tl.float32)
    c2 = tl.load(cos_ptr + cs_first + HALF, mask=mask, other=0.0).to(dtype).to(tl.float32)
    s1 = tl.load(sin_ptr + cs_first, mask=mask, other=0.0).to(dtype).to(tl.float32)
    s2 = tl.load(sin_ptr + cs_first + HALF, mask=mask, other=0.0).to(dtype).to(tl.float32)
    if BACKWARD:
        y1, y2 = x1 * c1 + x2 * s2, x2 * c2 - x1 * s1
    else:
        y1, y2 = x1 * c1 - x2 * s1, x2 * c2 + x1 * s2
    tl.store(y_ptr + x_first, y1.to(dtype), mask=mask)
    tl.store(y_ptr + x_first + HALF, y2.to(dtype), mask=mask)


def _rotate(x, cos, sin, cos_rows, backward: bool):
    D = x.shape[-1]
    rows = x.reshape(-1, D).contiguous()
    y = torch.empty_like(rows)
    block = triton.next_power_of_2(D // 2)
    rows_per_program = max(1, 2048 // block)  # a tile of about 2048 half-row elements per program
    grid = (triton.cdiv(rows.shape[0], rows_per_program),)
    _rotary[grid](rows, cos, sin, cos_rows, y, rows.shape[0], D // 2, BACKWARD=backward, ROWS=rows_per_program,
                  BLOCK=block)
    return y.view(x.shape)


class TritonRotary(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, cos, sin):
        D = x.shape[-1]
        assert D % 2 == 0 and cos.shape == sin.shape and cos.shape[-1] == D, "half rotation needs an even last dim"
        cos, sin = cos.contiguous(), sin.contiguous()
        cos_rows = torch.arange(cos.numel() // D, device=x.device).view(cos.shape[:-1]).expand(x.shape[:-1])
        cos_rows = cos_rows.reshape(-1)
        ctx.save_for_backward(cos, sin, cos_rows)
        return _rotate(x, cos, sin, cos_rows, backward=False)

    @staticmethod
    def backward(ctx, dy):
        return _rotate(dy, *ctx.saved_tensors, backward=True), None, None
