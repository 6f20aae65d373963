"""Deterministic greedy generation with a KV cache, for batches of left-padded prompts."""
import torch

from model.decoder import Decoder, KVCache


@torch.no_grad()
def generate(decoder: Decoder, input_ids, attention_mask=None, max_new_tokens: int = 32,
             eos_token_ids=(), pad_token_id: int = 0):
    """New tokens (B, <= max_new_tokens) after each prompt; a row that produced an EOS continues with padding.

    Prompts must be left-padded (mask 0 before the prompt) so every row's next token is at the same column.
    """
    mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
    if (mask[:, -1] == 0).any():
        raise ValueError("generate needs left-padded prompts: some row ends with padding")
    eos = torch.tensor(list(eos_token_ids), device=input_ids.device, dtype=torch.long)
    cache, tokens, new = KVCache(decoder.config), input_ids, []
    done = torch.zeros(len(input_ids), dtype=torch.bool, device=input_ids.device)
    for _ in range(max_new_tokens):
        hidden = decoder(tokens, attention_mask=mask, cache=cache)
        token = decoder.lm_logits(hidden[:, -1]).argmax(-1)
        token = torch.where(done, pad_token_id, token)
        new.append(token)
        done |= torch.isin(token, eos)
        if done.all():
            break
        tokens, mask = token[:, None], torch.cat([mask, torch.ones_like(token)[:, None]], dim=1)
    return torch.stack(new, dim=1)
