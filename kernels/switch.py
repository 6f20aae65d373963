"""Whether the norms, RoPE and gated activations run their Triton kernels: for CUDA tensors unless told otherwise.
Tests force them on (on CPU under TRITON_INTERPRET=1) or off with `with use_triton(True | False): ...`; the choice
is made when a kernel runs forward, and its backward follows it."""
from contextlib import contextmanager

_forced: bool | None = None


def triton_for(x) -> bool:
    return x.is_cuda if _forced is None else _forced


@contextmanager
def use_triton(enabled: bool | None):
    global _forced
    before, _forced = _forced, enabled
    try:
        yield
    finally:
        _forced = before
