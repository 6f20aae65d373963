"""Dropout with a cheaper mask on CPU, where drawing the random numbers is most of dropout's cost.

torch's CPU dropout draws one number per element from its generator, which for LoRA's (tokens x hidden) inputs
costs about as much as the frozen layer's matrix product. Here every 64-bit draw gives four 16-bit lanes, each
kept when at least p * 2^16 above the lane's minimum: a quarter of the draws, and p rounded to a multiple of
2^-16 (the scale uses the rounded p, so the expectation is exact). Other devices use F.dropout.
"""
import torch
import torch.nn.functional as F


def dropout(x, p: float, training: bool = True):
    if not training or p == 0 or p >= 1 or x.device.type != "cpu":
        return F.dropout(x, p, training)
    n = x.numel()
    draws = torch.randint(-2**63, 2**63 - 1, ((n + 3) // 4,), dtype=torch.int64)
    lanes = draws.view(torch.int16)[:n].view(x.shape)
    dropped = round(p * 2**16)
    return torch.where(lanes >= dropped - 2**15, x, 0) * (2**16 / (2**16 - dropped))
