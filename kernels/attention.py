"""Scaled dot-product attention over a boolean mask: PyTorch SDPA where it is exact, eager math otherwise.

q: (B, H, T, D); k, v: (B, H_kv, T, D) with H a multiple of H_kv (grouped-query attention);
mask: (B, 1, T, T) boolean, True where a query may attend to a key. Every query row must keep at least one key.
"""
import torch
import torch.nn.functional as F


def attention(q, k, v, mask, scale: float, softcap: float | None = None):
    if softcap is None:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, enable_gqa=k.shape[1] != q.shape[1])
    return eager_attention(q, k, v, mask, scale, softcap)


def eager_attention(q, k, v, mask, scale: float, softcap: float | None = None):
    """Reference path, also the only one for tanh soft-capped logits (Gemma2); softmax in float32."""
    groups = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    scores = (q @ k.transpose(-1, -2)) * scale
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    return torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype) @ v
