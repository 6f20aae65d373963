"""Compute kernels used by the model; imports nothing else of the project."""
from kernels.attention import attention, example_mask, padding_mask, query_mask
from kernels.dropout import dropout
from kernels.gated_act import gated_act
from kernels.rmsnorm import rms_norm
from kernels.rotary import apply_rotary
from kernels.switch import use_triton

__all__ = ["apply_rotary", "attention", "dropout", "example_mask", "gated_act", "padding_mask", "query_mask",
           "rms_norm", "use_triton"]
