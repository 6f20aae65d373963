"""Merged export: a sharded Hugging Face checkpoint that transformers and our loaders read with the same logits; for
the encoders also the PEFT export."""
import json

import pytest
import torch
import transformers as tf
from peft import PeftModel

from model import load_pretrained
from model.classifier import load_classifier
from model.export import export_merged, export_peft
from model.lora import ENCODER_TARGETS, LoRALinear, add_lora

from fixtures import randomize_trainable
from hf_tiny import ENCODERS, padded_batch, save_tiny, tiny_encoder

MASK = torch.tensor([[1] * 9, [1] * 6 + [0] * 3, [0] * 5 + [1] * 4])
IDS = torch.randint(1, 97, (3, 9), generator=torch.Generator().manual_seed(0)) * MASK  # pad id 0
POSITIONS = (MASK.cumsum(1) - 1).clamp(min=0)  # transformers numbers left-padded rows from 0 otherwise


@pytest.mark.parametrize("family", ["qwen2", "gemma3_text"])
@torch.no_grad()
def test_merged_classifier_loads_in_transformers_and_back(family, tmp_path):
    save_tiny(family, tmp_path / "base")
    ours = load_classifier(tmp_path / "base")
    add_lora(ours, r=4, alpha=8)
    randomize_trainable(ours)
    before = {k: v.clone() for k, v in ours.state_dict().items()}
    want = ours(IDS, MASK)
    export_merged(ours, tmp_path / "merged", max_shard_bytes=40_000)

    assert all(torch.equal(v, ours.state_dict()[k]) for k, v in before.items())
    assert not any(m.merged for m in ours.modules() if isinstance(m, LoRALinear))
    index = json.loads((tmp_path / "merged" / "model.safetensors.index.json").read_text())
    files = sorted(set(index["weight_map"].values()))
    assert len(files) > 2 and all((tmp_path / "merged" / f).is_file() for f in files)
    assert "score.weight" in index["weight_map"] and not any("lora" in k for k in index["weight_map"])

    hf = tf.AutoModelForSequenceClassification.from_pretrained(tmp_path / "merged", attn_implementation="eager")
    assert type(hf).__name__.endswith("ForSequenceClassification") and hf.config.num_labels == 2
    assert (hf(IDS, attention_mask=MASK, position_ids=POSITIONS).logits - want).abs().max() < 1e-4
    back = load_classifier(tmp_path / "merged")
    assert (back(IDS, MASK) - want).abs().max() < 1e-5


@torch.no_grad()
def test_merged_decoder_loads_in_transformers_and_back(tmp_path):
    save_tiny("qwen2", tmp_path / "base")  # untied LM head
    ours = load_pretrained(tmp_path / "base")
    add_lora(ours, r=4, alpha=8, targets=("q_proj", "down_proj"))
    randomize_trainable(ours)
    want = ours.lm_logits(ours(IDS, MASK))
    export_merged(ours, tmp_path / "merged", pad_token_id=7)

    hf = tf.AutoModelForCausalLM.from_pretrained(tmp_path / "merged", attn_implementation="eager")
    assert hf.config.architectures == ["Qwen2ForCausalLM"] and hf.config.pad_token_id == 7
    got = hf(IDS, attention_mask=MASK, position_ids=POSITIONS).logits
    assert (got - want)[MASK.bool()].abs().max() < 1e-4
    back = load_pretrained(tmp_path / "merged")
    assert (back.lm_logits(back(IDS, MASK)) - want)[MASK.bool()].abs().max() < 1e-5


@pytest.mark.parametrize("family", ENCODERS)
@torch.no_grad()
def test_encoder_exports_load_in_transformers_and_peft_with_the_same_logits(family, tmp_path):
    """Merged: a *ForSequenceClassification checkpoint (BERT's pooler carrying its merged LoRA); PEFT: an adapter
    with the head in modules_to_save, on the base checkpoint (here a bare encoder, as MiniLM is)."""
    hf = tiny_encoder(family)
    hf.base_model.save_pretrained(tmp_path / "base")  # BertModel / RobertaModel: no head
    ours = load_classifier(tmp_path / "base")
    add_lora(ours, r=4, alpha=8, targets=ENCODER_TARGETS)
    randomize_trainable(ours)
    ids, mask = padded_batch("right", length=9, pad=hf.config.pad_token_id)
    types = (torch.arange(9) >= 3).long() * mask if family == "bert" else None
    want = ours(ids, mask, token_type_ids=types)
    export_merged(ours, tmp_path / "merged")
    merged = tf.AutoModelForSequenceClassification.from_pretrained(tmp_path / "merged", attn_implementation="eager")
    assert type(merged).__name__ == {"bert": "Bert", "roberta": "Roberta", "xlm-roberta": "XLMRoberta"}[family] + \
        "ForSequenceClassification"
    assert (merged(ids, attention_mask=mask, token_type_ids=types).logits - want).abs().max() < 1e-5
    assert (load_classifier(tmp_path / "merged")(ids, mask, token_type_ids=types) - want).abs().max() < 1e-5

    export_peft(ours, tmp_path / "peft", base_model_name_or_path=str(tmp_path / "base"))
    base = tf.AutoModelForSequenceClassification.from_pretrained(tmp_path / "base", num_labels=2,
                                                                  attn_implementation="eager")
    peft = PeftModel.from_pretrained(base, tmp_path / "peft").eval()
    assert (peft(input_ids=ids, attention_mask=mask, token_type_ids=types).logits - want).abs().max() < 1e-5
