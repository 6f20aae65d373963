"""The decoder: RMSNorm, rotary embedding, attention, gated MLP, block, and the stack, for every family.

Module names mirror Hugging Face's (`embed_tokens`, `layers.N.self_attn.q_proj`, ...), so a checkpoint's tensors
map onto `Decoder.state_dict()` by dropping the leading "model.".

Rows are described by `attention_mask` (B, T) of ints: 0 is padding and k > 0 marks the k-th example of the row.
An ordinary padded batch has 1 on every real token; a packed row (several examples back to back) reads
1,1,1,2,2,3,3,0,0. A token attends causally to the tokens of its own example only, so packing needs nothing else.
Shared-prefix rows add `suffix_ids` (0 on an example's shared prefix, j > 0 on the row's j-th suffix, -1 on the
row's root) with their `position_ids`: each suffix sees the root, its prefix and itself, at the positions it would
have alone (kernels.attention).
"""
import math

import torch
from torch import nn

from kernels import apply_rotary, attention, example_mask, gated_act, query_mask, rms_norm
from model.config import ModelConfig


class RMSNorm(nn.Module):
    """Qwen: weight * norm(x.float()).type_as(x); Gemma (offset 1): (norm(x.float()) * (1 + weight)).type_as(x)."""

    def __init__(self, dim: int, eps: float, offset: float):
        super().__init__()
        self.eps, self.offset = eps, offset
        self.weight = nn.Parameter(torch.zeros(dim) if offset else torch.ones(dim))

    def forward(self, x):
        return rms_norm(x, self.weight, self.eps, self.offset)


def rotary(position_ids, head_dim: int, theta: float, scale: float):
    """cos and sin of shape (B, T, 1, head_dim), computed in float32 (they broadcast over heads)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=position_ids.device).float() / head_dim))
    freqs = position_ids[..., None].float() * (inv_freq / scale)
    angles = torch.cat([freqs, freqs], dim=-1)[:, :, None]
    return angles.cos(), angles.sin()


def positions_from_mask(mask):
    """Position of every token within its own example (0 on padding)."""
    index = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    starts = torch.ones_like(mask, dtype=torch.bool)
    starts[:, 1:] = mask[:, 1:] != mask[:, :-1]
    first = torch.where(starts, index, 0).cummax(dim=1).values
    return (index - first) * (mask > 0)


def layer_masks(mask, sliding_window: int | None, num_queries: int | None = None, softcap: float | None = None,
                suffix=None, positions=None):
    """Per kind of layer, what kernels.attention takes: causal, within one example, windowed on sliding layers.

    `mask` covers all S keys (cached ones first); the queries are its last T = num_queries tokens; `suffix` and
    `positions` describe shared-prefix rows. kernels.example_mask picks the form: None (plain causal), a boolean
    (B, 1, T, S) mask or a BlockMask.
    """
    full = example_mask(mask, None, num_queries, softcap, suffix, positions)
    if not sliding_window:
        return {"full_attention": full}
    if sliding_window >= mask.shape[1]:  # the window reaches past the first key: the same mask, built once
        return {"full_attention": full, "sliding_attention": full}
    return {"full_attention": full,
            "sliding_attention": example_mask(mask, sliding_window, num_queries, softcap, suffix, positions)}


class KVCache:
    """Keys and values of the tokens seen so far, per layer; a sliding-window layer keeps only its last window."""

    def __init__(self, cfg: ModelConfig):
        self.keep = [cfg.sliding_window - 1 if kind == "sliding_attention" else None for kind in cfg.layer_types]
        self.keys, self.values = [None] * cfg.num_layers, [None] * cfg.num_layers

    def update(self, layer: int, k, v):
        """Append this step's k, v (B, H_kv, T, D); returns the keys and values to attend to."""
        if self.keys[layer] is not None:
            k, v = torch.cat([self.keys[layer], k], dim=2), torch.cat([self.values[layer], v], dim=2)
        keep = self.keep[layer]
        self.keys[layer], self.values[layer] = (k, v) if keep is None else (k[:, :, -keep:], v[:, :, -keep:])
        return k, v


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.layer = layer
        self.num_heads, self.num_kv_heads, self.head_dim = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        self.scale = (cfg.query_pre_attn_scalar or cfg.head_dim) ** -0.5
        self.softcap = cfg.attn_softcap
        self.q_proj = nn.Linear(cfg.hidden_size, cfg.num_heads * cfg.head_dim, bias=cfg.qkv_bias)
        self.k_proj = nn.Linear(cfg.hidden_size, cfg.num_kv_heads * cfg.head_dim, bias=cfg.qkv_bias)
        self.v_proj = nn.Linear(cfg.hidden_size, cfg.num_kv_heads * cfg.head_dim, bias=cfg.qkv_bias)
        self.o_proj = nn.Linear(cfg.num_heads * cfg.head_dim, cfg.hidden_size, bias=cfg.o_bias)
        self.q_norm = RMSNorm(cfg.head_dim, cfg.rms_norm_eps, cfg.norm_offset) if cfg.qk_norm else None
        self.k_norm = RMSNorm(cfg.head_dim, cfg.rms_norm_eps, cfg.norm_offset) if cfg.qk_norm else None

    def forward(self, x, rope, mask, cache: KVCache | None = None, pooled=None):
        """x (B, T, hidden) -> (B, T, hidden); with `pooled` (rows, cols) and its query_mask, the outputs of
        those N tokens only, (N, 1, hidden): keys and values come from every token, queries from those alone."""
        B, T, _ = x.shape
        k = self.k_proj(x).view(B, T, self.num_kv_heads, self.head_dim)
        v = self.v_proj(x).view(B, T, self.num_kv_heads, self.head_dim).transpose(1, 2)
        k = apply_rotary(k if self.k_norm is None else self.k_norm(k), *rope).transpose(1, 2)
        if cache is not None:
            k, v = cache.update(self.layer, k, v)
        if pooled is not None:  # the pooled tokens' queries, each over its own row's keys
            x, rope = x[pooled][:, None], [r[pooled][:, None] for r in rope]
            k, v = k[pooled[0]], v[pooled[0]]
        q = self.q_proj(x).view(*x.shape[:2], self.num_heads, self.head_dim)
        q = apply_rotary(q if self.q_norm is None else self.q_norm(q), *rope).transpose(1, 2)
        out = attention(q, k, v, mask, self.scale, self.softcap)
        return self.o_proj(out.transpose(1, 2).reshape(*x.shape[:2], -1))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)
        self.act = cfg.hidden_act

    def forward(self, x):
        return self.down_proj(gated_act(self.gate_proj(x), self.up_proj(x), self.act))


class Block(nn.Module):
    """Pre-norm block. Without sandwich norms, HF calls the pre-MLP norm `post_attention_layernorm`."""

    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        norm = lambda: RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, cfg.norm_offset)  # noqa: E731
        self.self_attn, self.mlp = Attention(cfg, layer), MLP(cfg)
        self.input_layernorm, self.post_attention_layernorm = norm(), norm()
        self.sandwich = cfg.sandwich_norm
        if cfg.sandwich_norm:
            self.pre_feedforward_layernorm, self.post_feedforward_layernorm = norm(), norm()

    def forward(self, x, rope, mask, cache=None, pooled=None):
        """With `pooled` (rows, cols), the block's output at those tokens only, (N, 1, hidden)."""
        attended = self.self_attn(self.input_layernorm(x), rope, mask, cache, pooled)
        if pooled is not None:
            x = x[pooled][:, None]
        if self.sandwich:
            x = x + self.post_attention_layernorm(attended)
            return x + self.post_feedforward_layernorm(self.mlp(self.pre_feedforward_layernorm(x)))
        x = x + attended
        return x + self.mlp(self.post_attention_layernorm(x))


class Decoder(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(Block(cfg, i) for i in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, cfg.norm_offset)
        self.lm_head = None if cfg.tie_word_embeddings else nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)

    def forward(self, input_ids, attention_mask=None, position_ids=None, cache: KVCache | None = None,
                pooled=None, suffix_ids=None):
        """Final hidden states (B, T, hidden_size) after the last norm.

        With a cache (generation), `attention_mask` covers the cached tokens and the T new ones. With `pooled`
        (rows, cols) of N tokens (a classifier's last tokens), the final hidden states of those only, (N,
        hidden_size): the last block computes its queries, MLP and norm for them alone, the same numbers less work.
        Shared-prefix rows need their `suffix_ids` and `position_ids` (see the module's docstring).
        """
        cfg = self.config
        T = input_ids.shape[1]
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        if suffix_ids is not None and (position_ids is None or cache is not None):
            raise ValueError("shared-prefix rows (suffix_ids) need their position_ids, and no KV cache")
        if position_ids is None:
            position_ids = positions_from_mask(mask)[:, -T:]
        x = self.embed_tokens(input_ids)
        if cfg.embed_scale:  # the scale is rounded to the activation dtype, as in the reference
            x = x * torch.tensor(math.sqrt(cfg.hidden_size), dtype=x.dtype)
        layout = (suffix_ids, None if suffix_ids is None else position_ids)  # how suffixes see their prefix
        masks = layer_masks(mask, cfg.sliding_window, T, cfg.attn_softcap, *layout)
        global_rope = rotary(position_ids, cfg.head_dim, cfg.rope_theta, cfg.rope_scale)
        ropes = {"full_attention": global_rope, "sliding_attention": global_rope}
        if cfg.rope_local_theta:
            ropes["sliding_attention"] = rotary(position_ids, cfg.head_dim, cfg.rope_local_theta, 1.0)
        blocks = list(zip(self.layers, cfg.layer_types))
        for layer, kind in blocks if pooled is None else blocks[:-1]:
            x = layer(x, ropes[kind], masks[kind], cache)
        if pooled is None:
            return self.norm(x)
        layer, kind = blocks[-1]  # the last block, for the pooled tokens' queries alone
        window = cfg.sliding_window if kind == "sliding_attention" else None
        return self.norm(layer(x, ropes[kind], query_mask(mask, *pooled, window, *layout), None, pooled)[:, 0])

    def lm_logits(self, hidden):
        """Language-model logits from hidden states (with Gemma2's final soft-capping)."""
        if self.lm_head is None and not self.config.tie_word_embeddings:
            raise RuntimeError("this decoder's LM head was dropped (a SequenceClassifier's decoder has none)")
        weight = self.embed_tokens.weight if self.lm_head is None else self.lm_head.weight
        logits = hidden @ weight.T
        if self.config.final_softcap:
            logits = torch.tanh(logits / self.config.final_softcap) * self.config.final_softcap
        return logits

    def num_params(self, embeddings: bool = True) -> int:
        """Parameter count; without embeddings excludes the token embeddings and an untied LM head."""
        total = sum(p.numel() for p in self.parameters())
        if embeddings:
            return total
        return total - self.embed_tokens.weight.numel() - (self.lm_head.weight.numel() if self.lm_head else 0)
