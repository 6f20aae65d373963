"""config.json parsing: the method's real configs, legacy and new RoPE keys, Gemma3's sparse multimodal configs."""
import json

import pytest
import torch
import transformers as tf

from data.inputs import TEMPLATES, model_family
from model import Decoder, ModelConfig
from model.config import gemma3_text_config
from model.families import FAMILIES

from hf_tiny import CONFIGS, ENCODER_CONFIGS

# Published non-embedding parameter counts (../shared/configs/SOURCES.md).
PUBLISHED_NON_EMBEDDING = {
    "google__gemma-3-12b-pt.json": 10_759e6,
    "google__gemma-3-4b-pt.json": 3_209e6,
    "google__gemma-3-1b-pt.json": 698e6,
    "google__gemma-2-9b.json": 8_324_201_984,
    "google__gemma-2b.json": 1_981_884_416,
    "Qwen__Qwen3-14B.json": 13.2e9,
    "Qwen__Qwen3-8B.json": 6.95e9,
    "Qwen__Qwen3-0.6B.json": 0.44e9,
    "Qwen__Qwen2.5-14B.json": 13.1e9,
    "Qwen__Qwen2.5-0.5B.json": 0.36e9,
}
# The Qwen2 blog's 7.07B / 5.98B disagree with Qwen2-7B's own config.json (28 layers of hidden 3584, MLP 18944
# give 6.53B without embeddings by direct arithmetic); its model card's total of 7.62B is the consistent figure.
PUBLISHED_TOTAL = {"Qwen__Qwen2-7B.json": 7.62e9}


@pytest.mark.parametrize("name", sorted(PUBLISHED_NON_EMBEDDING) + sorted(PUBLISHED_TOTAL))
def test_real_configs_build_on_meta_with_published_size(shared, name):
    path = shared / "configs" / name
    config = ModelConfig.from_hf(json.loads(path.read_text()), source=str(path))
    with torch.device("meta"):
        model = Decoder(config)
    if name in PUBLISHED_TOTAL:
        assert model.num_params() == pytest.approx(PUBLISHED_TOTAL[name], rel=0.01)
    else:
        assert model.num_params(embeddings=False) == pytest.approx(PUBLISHED_NON_EMBEDDING[name], rel=0.01)


def test_gemma3_multimodal_config_takes_text_defaults(shared):
    config = ModelConfig.from_hf(json.loads((shared / "configs" / "google__gemma-3-12b-pt.json").read_text()))
    assert (config.model_type, config.vocab_size, config.head_dim) == ("gemma3_text", 262_208, 256)
    assert config.query_pre_attn_scalar == 256 and config.sliding_window == 1024
    assert (config.rope_theta, config.rope_scale, config.rope_local_theta) == (1e6, 8.0, 1e4)
    assert config.layer_types[:6] == ("sliding_attention",) * 5 + ("full_attention",)
    assert config.qk_norm and config.sandwich_norm and config.norm_offset == 1.0


def test_gemma_legacy_gelu_means_tanh_approximation(shared):
    config = ModelConfig.from_hf(json.loads((shared / "configs" / "google__gemma-2b.json").read_text()))
    assert config.hidden_act == "gelu_pytorch_tanh" and config.num_kv_heads == 1 and config.tie_word_embeddings


def test_legacy_and_new_rope_keys_agree():
    base = dict(model_type="qwen2", vocab_size=10, hidden_size=8, intermediate_size=8, num_hidden_layers=1,
                num_attention_heads=2)
    legacy = ModelConfig.from_hf({**base, "rope_theta": 5e5, "rope_scaling": {"type": "linear", "factor": 4.0}})
    new = ModelConfig.from_hf({**base, "rope_parameters": {"rope_type": "linear", "rope_theta": 5e5, "factor": 4.0}})
    assert (legacy.rope_theta, legacy.rope_scale) == (new.rope_theta, new.rope_scale) == (5e5, 4.0)

    gemma3 = gemma3_text_config({"num_hidden_layers": 2})
    per_kind = {**gemma3, "rope_parameters": {"full_attention": {"rope_type": "default", "rope_theta": 1e6},
                                              "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}}}
    assert ModelConfig.from_hf(gemma3).rope_local_theta == ModelConfig.from_hf(per_kind).rope_local_theta == 1e4


def test_qwen_sliding_window_only_when_enabled():
    base = dict(model_type="qwen2", vocab_size=10, hidden_size=8, intermediate_size=8, num_hidden_layers=4,
                num_attention_heads=2, sliding_window=16, max_window_layers=2)
    assert set(ModelConfig.from_hf(base).layer_types) == {"full_attention"}
    on = ModelConfig.from_hf({**base, "use_sliding_window": True}).layer_types
    assert on == ("full_attention",) * 2 + ("sliding_attention",) * 2


@pytest.mark.parametrize("change, message", [
    ({"model_type": "llama"}, "some/config.json: unknown model_type 'llama'"),
    ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "unsupported rope_type 'yarn'"),
    ({"num_key_value_heads": 3}, "not a multiple"),
])
def test_unsupported_configs_fail_clearly(change, message):
    hf = {**dict(model_type="qwen3", vocab_size=10, hidden_size=8, intermediate_size=8, num_hidden_layers=1,
                 num_attention_heads=4), **change}
    with pytest.raises(ValueError, match=message):
        ModelConfig.from_hf(hf, source="some/config.json")


def test_encoder_configs_parse_as_transformers_defines_them(minilm):
    """MiniLM's config.json (BertModel); RoBERTa's positions start at pad + 1; BertConfig's defaults fill the rest;
    what the encoder does not implement is refused by name."""
    minilm_cfg = ModelConfig.from_hf(json.loads((minilm / "config.json").read_text()))
    assert minilm_cfg.encoder and (minilm_cfg.num_layers, minilm_cfg.hidden_size, minilm_cfg.head_dim) == (6, 384, 32)
    assert (minilm_cfg.type_vocab_size, minilm_cfg.position_offset, minilm_cfg.layer_norm_eps) == (2, 0, 1e-12)
    assert minilm_cfg.hidden_act == "gelu" and minilm_cfg.hidden_dropout == minilm_cfg.classifier_dropout == 0.1
    base = dict(vocab_size=10, hidden_size=8, intermediate_size=8, num_hidden_layers=1, num_attention_heads=2)
    xlmr = ModelConfig.from_hf({**base, "model_type": "xlm-roberta", "pad_token_id": 1, "type_vocab_size": 1,
                                "classifier_dropout": 0.2})
    assert (xlmr.position_offset, xlmr.type_vocab_size, xlmr.classifier_dropout, xlmr.max_position_embeddings) == \
        (2, 1, 0.2, 512)
    with pytest.raises(ValueError, match="unsupported position_embedding_type 'relative_key'"):
        ModelConfig.from_hf({**base, "model_type": "bert", "position_embedding_type": "relative_key"})
    with pytest.raises(ValueError, match="unsupported hidden_act 'relu'"):
        ModelConfig.from_hf({**base, "model_type": "roberta", "hidden_act": "relu"})


@pytest.mark.parametrize("model_type", sorted(FAMILIES))
def test_every_registered_family_round_trips(model_type):
    """One registry entry per family: a tiny transformers config of it parses, its template exists, and the classes
    an export names are transformers' own."""
    entry = FAMILIES[model_type]
    hf = (CONFIGS | ENCODER_CONFIGS)[model_type]().to_dict()
    parsed = ModelConfig.from_hf(hf)
    assert parsed.model_type == model_type and parsed.encoder == entry.encoder
    assert model_family(model_type) == entry.template and entry.template in TEMPLATES
    assert all(hasattr(tf, name) for name in entry.architectures), entry.architectures
    assert tf.AutoConfig.for_model(model_type).model_type == model_type
