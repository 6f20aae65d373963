"""The encoders (BERT, RoBERTa, XLM-RoBERTa) against transformers' *ForSequenceClassification, on tiny random
checkpoints and on the real all-MiniLM-L6-v2; padding on either side; LoRA on the encoder's layers."""
import copy
import logging

import pytest
import torch
import transformers as tf

from data.inputs import encode, pad_token_id, token_types
from data.records import Record, read_records
from model.classifier import EncoderClassifier, classification_loss, load_classifier
from model.decoder import positions_from_mask
from model.loading import CheckpointError, load_pretrained
from model.lora import ENCODER_TARGETS, LoRALinear, add_lora

from hf_tiny import ENCODER_CONFIGS, ENCODERS, padded_batch, randomize, tiny_encoder


def segments(mask):
    """Token types of a right-padded (3, 11) batch: segment B from column 4 on."""
    return (torch.arange(mask.shape[1]) >= 4).long() * mask


@pytest.fixture(scope="module", params=ENCODERS)
def pair(request, tmp_path_factory):
    """(transformers classifier, ours loaded from its checkpoint)."""
    path = tmp_path_factory.mktemp(request.param)
    return tiny_encoder(request.param, path), load_classifier(path)


@pytest.mark.parametrize("padding", ["none", "right"])
@torch.no_grad()
def test_logits_match_transformers(pair, padding):
    hf, ours = pair
    ids, mask = padded_batch(padding, pad=hf.config.pad_token_id)
    types = segments(mask) if hf.config.model_type == "bert" else None
    want = hf(ids, attention_mask=mask, token_type_ids=types).logits
    got = ours(ids, mask, token_type_ids=types)
    assert isinstance(ours, EncoderClassifier) and got.shape == (3, 2)
    assert (got - want).abs().max() < 1e-5


@torch.no_grad()
def test_left_padded_rows_get_the_logits_of_the_rows_alone(pair):
    """Positions count from each row's first real token and its first token is pooled, so the padding side
    changes nothing (transformers' BERT would number and pool the padding of a left-padded row)."""
    hf, ours = pair
    ids, mask = padded_batch("left", pad=hf.config.pad_token_id)
    alone = torch.cat([hf(row[m.bool()][None]).logits for row, m in zip(ids, mask)])
    assert (ours(ids, mask) - alone).abs().max() < 1e-5
    assert (ours(ids, mask, positions_from_mask(mask)) - alone).abs().max() < 1e-5


def test_packed_rows_and_overlong_rows_are_errors(pair):
    _, ours = pair
    with pytest.raises(ValueError, match="packed rows .* decoder-only"):
        ours(torch.ones(1, 4, dtype=torch.long) + 2, torch.tensor([[1, 1, 2, 2]]))
    with pytest.raises(ValueError, match="longer than the model's"):
        ours(torch.full((1, 41), 5), torch.ones(1, 41, dtype=torch.long))


def test_lora_on_the_encoder_trains_adapters_and_head_only(pair):
    """Targets query/key/value/dense as PEFT places them: every block's, BERT's pooler's, not inside RoBERTa's
    classification head (trained in full, PEFT's modules_to_save)."""
    hf, ours = pair
    model = copy.deepcopy(ours).train()
    add_lora(model, r=4, alpha=8, targets=ENCODER_TARGETS)
    lora = {name for name, m in model.named_modules() if isinstance(m, LoRALinear)}
    assert len(lora) == 6 * 2 + (model.base == "bert")
    assert ("bert.pooler.dense" in lora) == (model.base == "bert") and not any("classifier" in n for n in lora)
    ids, mask = padded_batch("right", pad=hf.config.pad_token_id)
    labels = torch.tensor([1, 0, 1])
    torch.manual_seed(0)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)

    def eval_loss():
        with torch.no_grad():
            return classification_loss(model.eval()(ids, mask), labels).item()

    before = eval_loss()
    for _ in range(12):  # in training mode: the encoder's dropout is on
        opt.zero_grad()
        classification_loss(model.train()(ids, mask), labels).backward()
        opt.step()
    for name, p in model.named_parameters():
        trainable = name.endswith(("lora_A", "lora_B")) or name.startswith("classifier.")
        assert p.requires_grad == trainable and (p.grad is not None) == trainable, name
    assert eval_loss() < 0.75 * before


def test_last_block_for_the_pooled_token_alone_gives_the_full_blocks_gradients(pair):
    """The classifier's last block computes the first token's query, output and MLP only: its logits and every
    LoRA and head gradient equal those of the full last block, pooled afterwards (float32; dropout off)."""
    hf, ours = pair
    model = copy.deepcopy(ours).eval()
    add_lora(model, r=4, alpha=8, targets=ENCODER_TARGETS)
    for name, p in model.named_parameters():
        if p.requires_grad:
            torch.nn.init.normal_(p, std=0.1, generator=torch.Generator().manual_seed(len(name)))
    ids, mask = padded_batch("left", pad=hf.config.pad_token_id)
    labels = torch.tensor([1, 0, 1])

    def full(ids, mask):  # every block in full, then the first real token of each row
        hidden = model.model(ids, mask)[torch.arange(len(ids)), (mask != 0).int().argmax(1)]
        first = model.model.pooler(hidden) if model.base == "bert" else hidden
        return model.classifier(first)

    results = []
    for forward in (model, full):
        model.zero_grad()
        logits = forward(ids, mask)
        classification_loss(logits, labels).backward()
        results.append((logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}))
    (got, got_grads), (want, want_grads) = results
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert any(n.endswith("lora_A") for n in got_grads) and got_grads.keys() == want_grads.keys()
    for name in want_grads:
        torch.testing.assert_close(got_grads[name], want_grads[name], rtol=1e-5, atol=1e-6, msg=name)


def test_missing_tensor_and_missing_pooler(tmp_path, caplog):
    """A missing encoder tensor is an error naming it; a BERT checkpoint without a pooler loads with a random
    one (as transformers does), and says so."""
    hf = tiny_encoder("bert")
    state = {k: v for k, v in hf.state_dict().items() if not k.startswith("bert.pooler.")}
    hf.save_pretrained(tmp_path / "no_pooler", state_dict=dict(state))  # it empties the dict
    with caplog.at_level(logging.WARNING):
        ours = load_classifier(tmp_path / "no_pooler")
    assert "has no pooler" in caplog.text and 0.005 < ours.bert.pooler.dense.weight.std() < 0.05
    del state["bert.encoder.layer.1.output.LayerNorm.bias"]
    hf.save_pretrained(tmp_path / "broken", state_dict=state)
    with pytest.raises(CheckpointError, match="bert.encoder.layer.1.output.LayerNorm.bias"):
        load_classifier(tmp_path / "broken")
    with pytest.raises(CheckpointError, match="encoder has no decoder"):
        load_pretrained(tmp_path / "no_pooler")


@torch.no_grad()
def test_roberta_masked_lm_checkpoint_loads_without_its_lm_head_and_pooler(tmp_path):
    config = ENCODER_CONFIGS["roberta"]()
    mlm = tf.RobertaForMaskedLM(config).eval()
    randomize(mlm)
    state = {**mlm.state_dict(), "roberta.pooler.dense.weight": torch.zeros(48, 48)}
    mlm.save_pretrained(tmp_path, state_dict=state)
    ours = load_classifier(tmp_path)
    ids, mask = padded_batch("right", pad=1)
    hidden = mlm.roberta(ids, attention_mask=mask).last_hidden_state
    torch.testing.assert_close(ours.model(ids, mask)[mask.bool()], hidden[mask.bool()], rtol=0, atol=1e-5)


@torch.no_grad()
def test_real_minilm_matches_transformers_on_real_rows(minilm, shared):
    """all-MiniLM-L6-v2 (a sentence-transformers BertModel: pooler, no classifier): our rows are its tokenizer's
    own pair encoding, and our logits are BertForSequenceClassification's with the same head, float32."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(minilm / "tokenizer.json"))
    records = read_records(shared / "data" / "qc_sample.jsonl")[:12] + [
        Record("long", "QC", "en", "red running shoes " * 20, "shoes,men " * 40, 1, None)]
    rows = encode(tokenizer, "bert", records, max_length=48, translate=False)
    types = token_types("bert", rows)
    tokenizer.enable_truncation(48, strategy="only_second")
    own = tokenizer.encode_batch([(r.query, r.target) for r in records[:-1]])
    assert [e.ids[:e.attention_mask.count(1)] for e in own] == rows[:-1]
    assert [e.type_ids[:len(row)] for e, row in zip(own, rows)] == types[:-1]
    assert len(rows[-1]) == 48 and rows[-1].count(102) == 2 and types[-1][-1] == 1  # the target was cut first

    hf = tf.BertForSequenceClassification.from_pretrained(minilm, num_labels=2, attn_implementation="eager").eval()
    ours = load_classifier(minilm)
    ours.classifier.load_state_dict(hf.classifier.state_dict())
    torch.testing.assert_close(ours.bert.pooler.dense.weight, hf.bert.pooler.dense.weight, rtol=0, atol=0)
    pad = pad_token_id(tokenizer, "bert")
    width = max(map(len, rows))
    ids = torch.tensor([row + [pad] * (width - len(row)) for row in rows])
    mask = (torch.arange(width) < torch.tensor([len(r) for r in rows])[:, None]).long()
    segment = torch.tensor([t + [0] * (width - len(t)) for t in types])
    want = hf(ids, attention_mask=mask, token_type_ids=segment).logits
    assert (ours(ids, mask, token_type_ids=segment) - want).abs().max() < 1e-5
