"""Compute kernels used by the model; imports nothing else of the project."""
from kernels.attention import attention, attention_mask
from kernels.dropout import dropout
from kernels.gated_act import gated_act
from kernels.rmsnorm import rms_norm
from kernels.rotary import apply_rotary

__all__ = ["apply_rotary", "attention", "attention_mask", "dropout", "gated_act", "rms_norm"]
