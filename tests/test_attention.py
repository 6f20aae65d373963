"""Every attention path against the eager reference over the dense mask: forward and gradients on real queries.

The paths: SDPA is_causal (rows of one example), SDPA with a boolean mask (packed, left-padded, windowed, cached
keys), eager (soft-capping on CPU), FlexAttention (CUDA; its forward also runs on CPU, uncompiled). Then the
classifier end to end: a packed batch gives every example the logits, and the LoRA and head the gradients, that
a padded batch gives.
"""
import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention.flex_attention import BlockMask

from data.batching import Example, collate_packed, collate_padded
from kernels.attention import attention, block_mask, dense_mask, eager_attention, example_mask, query_mask
from model.classifier import load_classifier
from model.lora import add_lora

from fixtures import DEVICE, randomize_trainable
from hf_tiny import FAMILIES, save_tiny

B, H, H_KV, T, D = 3, 4, 2, 13, 16
SCALE = D**-0.5
ROWS = {
    "one example": [[1] * 13, [1] * 9 + [0] * 4, [1] * 3 + [0] * 10],
    "left-padded": [[1] * 13, [0] * 4 + [1] * 9, [0] * 10 + [1] * 3],
    "packed": [[1] * 5 + [2] * 3 + [3] * 5, [1] * 7 + [2] * 4 + [0] * 2, [1] * 2 + [2] * 11],
}
CASES = [(rows, window, softcap) for rows in ROWS for window in (None, 4) for softcap in (None, 5.0)]
needs_cuda = pytest.mark.skipif(DEVICE != "cuda", reason="FlexAttention has no backward on CPU: runs on CUDA only")


def inputs(device=DEVICE, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    shapes = [(B, H, T, D), (B, H_KV, T, D), (B, H_KV, T, D), (B, H, T, D)]
    q, k, v, dy = (torch.randn(s, generator=gen).to(device, dtype) for s in shapes)
    return q.requires_grad_(), k.requires_grad_(), v.requires_grad_(), dy


def output_and_grads(q, k, v, dy, mask, softcap, ids, path=attention):
    """The output on real queries and the gradients of <output, dy> over real queries (padding's are unspecified)."""
    out = path(q, k, v, mask, SCALE, softcap)
    real = (ids[:, -q.shape[2]:] > 0)[:, None, :, None]
    grads = torch.autograd.grad((out * dy * real).sum(), (q, k, v))
    return (out * real).float(), [g.float() for g in grads]


def assert_close(got, want, atol):
    (out, grads), (ref_out, ref_grads) = got, want
    assert (out - ref_out).abs().max() < atol
    for g, r in zip(grads, ref_grads):
        assert (g - r).abs().max() < atol


def test_dense_mask_matches_its_definition():
    """Causal, same example, not padding (except each query itself), within the window, for the last T queries."""
    rows = ROWS["packed"] + ROWS["left-padded"]
    ids = torch.tensor(rows)
    for window in (None, 4):
        for queries in (T, 5, 1):
            mask = dense_mask(ids, window, queries)
            assert mask.shape == (6, 1, queries, T)
            for b in range(6):
                for i, q in enumerate(range(T - queries, T)):
                    for kv in range(T):
                        want = rows[b][q] == rows[b][kv] != 0 and 0 <= q - kv < (window or T) or q == kv
                        assert bool(mask[b, 0, i, kv]) == want, (b, q, kv, window)


# Shared-prefix rows: example ids, suffix ids (0 = the shared prefix, -1 = the row's root, which every example of
# the row begins with) and positions that continue the root, then the prefix.
SHARED_ROWS = {
    "ids": [[1] * 10 + [2] * 3, [1] * 6 + [2] * 3 + [3] * 2 + [0] * 2, [1] * 13],
    "suffix": [[0, 0, 0, 1, 1, 2, 3, 3, 3, 3, 0, 4, 4], [-1, -1, 0, 1, 1, 2, 0, 0, 3, 4, 4, 0, 0], [0] * 4 + [1] * 9],
    "positions": [[0, 1, 2, 3, 4, 3, 3, 4, 5, 6, 0, 1, 2], [0, 1, 2, 3, 4, 3, 2, 3, 4, 2, 3, 0, 0],
                  list(range(13))],
}


def test_shared_prefix_mask_matches_its_definition():
    """A suffix token sees its row's root, its own prefix and its own suffix, causally, within the window counted in
    positions."""
    ids, sub, pos = (torch.tensor(SHARED_ROWS[k]) for k in ("ids", "suffix", "positions"))
    for window in (None, 3):
        mask = dense_mask(ids, window, None, sub, pos)
        for b in range(3):
            for q in range(T):
                for kv in range(T):
                    root = sub[b, kv] == -1 and ids[b, q] != 0
                    same = (ids[b, q] == ids[b, kv] != 0 and sub[b, kv] in (0, sub[b, q]) or root) and kv <= q
                    want = same and pos[b, q] - pos[b, kv] < (window or T) or q == kv
                    assert bool(mask[b, 0, q, kv]) == want, (b, q, kv, window)
        rows, cols = torch.tensor([0, 0, 1, 1, 1]), torch.tensor([4, 9, 5, 8, 10])
        assert torch.equal(query_mask(ids, rows, cols, window, sub, pos)[:, 0, 0], mask[rows, 0, cols])


@pytest.mark.filterwarnings("ignore:.*flex_attention.*:UserWarning")
@pytest.mark.parametrize("window", [None, 3])
@torch.no_grad()
def test_flex_forward_of_shared_prefix_rows_on_cpu_matches_eager_reference(window):
    ids, sub, pos = (torch.tensor(SHARED_ROWS[k]) for k in ("ids", "suffix", "positions"))
    q, k, v, _ = (t.detach() for t in inputs("cpu"))
    real = (ids > 0)[:, None, :, None]
    want = eager_attention(q, k, v, dense_mask(ids, window, None, sub, pos), SCALE)
    got = attention(q, k, v, block_mask(ids, window, sub, pos), SCALE)
    assert ((got - want) * real).abs().max() < 1e-5


def test_mask_form_follows_the_case():
    ids = torch.tensor(ROWS["one example"])
    assert example_mask(ids) is None
    assert example_mask(ids, softcap=5.0) is None  # eager on CPU builds the causal mask itself
    assert example_mask(ids, window=4).dtype == torch.bool
    assert example_mask(ids, window=T) is None  # a window as long as the rows cuts nothing
    assert example_mask(torch.tensor(ROWS["packed"])).shape == (B, 1, T, T)
    assert example_mask(torch.tensor([[2, 2, 1, 1, 0]])) is not None  # two examples, in decreasing ids
    assert example_mask(ids, num_queries=2).shape == (B, 1, 2, T)
    if DEVICE == "cuda":
        assert isinstance(example_mask(ids.cuda(), window=4), BlockMask)
        assert isinstance(example_mask(ids.cuda(), softcap=5.0), BlockMask)
        assert example_mask(ids.cuda()) is None


@pytest.mark.parametrize("rows, window, softcap", CASES, ids=str)
def test_chosen_path_matches_eager_reference(rows, window, softcap):
    """The path attention_mask picks on this machine (on CPU: SDPA causal or masked, or eager)."""
    ids = torch.tensor(ROWS[rows], device=DEVICE)
    q, k, v, dy = inputs()
    want = output_and_grads(q, k, v, dy, dense_mask(ids, window), softcap, ids, eager_attention)
    got = output_and_grads(q, k, v, dy, example_mask(ids, window, softcap=softcap), softcap, ids)
    assert_close(got, want, 1e-5)


@pytest.mark.parametrize("rows, window, softcap", CASES, ids=str)
def test_cpu_paths_match_eager_reference(rows, window, softcap):
    """SDPA with the boolean mask, SDPA causal where it applies, eager: on CPU tensors whatever the machine."""
    ids = torch.tensor(ROWS[rows])
    q, k, v, dy = inputs("cpu")
    want = output_and_grads(q, k, v, dy, dense_mask(ids, window), softcap, ids, eager_attention)
    assert_close(output_and_grads(q, k, v, dy, dense_mask(ids, window), softcap, ids), want, 1e-5)
    if rows == "one example" and window is None:
        assert_close(output_and_grads(q, k, v, dy, None, softcap, ids), want, 1e-5)


@pytest.mark.parametrize("queries, keys", [(1, 4), (1, T), (4, T)])
def test_cached_keys_match_eager_reference(queries, keys):
    """Generation: the last `queries` positions attend to the last `keys` cached keys (a sliding layer keeps only
    its window), with the mask over all T positions."""
    ids = torch.tensor(ROWS["left-padded"], device=DEVICE)
    window = 4 if keys < T else None
    q, k, v, dy = inputs()
    q = q[:, :, -queries:].detach().requires_grad_()
    want = output_and_grads(q, k, v, dy[:, :, -queries:], dense_mask(ids, window, queries), None, ids,
                            eager_attention)
    k_cached, v_cached = k[:, :, -keys:].detach().requires_grad_(), v[:, :, -keys:].detach().requires_grad_()
    out, (dq, dk, dv) = output_and_grads(q, k_cached, v_cached, dy[:, :, -queries:],
                                         example_mask(ids, window, queries), None, ids)
    assert (out - want[0]).abs().max() < 1e-5
    assert (dq - want[1][0]).abs().max() < 1e-5
    assert (dk - want[1][1][:, :, -keys:]).abs().max() < 1e-5
    assert (dv - want[1][2][:, :, -keys:]).abs().max() < 1e-5


@pytest.mark.filterwarnings("ignore:.*flex_attention.*:UserWarning")
@pytest.mark.parametrize("rows, window, softcap", CASES, ids=str)
@torch.no_grad()
def test_flex_forward_on_cpu_matches_eager_reference(rows, window, softcap):
    """The BlockMask and the soft-capping score_mod, checked without a GPU (uncompiled FlexAttention, forward)."""
    ids = torch.tensor(ROWS[rows])
    q, k, v, _ = (t.detach() for t in inputs("cpu"))
    real = (ids > 0)[:, None, :, None]
    want = eager_attention(q, k, v, dense_mask(ids, window), SCALE, softcap)
    got = attention(q, k, v, block_mask(ids, window), SCALE, softcap)
    assert ((got - want) * real).abs().max() < 1e-5


@needs_cuda
@pytest.mark.parametrize("dtype, atol", [(torch.float32, 1e-4), (torch.bfloat16, 3e-2)], ids=str)
@pytest.mark.parametrize("rows, window, softcap", CASES, ids=str)
def test_flex_on_cuda_matches_eager_reference(rows, window, softcap, dtype, atol):
    """Compiled FlexAttention, forward and backward; bf16 against the float32 reference (bf16 rounding: 2^-8)."""
    ids = torch.tensor(ROWS[rows], device="cuda")
    q, k, v, dy = inputs("cuda")
    want = output_and_grads(q, k, v, dy, dense_mask(ids, window), softcap, ids, eager_attention)
    low = [t.detach().to(dtype).requires_grad_() for t in (q, k, v)]
    got = output_and_grads(*low, dy.to(dtype), block_mask(ids, window), softcap, ids)
    assert_close(got, want, atol)


@pytest.fixture(scope="module", params=FAMILIES)
def checkpoint(request, tmp_path_factory):
    path = tmp_path_factory.mktemp(request.param)
    save_tiny(request.param, path)
    return path


def logits_by_id(model, batch) -> dict:
    with torch.no_grad():
        out = model(*(batch[key].to(DEVICE) for key in ("input_ids", "attention_mask", "position_ids")))
    return dict(zip(batch["ids"], out.float()))


def tiny_examples():
    gen = torch.Generator().manual_seed(0)
    return [Example(str(i), torch.randint(1, 97, (n,), generator=gen).tolist(), i % 2)
            for i, n in enumerate((9, 3, 6, 2, 7, 5))]


def packed_and_padded_errors(checkpoint, dtype):
    """max |logits - float32 padded logits| of the packed and of the padded batch, the model in `dtype`."""
    data = tiny_examples()
    torch.manual_seed(0)  # the same fresh score head in both models
    truth = logits_by_id(load_classifier(checkpoint, device=DEVICE), collate_padded(data, 0))
    torch.manual_seed(0)
    model = load_classifier(checkpoint, dtype=dtype, device=DEVICE)
    with torch.autocast(DEVICE, torch.bfloat16, enabled=dtype == torch.bfloat16):
        packed = logits_by_id(model, collate_packed(data, 0, row_tokens=12))
        padded = logits_by_id(model, collate_padded(data, 0))
    assert len(collate_packed(data, 0, row_tokens=12)["input_ids"]) < len(data)
    return [max(float((logits[i] - truth[i]).abs().max()) for i in truth) for logits in (packed, padded)]


def test_packed_logits_equal_padded_logits(checkpoint):
    """float32: packed rows (Flex on CUDA, SDPA masked on CPU) against padded ones (SDPA is_causal)."""
    packed_error, padded_error = packed_and_padded_errors(checkpoint, torch.float32)
    assert packed_error < 1e-4 and padded_error == 0


def test_packed_logits_in_bfloat16_as_close_as_padded(checkpoint):
    """bf16 weights and autocast: packing adds no error beyond bf16 rounding (1.5x the padded batch's, + 1e-2)."""
    packed_error, padded_error = packed_and_padded_errors(checkpoint, torch.bfloat16)
    assert packed_error <= 1.5 * padded_error + 1e-2, (packed_error, padded_error)


def gradients(checkpoint, batch, dtype) -> dict:
    """LoRA and head gradients of the summed cross-entropy of `batch`, LoRA B random so that every LoRA A gets one."""
    model = load_classifier(checkpoint, dtype=dtype, device=DEVICE)
    add_lora(model, r=4, alpha=8)
    randomize_trainable(model)
    inputs = [batch[key].to(DEVICE) for key in ("input_ids", "attention_mask", "position_ids")]
    with torch.autocast(DEVICE, torch.bfloat16, enabled=dtype == torch.bfloat16):
        logits = model(*inputs)
    F.cross_entropy(logits.float(), batch["labels"].to(DEVICE), reduction="sum").backward()
    return {name: p.grad.float() for name, p in model.named_parameters() if p.requires_grad}


def test_packed_gradients_equal_padded_gradients(checkpoint):
    """float32: training through the packed path (Flex on CUDA, masked SDPA on CPU) and the padded one (SDPA
    is_causal) gives the same gradients, up to 1e-4 of the largest gradient of each tensor."""
    data = tiny_examples()
    packed = gradients(checkpoint, collate_packed(data, 0, row_tokens=12), torch.float32)
    padded = gradients(checkpoint, collate_padded(data, 0), torch.float32)
    for name, want in padded.items():
        assert want.abs().max() > 0, name
        assert (packed[name] - want).abs().max() <= 1e-4 * want.abs().max(), name


def test_packed_gradients_in_bfloat16_as_close_as_padded(checkpoint):
    """bf16 weights and autocast: against the float32 gradients, the packed batch's error is within 2x the padded
    batch's + 1% of the largest gradient (two kernels' bf16 roundings, not one's, compound through backward)."""
    data = tiny_examples()
    truth = gradients(checkpoint, collate_padded(data, 0), torch.float32)
    packed = gradients(checkpoint, collate_packed(data, 0, row_tokens=12), torch.bfloat16)
    padded = gradients(checkpoint, collate_padded(data, 0), torch.bfloat16)
    for name, want in truth.items():
        packed_error, padded_error = ((got[name] - want).abs().max() for got in (packed, padded))
        assert packed_error <= 2 * padded_error + 1e-2 * want.abs().max(), (name, packed_error, padded_error)
