"""Compute kernels used by the model; imports nothing else of the project."""
from kernels.attention import attention

__all__ = ["attention"]
