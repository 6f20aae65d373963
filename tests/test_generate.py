"""Greedy generation with the KV cache against transformers' generate(do_sample=False)."""
import pytest
import torch

from model import load_pretrained
from model.decoder import KVCache
from model.generate import generate

from hf_tiny import FAMILIES, save_tiny


def left_padded_prompts():
    """Prompts of 9, 5 and 2 tokens, left-padded: with 12 new tokens they outgrow the sliding window (4)."""
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 97, (3, 9), generator=gen)
    mask = torch.ones_like(ids)
    mask[1, :4] = 0
    mask[2, :7] = 0
    return ids * mask, mask


@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_tokens_match_transformers(family, tmp_path):
    hf = save_tiny(family, tmp_path)
    ours = load_pretrained(tmp_path)
    ids, mask = left_padded_prompts()
    expected = hf.generate(ids, attention_mask=mask, max_new_tokens=12, do_sample=False, eos_token_id=None,
                           pad_token_id=0)[:, ids.shape[1]:]
    assert torch.equal(generate(ours, ids, mask, max_new_tokens=12), expected)


def test_rows_stop_at_eos_and_continue_with_padding(tmp_path):
    save_tiny("qwen3", tmp_path)
    ours = load_pretrained(tmp_path)
    ids, mask = left_padded_prompts()
    free = generate(ours, ids, mask, max_new_tokens=6)
    eos = int(free[0, 2])  # make row 0's third token the end of sequence
    stopped = generate(ours, ids, mask, max_new_tokens=6, eos_token_ids=[eos], pad_token_id=0)
    assert stopped[0, :3].tolist() == free[0, :3].tolist()
    assert stopped[0, 3:].tolist() == [0, 0, 0] != free[0, 3:].tolist()
    for row in (1, 2):  # other rows are unaffected until their own EOS
        first_eos = (free[row] == eos).nonzero()
        end = int(first_eos[0]) + 1 if len(first_eos) else 6
        assert stopped[row, :end].tolist() == free[row, :end].tolist()


def test_sliding_layers_cache_only_their_window(tmp_path):
    save_tiny("gemma2", tmp_path)
    ours = load_pretrained(tmp_path)
    cache = KVCache(ours.config)
    ours(torch.randint(1, 97, (1, 10)), cache=cache)
    assert [k.shape[2] for k in cache.keys] == [3, 10, 3]  # sliding, full, sliding (window 4)


def test_right_padded_prompts_are_rejected(tmp_path):
    save_tiny("qwen3", tmp_path)
    with pytest.raises(ValueError, match="left-padded"):
        generate(load_pretrained(tmp_path), torch.ones(1, 3, dtype=torch.long), torch.tensor([[1, 1, 0]]))
