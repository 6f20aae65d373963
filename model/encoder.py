"""The BERT-style encoder (BERT / MiniLM, RoBERTa, XLM-RoBERTa): embeddings, post-norm blocks, the pooler.

What differs from the decoder (model/decoder.py), all from model.ModelConfig: learned absolute positions (RoBERTa's
numbered from pad_token_id + 1) and token types added to the word embeddings, then a LayerNorm; bidirectional
attention over the row's real tokens; post-norm blocks (LayerNorm with bias after each residual sum); biases on
every linear layer; an exact-GELU MLP without a gate; dropout after the embeddings, the attention output and the
MLP output, and on the attention probabilities (training only). Attention and dropout are the decoder's kernels.

Module names mirror Hugging Face's BertModel / RobertaModel (`embeddings.word_embeddings`,
`encoder.layer.N.attention.self.query`, `...attention.output.dense`, `...intermediate.dense`, `...output.dense`,
`pooler.dense`), so checkpoints map by name. `attention_mask` is 0 on padding and 1 on real tokens, one example
per row (packing is decoder-only), padded on either side: positions count from each row's first real token.
"""
import torch
import torch.nn.functional as F
from torch import nn

from kernels import attention, dropout, padding_mask
from model.config import ModelConfig
from model.decoder import positions_from_mask


class Embeddings(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.position_embeddings = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size)
        self.token_type_embeddings = nn.Embedding(cfg.type_vocab_size, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.offset, self.p = cfg.position_offset, cfg.hidden_dropout

    def forward(self, input_ids, position_ids, token_type_ids):
        if position_ids.max() + self.offset >= self.position_embeddings.num_embeddings:
            raise ValueError(f"rows of {int(position_ids.max()) + 1} tokens are longer than the model's "
                             f"{self.position_embeddings.num_embeddings - self.offset} positions")
        types = self.token_type_embeddings.weight[0] if token_type_ids is None else \
            self.token_type_embeddings(token_type_ids)
        x = self.word_embeddings(input_ids) + types + self.position_embeddings(position_ids + self.offset)
        return dropout(self.LayerNorm(x), self.p, self.training)


class SelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.num_heads, self.head_dim, self.p = cfg.num_heads, cfg.head_dim, cfg.attention_dropout
        self.query, self.key, self.value = (nn.Linear(cfg.hidden_size, cfg.hidden_size) for _ in range(3))

    def forward(self, x, mask, queries=None):
        """x (B, T, hidden) -> (B, T, hidden); with `queries` (B, Q, hidden), some of x's tokens, their outputs
        alone, (B, Q, hidden): keys and values come from every token, queries from those."""
        B = len(x)
        heads = lambda t: t.view(B, -1, self.num_heads, self.head_dim).transpose(1, 2)  # noqa: E731
        k, v = heads(self.key(x)), heads(self.value(x))
        q = heads(self.query(x if queries is None else queries))
        out = attention(q, k, v, mask, self.head_dim ** -0.5, causal=False, dropout=self.p if self.training else 0.0)
        return out.transpose(1, 2).reshape(B, q.shape[2], -1)


class DenseNorm(nn.Module):
    """dense, dropout, then LayerNorm of the residual sum: HF's BertSelfOutput and BertOutput."""

    def __init__(self, cfg: ModelConfig, fan_in: int):
        super().__init__()
        self.dense = nn.Linear(fan_in, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.p = cfg.hidden_dropout

    def forward(self, x, residual):
        return self.LayerNorm(dropout(self.dense(x), self.p, self.training) + residual)


class Layer(nn.Module):
    """Post-norm block: x = LN(x + attention(x)); x = LN(x + dense(gelu(dense(x))))."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.attention = nn.Module()
        self.attention.self, self.attention.output = SelfAttention(cfg), DenseNorm(cfg, cfg.hidden_size)
        self.intermediate = nn.Module()
        self.intermediate.dense = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.output = DenseNorm(cfg, cfg.intermediate_size)

    def forward(self, x, mask, first=None):
        """With `first` (B,), the block's output at each row's token first[b] alone, (B, 1, hidden)."""
        queries = None if first is None else x[torch.arange(len(x), device=x.device), first][:, None]
        x = self.attention.output(self.attention.self(x, mask, queries), x if first is None else queries)
        return self.output(F.gelu(self.intermediate.dense(x)), x)


class Pooler(nn.Module):
    """tanh(dense(first token)): BERT's pretrained [CLS] pooler."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)

    def forward(self, first):
        return torch.tanh(self.dense(first))


def checkpoint_name(key: str, base: str, pooler: bool) -> str | None:
    """A checkpoint tensor's name in an EncoderClassifier (whose encoder is attribute `base`, "bert" or "roberta"),
    or None for what it does not use: masked-LM / next-sentence heads, position-id buffers, RoBERTa's pooler. A bare
    BertModel's keys (sentence-transformers checkpoints such as all-MiniLM-L6-v2) have no prefix."""
    if key.startswith(("lm_head.", "cls.")) or key.endswith((".position_ids", ".token_type_ids")):
        return None
    name = key if key.startswith((f"{base}.", "classifier.")) else f"{base}.{key}"
    return None if not pooler and name.startswith(f"{base}.pooler.") else name


class Encoder(nn.Module):
    """Hidden states (B, T, hidden) after the last block, or with `first` (B,) those of each row's token first[b]
    alone, (B, hidden): the last block then computes its query, output, MLP and norms for that token only (the
    classifier pools it), the same numbers less work. `pooler` (BERT) maps a pooled state to (B, hidden)."""

    def __init__(self, cfg: ModelConfig, pooler: bool = True):
        super().__init__()
        self.config = cfg
        self.embeddings = Embeddings(cfg)
        self.encoder = nn.Module()
        self.encoder.layer = nn.ModuleList(Layer(cfg) for _ in range(cfg.num_layers))
        self.pooler = Pooler(cfg) if pooler else None

    @property
    def layers(self) -> nn.ModuleList:
        """The blocks (what activation checkpointing, compile and FSDP wrap), as Decoder.layers."""
        return self.encoder.layer

    def forward(self, input_ids, attention_mask=None, position_ids=None, token_type_ids=None, first=None):
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        if (mask > 1).any():
            raise ValueError("attention_mask: packed rows (example ids > 1) are decoder-only; an encoder takes one "
                             "example per row")
        if position_ids is None:
            position_ids = positions_from_mask(mask)
        x = self.embeddings(input_ids, position_ids, token_type_ids)
        keys = padding_mask(mask)
        for layer in self.layers[:-1]:
            x = layer(x, keys)
        return self.layers[-1](x, keys) if first is None else self.layers[-1](x, keys, first)[:, 0]
