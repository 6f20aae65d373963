"""kernels.dropout on CPU: the drop rate in every one of the four 16-bit lanes, unbiased scaling, gradients."""
import math

import pytest
import torch

from kernels.dropout import dropout


@pytest.mark.parametrize("p", [0.05, 0.3])
def test_every_lane_drops_at_rate_p_and_kept_values_are_rescaled(p):
    torch.manual_seed(0)
    n = 4 * 250_000
    y = dropout(torch.ones(n), p)
    dropped = round(p * 2**16) / 2**16
    values = y.unique().tolist()
    assert len(values) == 2 and values[0] == 0 and values[1] == pytest.approx(1 / (1 - dropped))
    sigma = math.sqrt(p * (1 - p) / (n // 4))
    for lane in range(4):  # each lane is 16 bits of one 64-bit draw; the sign bit's lane must not be biased
        assert abs(float((y[lane::4] == 0).float().mean()) - p) < 5 * sigma, lane
    assert abs(float(y.mean()) - 1) < 5 * sigma / (1 - p)  # unbiased


def test_gradient_is_the_mask_times_the_scale_and_dtype_is_kept():
    torch.manual_seed(0)
    x = torch.randn(37, 11, dtype=torch.bfloat16, requires_grad=True)
    y = dropout(x, 0.2)
    assert y.dtype == torch.bfloat16 and y.shape == x.shape
    y.float().sum().backward()
    kept, scale = y != 0, 2**16 / (2**16 - round(0.2 * 2**16))
    assert 0 < kept.sum() < x.numel()
    assert torch.equal(x.grad, torch.where(kept, torch.ones_like(x) * scale, 0))
    assert torch.equal(y[kept], x[kept] * scale)


def test_seeded_draws_repeat_and_successive_draws_differ():
    x = torch.ones(1000)
    torch.manual_seed(3)
    first, second = dropout(x, 0.5), dropout(x, 0.5)
    torch.manual_seed(3)
    assert torch.equal(dropout(x, 0.5), first) and not torch.equal(first, second)


def test_off_in_eval_at_zero_and_all_dropped_at_one():
    x = torch.randn(10, 3)
    assert torch.equal(dropout(x, 0.5, training=False), x) and torch.equal(dropout(x, 0.0), x)
    assert torch.equal(dropout(x, 1.0), torch.zeros_like(x))
