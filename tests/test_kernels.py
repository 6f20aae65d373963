"""The Triton kernels against their PyTorch references: forward and gradients, float32 and bfloat16, odd sizes.

Without a GPU the kernels run on CPU tensors in Triton's interpreter (TRITON_INTERPRET=1, set by conftest.py
before anything imports Triton); with one they run compiled on CUDA tensors.
"""
import pytest
import torch

pytest.importorskip("triton", reason="Triton is not installed: pip install triton (CUDA builds of torch bring it)")

from kernels.gated_act import gated_act  # noqa: E402
from kernels.rmsnorm import rms_norm  # noqa: E402
from kernels.rotary import apply_rotary  # noqa: E402
from kernels.switch import use_triton  # noqa: E402

from fixtures import DEVICE  # noqa: E402

DTYPES = [torch.float32, torch.bfloat16]
# Allowed max|triton - reference|, relative to max|reference| (the tensor's scale).
# float32: the two differ only in the order of float32 operations and in approximate rsqrt/exp: a few ulps
# (1.2e-7), grown by sums of at most a few hundred terms.
# bfloat16 keeps 8 significant bits: a rounding moves a value by at most 2^-8 of it, or 2^-7 when truncating as
# Triton's interpreter does. The reference rounds its intermediates (e.g. act(gate), then its product with up),
# the kernels only their outputs, so the two may differ by a few such steps: we allow four.
TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 4 * 2**-7}


@pytest.fixture(autouse=True)
def seed():
    torch.manual_seed(0)


def randn(*shape, dtype=torch.float32, scale=1.0):
    return (scale * torch.randn(shape)).to(DEVICE, dtype)


def forward_and_grads(fn, inputs, triton: bool):
    """fn(*inputs), on the Triton kernels or not, and the gradients w.r.t. every input of <fn(*inputs), dy>, for a
    fixed random dy."""
    inputs = [t.detach().requires_grad_() for t in inputs]
    with use_triton(triton):
        y = fn(*inputs)
    dy = torch.randn(y.shape, generator=torch.Generator().manual_seed(1)).to(y)
    return [y, *torch.autograd.grad(y, inputs, dy)]


def assert_matches(fn, inputs, dtype):
    """fn on the Triton kernels and on the references agree on the output and every gradient, in dtype, shape and
    value."""
    for actual, expected in zip(forward_and_grads(fn, inputs, True), forward_and_grads(fn, inputs, False),
                                strict=True):
        assert actual.dtype == expected.dtype and actual.shape == expected.shape
        error = (actual.double() - expected.double()).abs().max() / expected.double().abs().max()
        assert error <= TOLERANCE[dtype]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("offset", [0.0, 1.0], ids=["qwen", "gemma"])
@pytest.mark.parametrize("shape", [(3, 37), (2, 5, 3, 130)])
def test_rms_norm(shape, offset, dtype):
    x = randn(*shape, dtype=dtype, scale=3.0)
    weight = (1.0 - offset + 0.5 * randn(shape[-1])).to(dtype)  # around the identity scale of each variant
    assert_matches(lambda x, w: rms_norm(x, w, 1e-6, offset), [x, weight], dtype)


def test_rms_norm_float32_weight_on_bfloat16_input():
    """Qwen's variant promotes: a float32 weight on bfloat16 activations gives a float32 output."""
    x, weight = randn(4, 45, dtype=torch.bfloat16), 1.0 + 0.5 * randn(45)
    assert_matches(lambda x, w: rms_norm(x, w, 1e-6), [x, weight], torch.bfloat16)


def as_in_decoder(x_shape):
    """x laid out as the decoder's q and k: (B, H, T, D) transposed from a contiguous (B, T, H, D)."""
    B, H, T, D = x_shape
    return lambda dtype: randn(B, T, H, D, dtype=dtype).transpose(1, 2)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("make_x, cos_shape", [
    (as_in_decoder((2, 3, 5, 10)), (2, 1, 5, 10)),  # the decoder's call; half = 5 is odd
    (lambda dtype: randn(2, 30, 3, 80, dtype=dtype), (2, 30, 1, 80)),  # before the transpose; 180 rows, 6 tiles
    (lambda dtype: randn(7, 6, dtype=dtype), (7, 6)),  # no broadcasting
], ids=["decoder", "before-transpose", "same-shape"])
def test_rotary(make_x, cos_shape, dtype):
    angles = randn(*cos_shape, scale=3.0)
    cos, sin = angles.cos(), angles.sin()
    assert_matches(lambda x: apply_rotary(x, cos, sin), [make_x(dtype)], dtype)


@pytest.mark.filterwarnings("ignore:overflow encountered in exp")  # the interpreter's sigmoid saturates via exp = inf
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("act", ["silu", "gelu_pytorch_tanh"])
@pytest.mark.parametrize("shape", [(3, 7, 33), (2, 1100)])  # 1100 elements span two blocks of 1024
def test_gated_act(shape, act, dtype):
    gate, up = randn(*shape, dtype=dtype, scale=4.0), randn(*shape, dtype=dtype)
    assert_matches(lambda g, u: gated_act(g, u, act), [gate, up], dtype)


@pytest.mark.parametrize("family", ["qwen3", "gemma3_text"])
def test_decoder_on_triton_kernels_matches_reference_path(family, monkeypatch):
    """The switch: kernels.use_triton routes the decoder's norms, RoPE and activations through the kernels (each
    kernel's autograd function is counted: on, all three run; off, none does), with the reference's numbers."""
    from kernels.gated_act_triton import TritonGatedAct
    from kernels.rmsnorm_triton import TritonRMSNorm
    from kernels.rotary_triton import TritonRotary
    from model import Decoder, ModelConfig

    calls = {}
    for function in (TritonGatedAct, TritonRMSNorm, TritonRotary):
        def counted(*args, apply=function.apply, name=function.__name__):
            calls[name] = calls.get(name, 0) + 1
            return apply(*args)
        monkeypatch.setattr(function, "apply", counted)

    gemma = family.startswith("gemma")
    config = dict(model_type=family, vocab_size=50, hidden_size=40, intermediate_size=72, num_layers=2,
                  num_heads=4, num_kv_heads=2, head_dim=10, qk_norm=True, norm_offset=float(gemma),
                  sandwich_norm=gemma, hidden_act="gelu_pytorch_tanh" if gemma else "silu")
    decoder = Decoder(ModelConfig(**config)).to(DEVICE)
    ids = torch.randint(0, 50, (2, 9), device=DEVICE)
    mask = torch.tensor([[1] * 9, [1] * 5 + [0] * 4], device=DEVICE)
    runs = []
    for triton in (False, True):
        with use_triton(triton):
            out = decoder(ids, mask)
        assert sorted(calls) == (["TritonGatedAct", "TritonRMSNorm", "TritonRotary"] if triton else [])
        out.sum().backward()
        runs.append((out.detach(), {n: p.grad.clone() for n, p in decoder.named_parameters()}))
        decoder.zero_grad()
    (expected, want), (got, grads) = runs
    assert (got - expected).abs().max() < 1e-4
    for name in want:
        assert (want[name] - grads[name]).abs().max() < 1e-4, name
