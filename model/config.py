"""One config dataclass for every supported family, and its parsing from Hugging Face config.json.

Family differences are fields, not subclasses. The decoders:

| field                 | Qwen2 | Qwen3 | Gemma | Gemma2 | Gemma3 |
|-----------------------|-------|-------|-------|--------|--------|
| qkv_bias             | yes   | opt.  | opt.  | opt.   | opt.   |
| qk_norm               |       | yes   |       |        | yes    |
| norm_offset (1 + w)   |       |       | 1     | 1      | 1      |
| embed_scale (sqrt d)  |       |       | yes   | yes    | yes    |
| sandwich_norm         |       |       |       | yes    | yes    |
| attn / final softcap  |       |       |       | yes    |        |
| sliding layers        | opt.  | opt.  |       | 1 of 2 | 5 of 6 |
| local RoPE theta      |       |       |       |        | yes    |

The BERT-style encoders (`encoder`: bidirectional, post-norm LayerNorm with bias, GELU, learned absolute positions,
model/encoder.py) use the shared shape fields and these: `layer_norm_eps`, `max_position_embeddings`,
`type_vocab_size` (2 for BERT: segment A / B; 1 for RoBERTa), `position_offset` (RoBERTa and XLM-RoBERTa number
positions from pad_token_id + 1), and the dropout probabilities of config.json.
"""
from dataclasses import dataclass, field

from model.families import FAMILIES

ENCODERS = tuple(model_type for model_type, f in FAMILIES.items() if f.encoder)


@dataclass
class ModelConfig:
    model_type: str = "qwen3"
    vocab_size: int = 256
    hidden_size: int = 64
    intermediate_size: int = 128
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    head_dim: int = 16
    rms_norm_eps: float = 1e-6
    hidden_act: str = "silu"  # "silu" or "gelu_pytorch_tanh"; encoders "gelu" (exact, erf)
    tie_word_embeddings: bool = True
    qkv_bias: bool = False  # bias on the q/k/v projections (always on Qwen2)
    o_bias: bool = False  # bias on the output projection
    qk_norm: bool = False  # per-head RMSNorm of q and k before RoPE (Qwen3, Gemma3)
    norm_offset: float = 0.0  # RMSNorm scales by (norm_offset + weight): 1.0 for Gemma
    embed_scale: bool = False  # multiply embeddings by sqrt(hidden_size) (Gemma)
    sandwich_norm: bool = False  # extra norms after attention and after the MLP (Gemma2/3)
    query_pre_attn_scalar: float | None = None  # attention scale is this ** -0.5; None means head_dim
    attn_softcap: float | None = None  # tanh soft-capping of attention logits (Gemma2)
    final_softcap: float | None = None  # tanh soft-capping of LM logits (Gemma2)
    sliding_window: int | None = None
    layer_types: tuple[str, ...] = ()  # "full_attention" / "sliding_attention" per layer; empty = all full
    rope_theta: float = 10000.0
    rope_scale: float = 1.0  # linear RoPE scaling: positions are divided by this
    rope_local_theta: float | None = None  # Gemma3: RoPE base of sliding layers (which are never scaled)
    pad_token_id: int | None = None
    encoder: bool = False  # a BERT-style encoder (model/encoder.py); the fields below are its own
    layer_norm_eps: float = 1e-12
    max_position_embeddings: int = 512
    type_vocab_size: int = 0
    position_offset: int = 0  # RoBERTa: positions start at pad_token_id + 1
    hidden_dropout: float = 0.0  # after embeddings, attention output and MLP output (and before the head)
    attention_dropout: float = 0.0  # on the attention probabilities
    classifier_dropout: float = 0.0  # before the classification head
    hf: dict = field(default_factory=dict, repr=False)  # the text-level HF config this was parsed from

    def __post_init__(self):
        if not self.layer_types:
            self.layer_types = ("full_attention",) * self.num_layers
        self.layer_types = tuple(self.layer_types)
        if len(self.layer_types) != self.num_layers:
            raise ValueError(f"layer_types has {len(self.layer_types)} entries for {self.num_layers} layers")
        if "sliding_attention" in self.layer_types and not self.sliding_window:
            raise ValueError("sliding_attention layers need a sliding_window")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads {self.num_heads} is not a multiple of num_kv_heads {self.num_kv_heads}")
        if self.hidden_act not in (("gelu",) if self.encoder else ("silu", "gelu_pytorch_tanh")):
            raise ValueError(f"unsupported hidden_act {self.hidden_act!r}")

    @classmethod
    def from_hf(cls, hf: dict, source: str = "config.json") -> "ModelConfig":
        """Parse a Hugging Face config dict (multimodal Gemma3 configs are reduced to their text part)."""
        if hf.get("model_type") == "gemma3":
            hf = gemma3_text_config(hf.get("text_config") or {})
        model_type = hf.get("model_type")
        if model_type not in FAMILIES:
            raise ValueError(f"{source}: unknown model_type {model_type!r}; supported: {', '.join(FAMILIES)}")

        def get(key, default=None):
            return hf[key] if hf.get(key) is not None else default

        if model_type in ENCODERS:
            return encoder_config(cls, hf, get)
        gemma = model_type.startswith("gemma")
        hidden, heads = hf["hidden_size"], hf["num_attention_heads"]
        layers = hf["num_hidden_layers"]
        act = get("hidden_activation") or get("hidden_act", "silu")
        theta, scale, local_theta = rope_settings(hf)
        return cls(
            model_type=model_type,
            vocab_size=hf["vocab_size"],
            hidden_size=hidden,
            intermediate_size=hf["intermediate_size"],
            num_layers=layers,
            num_heads=heads,
            num_kv_heads=get("num_key_value_heads", heads),
            head_dim=get("head_dim", hidden // heads),
            rms_norm_eps=get("rms_norm_eps", 1e-6),
            # Gemma 1 checkpoints say "gelu" but were trained with the tanh approximation (as transformers does).
            hidden_act="gelu_pytorch_tanh" if gemma and act == "gelu" else act,
            tie_word_embeddings=get("tie_word_embeddings", gemma),
            qkv_bias=model_type == "qwen2" or get("attention_bias", False),
            o_bias=model_type != "qwen2" and get("attention_bias", False),
            qk_norm=model_type in ("qwen3", "gemma3_text"),
            norm_offset=1.0 if gemma else 0.0,
            embed_scale=gemma,
            sandwich_norm=model_type in ("gemma2", "gemma3_text"),
            query_pre_attn_scalar=get("query_pre_attn_scalar"),
            attn_softcap=get("attn_logit_softcapping"),
            final_softcap=get("final_logit_softcapping"),
            sliding_window=get("sliding_window"),
            layer_types=tuple(layer_types(hf, model_type, layers)),
            rope_theta=theta,
            rope_scale=scale,
            rope_local_theta=local_theta,
            pad_token_id=get("pad_token_id"),
            hf=hf,
        )


def encoder_config(cls, hf: dict, get) -> "ModelConfig":
    """A BERT / RoBERTa / XLM-RoBERTa config.json (BertConfig's defaults where a key is absent)."""
    model_type, heads = hf["model_type"], hf["num_attention_heads"]
    if get("position_embedding_type", "absolute") != "absolute":
        raise ValueError(f"unsupported position_embedding_type {hf['position_embedding_type']!r} (supported: absolute)")
    pad = get("pad_token_id", 0 if model_type == "bert" else 1)
    return cls(
        model_type=model_type, vocab_size=hf["vocab_size"], hidden_size=hf["hidden_size"],
        intermediate_size=hf["intermediate_size"], num_layers=hf["num_hidden_layers"], num_heads=heads,
        num_kv_heads=heads, head_dim=hf["hidden_size"] // heads, hidden_act=get("hidden_act", "gelu"),
        tie_word_embeddings=False, qkv_bias=True, o_bias=True, pad_token_id=pad, encoder=True,
        layer_norm_eps=get("layer_norm_eps", 1e-12), max_position_embeddings=get("max_position_embeddings", 512),
        type_vocab_size=get("type_vocab_size", 2), position_offset=0 if model_type == "bert" else pad + 1,
        hidden_dropout=get("hidden_dropout_prob", 0.1), attention_dropout=get("attention_probs_dropout_prob", 0.1),
        classifier_dropout=get("classifier_dropout", get("hidden_dropout_prob", 0.1)),
        hf=hf,
    )


def layer_types(hf: dict, model_type: str, layers: int) -> list[str]:
    """Attention kind per layer, following each family's rule when config.json does not list them."""
    if hf.get("layer_types"):
        return list(hf["layer_types"])
    if model_type == "gemma2":
        return ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(layers)]
    if model_type == "gemma3_text":
        pattern = hf.get("sliding_window_pattern") or 6
        return ["sliding_attention" if (i + 1) % pattern else "full_attention" for i in range(layers)]
    if model_type in ("qwen2", "qwen3") and hf.get("use_sliding_window") and hf.get("sliding_window"):
        first = hf.get("max_window_layers", layers)
        return ["sliding_attention" if i >= first else "full_attention" for i in range(layers)]
    return ["full_attention"] * layers


def rope_settings(hf: dict) -> tuple[float, float, float | None]:
    """(theta, linear scale, local theta) from legacy rope_theta/rope_scaling or the newer rope_parameters."""
    params = hf.get("rope_parameters") or {}
    if "full_attention" in params:  # per layer kind (Gemma3 in transformers >= 5)
        full, local = params["full_attention"], params.get("sliding_attention") or {}
    else:
        full = {**(hf.get("rope_scaling") or {}), **params}
        local = {"rope_theta": hf["rope_local_base_freq"]} if hf.get("rope_local_base_freq") else {}
    kind = full.get("rope_type") or full.get("type") or "default"
    if kind not in ("default", "linear"):
        raise ValueError(f"unsupported rope_type {kind!r} (supported: default, linear)")
    theta = full.get("rope_theta") or hf.get("rope_theta") or 10000.0
    scale = float(full.get("factor", 1.0)) if kind == "linear" else 1.0
    return float(theta), scale, (float(local["rope_theta"]) if local.get("rope_theta") else None)


# transformers' Gemma3TextConfig defaults: the multimodal Gemma3 configs omit every field equal to them.
GEMMA3_TEXT_DEFAULTS = dict(
    model_type="gemma3_text", vocab_size=262_208, hidden_size=2304, intermediate_size=9216,
    num_hidden_layers=26, num_attention_heads=8, num_key_value_heads=4, head_dim=256,
    hidden_activation="gelu_pytorch_tanh", rms_norm_eps=1e-6, pad_token_id=0, tie_word_embeddings=True,
    query_pre_attn_scalar=256, sliding_window=4096, sliding_window_pattern=6,
    rope_theta=1_000_000.0, rope_local_base_freq=10_000.0,
)


def gemma3_text_config(text_config: dict) -> dict:
    """The text part of a multimodal Gemma3 config, with the missing keys filled from transformers' defaults."""
    filled = {**GEMMA3_TEXT_DEFAULTS, **{k: v for k, v in text_config.items() if v is not None}}
    filled["model_type"] = "gemma3_text"
    return filled
