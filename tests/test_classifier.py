"""The classifier against transformers' *ForSequenceClassification; pooling of padded and packed rows; training."""
import copy

import pytest
import torch
import torch.nn.functional as F
import transformers as tf

from data.batching import Example, collate_padded, collate_shared
from model import load_pretrained
from model.classifier import classification_loss, last_token_index, lm_head_rows, load_classifier
from model.decoder import positions_from_mask
from model.lora import add_lora

from fixtures import randomize_trainable
from hf_tiny import CONFIGS, FAMILIES, padded_batch, randomize, save_tiny

T = 11


def tiny_seq_cls(family: str, path, seed: int = 0):
    """A random transformers *ForSequenceClassification (2 labels) saved to `path`."""
    config = CONFIGS[family]()
    config.num_labels = 2
    model = tf.AutoModelForSequenceClassification.from_config(config, attn_implementation="eager").eval()
    randomize(model, seed)
    model.save_pretrained(path)
    return model


@pytest.fixture(scope="module", params=FAMILIES)
def pair(request, tmp_path_factory):
    """(transformers classifier, ours loaded from its checkpoint)."""
    path = tmp_path_factory.mktemp(request.param)
    return tiny_seq_cls(request.param, path), load_classifier(path)


@pytest.mark.parametrize("side", ["right", "left"])
@torch.no_grad()
def test_logits_match_transformers(pair, side):
    hf, ours = pair
    ids, mask = padded_batch(side)
    want = hf(ids, attention_mask=mask, position_ids=positions_from_mask(mask)).logits
    got = ours(ids, mask)
    assert got.shape == (3, 2)
    assert (got - want).abs().max() < 1e-4


@torch.no_grad()
def test_packed_rows_equal_examples_run_alone(pair):
    hf, ours = pair
    gen = torch.Generator().manual_seed(1)
    examples = [[torch.randint(1, 97, (n,), generator=gen) for n in lengths] for lengths in ((4, 2, 3), (6,))]
    ids = torch.zeros(2, T, dtype=torch.long)
    mask = torch.zeros(2, T, dtype=torch.long)
    for row, pieces in enumerate(examples):
        start = 0
        for k, piece in enumerate(pieces, 1):
            ids[row, start:start + len(piece)], mask[row, start:start + len(piece)] = piece, k
            start += len(piece)
    want = torch.cat([hf(piece[None]).logits for pieces in examples for piece in pieces])
    got = ours(ids, mask)
    assert got.shape == (4, 2)
    assert (got - want).abs().max() < 1e-4


@pytest.mark.parametrize("layout", ["right", "left", "packed"])
def test_last_block_for_the_pooled_tokens_only_changes_no_number(pair, layout):
    """The classifier runs its last block's queries, MLP and final norm for the pooled tokens alone; the logits and
    the LoRA and head gradients are those of running it for every token and picking the pooled ones after."""
    model = copy.deepcopy(pair[1]).train()
    add_lora(model, r=4, alpha=8)
    randomize_trainable(model, seed=2)
    if layout == "packed":
        ids = padded_batch("none")[0]
        mask = torch.tensor([[1, 1, 1, 1, 2, 2, 3, 3, 3, 3, 0], [1] * 6 + [2] * 5, [1] * 3 + [0] * 8])
        ids = ids * (mask > 0)
    else:
        ids, mask = padded_batch(layout)
    labels = torch.tensor([1, 0, 1, 1, 0, 1])[: int((mask.max(1).values).sum())]

    def logits_and_grads(pruned: bool):
        model.zero_grad()
        logits = model(ids, mask) if pruned else model.score(model.model(ids, mask)[last_token_index(mask)])
        classification_loss(logits, labels).backward()
        return logits, {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    want, want_grads = logits_and_grads(False)
    got, got_grads = logits_and_grads(True)
    assert got.shape == (len(labels), 2)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert got_grads.keys() == want_grads.keys() and any(n.endswith("lora_A") for n in got_grads)
    for name in want_grads:
        torch.testing.assert_close(got_grads[name], want_grads[name], rtol=1e-4, atol=1e-6, msg=name)


def shared_examples(lead: int = 0) -> list[Example]:
    """Groups of examples that begin alike (prefixes of 6, 3 and 2 tokens), alone or several in a unit, rows that
    run past the tiny models' sliding window of 4, and two examples of no group; all begin with the same `lead`
    tokens (a <bos>, a question's first words), which a row of several units computes once, as its root."""
    gen = torch.Generator().manual_seed(3)
    tokens = lambda n: torch.randint(1, 97, (n,), generator=gen).tolist()  # noqa: E731
    first = tokens(lead)
    out = []
    for g, (prefix, suffixes) in enumerate(((6, (3, 1, 4)), (3, (2, 5)), (2, (1, 1)), (4, (3,)))):
        shared = first + tokens(prefix)
        out += [Example(f"g{g}s{j}", shared + tokens(n), j % 2, group=f"g{g}") for j, n in enumerate(suffixes)]
    return out + [Example("alone0", first + tokens(6), 1), Example("alone1", first + tokens(2), 0)]


@pytest.mark.parametrize("lead", [0, 3])
def test_shared_prefix_rows_give_every_example_its_own_logits_and_gradients(pair, lead):
    """A prefix computed once for the examples of its group (and a row's root once for its groups): the logits and
    every LoRA and head gradient equal those of the examples in padded rows (dropout 0), for several groups in one
    row and right padding."""
    model = copy.deepcopy(pair[1]).train()
    add_lora(model, r=4, alpha=8, dropout=0.0)
    randomize_trainable(model, seed=2)
    data = shared_examples(lead)
    shared, padded = collate_shared(data, pad_id=0), collate_padded(data, pad_id=0)
    assert "suffix_ids" in shared and shared["input_ids"].numel() < padded["input_ids"].numel()
    assert (shared["attention_mask"].max(1).values > 1).any() and (shared["attention_mask"] == 0).any()
    assert bool((shared["suffix_ids"] == -1).any()) == bool(lead)

    def logits_and_grads(batch):
        model.zero_grad()
        inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids", "suffix_ids") if k in batch}
        logits = model(**inputs)
        classification_loss(logits, batch["labels"]).backward()
        by_id = dict(zip(batch["ids"], logits.detach()))
        return torch.stack([by_id[e.id] for e in data]), {n: p.grad.clone() for n, p in model.named_parameters()
                                                          if p.requires_grad}

    want, want_grads = logits_and_grads(padded)
    got, got_grads = logits_and_grads(shared)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert any(n.endswith("lora_A") for n in got_grads)
    for name in want_grads:
        torch.testing.assert_close(got_grads[name], want_grads[name], rtol=1e-5, atol=1e-5, msg=name)


def test_last_token_index_orders_by_row_then_example():
    mask = torch.tensor([[0, 0, 1, 1], [1, 1, 0, 0], [2, 2, 1, 0], [1, 2, 3, 3]])
    rows, cols = last_token_index(mask)
    assert rows.tolist() == [0, 1, 2, 2, 3, 3, 3]
    assert cols.tolist() == [3, 1, 2, 1, 0, 1, 3]


def test_rows_without_real_tokens_and_split_examples_are_errors():
    with pytest.raises(ValueError, match=r"rows \[1\] have no real token"):
        last_token_index(torch.tensor([[1, 1, 0], [0, 0, 0]]))
    with pytest.raises(ValueError, match="non-contiguous"):
        last_token_index(torch.tensor([[1, 2, 1, 0]]))


def test_seq_cls_checkpoint_head_is_loaded_causal_lm_head_is_fresh(pair, tmp_path):
    hf, ours = pair
    torch.testing.assert_close(ours.score.weight, hf.score.weight, rtol=0, atol=0)
    lm = tf.AutoModelForCausalLM.from_config(hf.config)
    lm.save_pretrained(tmp_path)
    fresh = load_classifier(tmp_path, num_labels=3)
    assert fresh.score.weight.shape == (3, hf.config.hidden_size) and fresh.model.lm_head is None
    assert 0.005 < fresh.score.weight.std() < 0.05  # normal(0, 0.02), not uninitialised memory


def test_loss_matches_float64_cross_entropy():
    logits = torch.randn(6, 2, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 1, 1, 0, 1, 1])
    weights = [1.0, 3.0]
    p = F.log_softmax(logits.double(), -1)
    w = torch.tensor(weights, dtype=torch.float64)[labels]
    smooth = 0.1
    nll = -(1 - smooth) * p[range(6), labels] - smooth * p.mean(-1)
    assert classification_loss(logits, labels).item() == pytest.approx(-p[range(6), labels].mean().item(), rel=1e-6)
    want = (w * (-(p[range(6), labels]))).sum() / w.sum()
    assert classification_loss(logits, labels, weights).item() == pytest.approx(want.item(), rel=1e-6)
    loss = classification_loss(logits, labels, label_smoothing=smooth).item()
    assert loss == pytest.approx(nll.mean().item(), rel=1e-6)


def test_lora_gradients_reach_only_adapters_and_head_and_loss_goes_down(tmp_path):
    tiny_seq_cls("qwen2", tmp_path)  # q/k/v biases: frozen too
    torch.manual_seed(0)
    classifier = load_classifier(tmp_path).train()
    add_lora(classifier, r=4, alpha=8)
    ids, mask = padded_batch("left")
    labels = torch.tensor([1, 0, 1])
    classification_loss(classifier(ids, mask), labels).backward()
    for name, p in classifier.named_parameters():
        trainable = name.endswith(("lora_A", "lora_B")) or name == "score.weight"
        assert p.requires_grad == trainable and (p.grad is not None) == trainable, name
    assert all(p.grad.abs().sum() > 0 for n, p in classifier.named_parameters() if n.endswith("lora_B"))
    opt = torch.optim.AdamW([p for p in classifier.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(5):
        opt.zero_grad()
        loss = classification_loss(classifier(ids, mask), labels)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


@pytest.mark.parametrize("family", FAMILIES)
@torch.no_grad()
def test_a_head_from_the_lm_rows_starts_as_the_lms_log_odds(family, tmp_path):
    """lm_answer: the logit difference equals the LM's log-odds of token 'yes' over 'no' at the pooled token
    (before Gemma-2's final soft-capping, which the LM applies and a linear head does not)."""
    save_tiny(family, tmp_path)
    no, yes = 5, 17
    classifier = load_classifier(tmp_path)
    classifier.init_score(lm_head_rows(tmp_path, [no, yes]))
    lm = load_pretrained(tmp_path)
    ids, mask = padded_batch("right")
    rows, cols = last_token_index(mask)
    logits = lm.lm_logits(lm(ids, attention_mask=mask))[rows, cols]
    cap = lm.config.final_softcap
    if cap:
        assert family == "gemma2"
        logits = torch.atanh(logits / cap) * cap
    want = logits[:, yes] - logits[:, no]
    got = classifier(ids, mask)
    assert (got[:, 1] - got[:, 0] - want).abs().max() < 1e-4
    assert torch.equal(lm_head_rows(tmp_path, [no, yes]), (lm.lm_head or lm.embed_tokens).weight[[no, yes]])
