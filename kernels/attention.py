"""Attention within packed examples: PyTorch SDPA where it is exact, FlexAttention on CUDA, eager math otherwise.

q: (B, H, T, D); k, v: (B, H_kv, S, D) with H a multiple of H_kv (grouped-query attention), S >= T (the
queries are the last T positions). Which keys a query sees comes from the decoder's example ids (B, S): 0 is
padding, k > 0 the k-th example of a row. A query attends causally to the keys of its own example, within
`window` positions when set; a padding query attends to itself only (its output is never used).

Shared-prefix rows (data.batching) add `suffix` ids (B, S): 0 on a shared prefix, j > 0 on the j-th suffix of
the row, and their `positions` (B, S). Example k is then a prefix followed by several suffixes; a suffix token
sees its prefix and its own suffix (causally), never another suffix, and the window counts distance in
positions (a suffix continues its prefix's positions), so every suffix sees what it would alone. Suffix id -1
marks a row's root, the tokens that all its examples begin with: every real token of the row sees it.

`attention_mask` picks the cheapest exact form of that mask for `attention`:

| case                                                   | CUDA                      | CPU                   |
|--------------------------------------------------------|---------------------------|-----------------------|
| rows of one example then padding, no window, no cache  | SDPA is_causal (*)        | SDPA is_causal (*)    |
| packed rows, left padding, sliding windows             | FlexAttention (BlockMask) | SDPA, boolean mask    |
| tanh soft-capping (Gemma2)                              | FlexAttention (score_mod) | eager, boolean mask   |
| with a KV cache (generation)                            | SDPA / eager, boolean mask | same                 |

Encoders (bidirectional, one example per row): SDPA with no mask, or `padding_mask`'s key mask.

(*) exact on real tokens; padding queries then attend to the real tokens before them (outputs never used).
FlexAttention has no backward on CPU, so it is only chosen for CUDA tensors (it runs forward on CPU for tests).
"""
import functools

import torch
import torch.nn.functional as F
from torch.nn.attention.flex_attention import BlockMask, create_block_mask, flex_attention


def attention(q, k, v, mask, scale: float, softcap: float | None = None, causal: bool = True, dropout: float = 0.0):
    """mask: None (causal; with causal=False, every key), a BlockMask, or a boolean (B, 1, T, S') mask with S' >= S
    (its last S keys are k's). `dropout` drops attention probabilities (the encoders' training; SDPA paths only)."""
    if isinstance(mask, BlockMask):
        return flex(q, k, v, mask, scale, softcap)
    if mask is not None:
        mask = mask[..., -k.shape[2]:]
    if softcap is not None:
        return eager_attention(q, k, v, mask, scale, softcap)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=causal and mask is None,
                                          scale=scale, enable_gqa=k.shape[1] != q.shape[1])


def example_mask(ids, window: int | None = None, num_queries: int | None = None, softcap: float | None = None,
                 suffix=None, positions=None):
    """The mask `attention` takes for example ids (B, S) and the last num_queries (default S) queries."""
    T, S = num_queries or ids.shape[1], ids.shape[1]
    if window is not None and window >= S:  # the window reaches back past the first key: it cuts nothing
        window = None
    if T < S:
        return dense_mask(ids, window, T)
    if suffix is None and window is None and (softcap is None or not ids.is_cuda) and one_example_per_row(ids):
        return None
    return block_mask(ids, window, suffix, positions) if ids.is_cuda else \
        dense_mask(ids, window, T, suffix, positions)


def padding_mask(ids):
    """The bidirectional (encoder) mask for `attention(..., causal=False)`: None when no row is padded, otherwise a
    boolean (B, 1, 1, S) key mask, True on real tokens (a padding query attends to the real keys; never used)."""
    real = ids != 0
    return None if bool(real.all()) else real[:, None, None]


def one_example_per_row(ids) -> bool:
    """Every row is 1, ..., 1, 0, ..., 0: one example, right-padded (or not padded)."""
    return bool((ids <= 1).all() and (ids[:, 1:] <= ids[:, :-1]).all())


def dense_mask(ids, window: int | None = None, num_queries: int | None = None, suffix=None, positions=None):
    """Boolean (B, 1, T, S) mask, True where a query may attend to a key."""
    keys = torch.arange(ids.shape[1], device=ids.device)
    queries = keys[ids.shape[1] - (num_queries or ids.shape[1]):]
    order = queries[:, None] - keys[None, :]
    allowed = (ids[:, queries, None] == ids[:, None, :]) & (ids[:, None, :] > 0)
    if suffix is not None:
        allowed = allowed & ((suffix[:, None, :] == 0) | (suffix[:, queries, None] == suffix[:, None, :])) | \
            ((suffix[:, None, :] < 0) & (ids[:, queries, None] > 0))
    allowed &= order >= 0
    if window:
        distance = order if positions is None else positions[:, queries, None] - positions[:, None, :]
        allowed &= distance < window
    return (allowed | (order == 0))[:, None]


def query_mask(ids, rows, cols, window: int | None = None, suffix=None, positions=None):
    """Boolean (N, 1, 1, S) mask of the N single queries at (rows, cols) of ids (B, S) over their own row's keys:
    the rows of dense_mask for those queries (their own example, causal, within the window)."""
    order = cols[:, None] - torch.arange(ids.shape[1], device=ids.device)
    allowed = ids[rows] == ids[rows, cols][:, None]
    if suffix is not None:
        allowed = allowed & ((suffix[rows] == 0) | (suffix[rows] == suffix[rows, cols][:, None])) | (suffix[rows] < 0)
    allowed &= order >= 0
    if window:
        distance = order if positions is None else positions[rows, cols][:, None] - positions[rows]
        allowed &= distance < window
    return allowed[:, None, None]


def block_mask(ids, window: int | None = None, suffix=None, positions=None) -> BlockMask:
    """FlexAttention's block-sparse form of dense_mask (queries = keys), for the layout `flex` runs it in: the
    batch as one row of B*T tokens padded to `flex_length(B*T)`. Fully masked blocks (across rows, padding) are
    skipped, and a compiled kernel serves every batch of the same padded length."""
    B, T = ids.shape
    n = flex_length(B * T)
    row = torch.arange(B, device=ids.device)[:, None]
    one_row = lambda x: F.pad(x.flatten(), (0, n - B * T))  # noqa: E731
    flat = one_row(torch.where(ids > 0, ids + row * (T + 1), 0))  # ids unique across rows
    rows = one_row((row + 1).expand(B, T))
    sub = one_row(torch.zeros_like(ids) if suffix is None else suffix)
    pos = one_row(torch.arange(T, device=ids.device).expand(B, T) if positions is None else positions)
    reach = torch.tensor(window or n, device=ids.device)  # a tensor, not a constant: one kernel with or without

    def mask_mod(b, h, q, kv):  # no in-place ops: compiled FlexAttention lowers this function to pointwise code
        same = (flat[q] == flat[kv]) & ((sub[kv] == 0) | (sub[kv] == sub[q]))
        root = (sub[kv] < 0) & (rows[q] == rows[kv]) & (flat[q] > 0)
        return ((same | root) & (flat[kv] > 0) & (q >= kv) & (pos[q] - pos[kv] < reach)) | (q == kv)

    return create_block_mask(mask_mod, 1, None, n, n, device=ids.device)


def flex_length(tokens: int) -> int:
    """`tokens` rounded up to 4, 5, 6 or 7 times a power of two (at least 32): compiled kernels have static shapes
    (dynamic ones fail to lower for FlexAttention on CPU), so a run compiles a few, at most 25% longer than needed."""
    step = max(2 ** (tokens.bit_length() - 3), 32)
    return -(-tokens // step) * step


@functools.cache
def compiled_flex_attention():
    """FlexAttention only runs as a fused kernel when compiled (once per process and padded length, then reused)."""
    return torch.compile(flex_attention, dynamic=False)


@torch.compiler.disable
def flex(q, k, v, mask: BlockMask, scale: float, softcap: float | None = None):
    """Kept out of compiled blocks (train.compile): they recompile with dynamic shapes, which FlexAttention's
    lowering fails on; this runs its own static-shape compiled kernel instead."""
    def capped(score, b, h, q_idx, kv_idx):
        return torch.tanh(score / softcap) * softcap

    B, H, T, D = q.shape
    n = mask.seq_lengths[0]

    def one_row(x):  # (B, H, T, D) -> (1, H, n, D), the layout of block_mask
        return F.pad(x.transpose(0, 1).reshape(1, x.shape[1], B * T, D), (0, 0, 0, n - B * T))

    run = compiled_flex_attention() if q.is_cuda else flex_attention
    out = run(one_row(q), one_row(k), one_row(v), score_mod=None if softcap is None else capped, block_mask=mask,
              scale=scale, enable_gqa=k.shape[1] != H)
    return out[0, :, : B * T].reshape(H, B, T, D).transpose(0, 1)


def eager_attention(q, k, v, mask, scale: float, softcap: float | None = None):
    """Reference path, also the CPU one for tanh soft-capped logits (Gemma2); softmax in float32.

    mask: boolean (B, 1, T, S), or None for causal attention of the last T queries."""
    groups = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    scores = (q @ k.transpose(-1, -2)) * scale
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    if mask is None:
        T, S = q.shape[2], k.shape[2]
        mask = torch.ones(T, S, dtype=torch.bool, device=q.device).tril(S - T)
    scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    return torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype) @ v
