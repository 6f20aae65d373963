"""The decoder against transformers' own forward, on tiny random checkpoints of every family."""
import pytest
import torch

from model import load_pretrained
from model.decoder import layer_masks, positions_from_mask

from fixtures import DEVICE
from hf_tiny import FAMILIES, padded_batch, save_tiny

T = 11  # longer than the sliding window (4) of the Gemma2/Gemma3 test models


@pytest.fixture(scope="module", params=FAMILIES)
def pair(request, tmp_path_factory):
    """(transformers model, our decoder loaded from its checkpoint)."""
    path = tmp_path_factory.mktemp(request.param)
    return save_tiny(request.param, path), load_pretrained(path)


def reference(hf, ids, mask):
    # transformers 5 numbers positions 0..T-1 whatever the padding; we number from each row's first real token.
    out = hf(ids, attention_mask=mask, position_ids=positions_from_mask(mask), output_hidden_states=True)
    return out.hidden_states[-1], out.logits


@pytest.mark.parametrize("padding", ["none", "right", "left"])
@torch.no_grad()
def test_matches_transformers_float32(pair, padding):
    hf, ours = pair
    ids, mask = padded_batch(padding, T)
    ref_hidden, ref_logits = reference(hf, ids, mask)
    hidden = ours(ids, attention_mask=mask)
    real = mask.bool()
    assert (hidden - ref_hidden)[real].abs().max() < 1e-4
    assert (ours.lm_logits(hidden) - ref_logits)[real].abs().max() < 1e-4


@torch.no_grad()
def test_bfloat16_error_no_larger_than_transformers(pair):
    """On the GPU when there is one (Triton kernels, CUDA attention on our side). bf16 keeps 8 significant bits,
    so both implementations drift from the float32 result by rounding that depends on the order of operations
    (0.02-0.25 on these random models' logits of scale 2-16, for both).
    The fair bound: our bf16 error against the float32 result stays within 1.5x of transformers' own bf16
    error, plus a floor of 1e-2 for the models where both errors are tiny."""
    hf, ours = pair
    ids, mask = padded_batch("right", T)
    real = mask.bool()
    truth = ours.lm_logits(ours(ids, attention_mask=mask))[real]
    ours16, hf16 = ours.to(DEVICE, torch.bfloat16), hf.to(DEVICE, torch.bfloat16)
    ids, mask = ids.to(DEVICE), mask.to(DEVICE)
    try:
        ref = reference(hf16, ids, mask)[1][real].float().cpu()
        got = ours16.lm_logits(ours16(ids, attention_mask=mask))[real].float().cpu()
    finally:
        ours.to("cpu", torch.float32), hf.to("cpu", torch.float32)
    ref_err, our_err = (ref - truth).abs().max(), (got - truth).abs().max()
    assert our_err <= 1.5 * ref_err + 1e-2, (our_err, ref_err)


@torch.no_grad()
def test_packed_row_equals_examples_run_alone(pair):
    """Three examples packed in one row see nothing of each other: same hidden states as run one by one."""
    _, ours = pair
    ids, _ = padded_batch("none", T)
    lengths = (5, 2, 3)
    packed = torch.cat([ids[i, :n] for i, n in enumerate(lengths)] + [torch.zeros(1, dtype=torch.long)])[None]
    segments = torch.tensor([[1] * 5 + [2] * 2 + [3] * 3 + [0]])
    hidden = ours(packed, attention_mask=segments)
    start = 0
    for i, n in enumerate(lengths):
        alone = ours(ids[i : i + 1, :n])
        assert torch.allclose(hidden[0, start : start + n], alone[0], atol=1e-5)
        start += n


def test_positions_restart_per_example_and_skip_padding():
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 2, 2, 0]])
    assert positions_from_mask(mask).tolist() == [[0, 0, 0, 1, 2], [0, 1, 0, 1, 0]]


def test_sliding_mask_is_causal_windowed_and_within_example():
    mask = torch.tensor([[1, 1, 1, 1, 2, 2, 0]])
    masks = layer_masks(mask, sliding_window=2)
    full, sliding = masks["full_attention"][0, 0], masks["sliding_attention"][0, 0]
    assert full[3].tolist() == [True, True, True, True, False, False, False]
    assert sliding[3].tolist() == [False, False, True, True, False, False, False]
    assert full[5].tolist() == [False, False, False, False, True, True, False]
    assert full[6].tolist() == [False] * 6 + [True]  # padding attends only to itself
    long_window = layer_masks(mask, sliding_window=7)  # reaches past the first key: the full mask
    assert torch.equal(long_window["sliding_attention"], long_window["full_attention"])


def test_untied_decoder_without_lm_head_refuses_lm_logits():
    from model import Decoder, ModelConfig

    decoder = Decoder(ModelConfig(tie_word_embeddings=False))
    decoder.lm_head = None  # as a SequenceClassifier leaves it
    with pytest.raises(RuntimeError, match="LM head was dropped"):
        decoder.lm_logits(torch.zeros(1, 2, 64))
