"""Padded and packed batches (the layout the model relies on) and the batch sampler."""
import json
from collections import Counter
from functools import partial

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer
from torch.utils.data import DataLoader

from data.batching import (
    BUCKET,
    BatchSampler,
    Example,
    bucketed,
    collate_packed,
    collate_padded,
    collate_rows,
    collate_shared,
    examples,
    fill,
    micro_batches,
    pack,
    padding_waste,
)
from data.inputs import close_token_id, encode, pad_token_id
from data.records import read_records
from train.commands.padding import main

PAD = 0


def make(lengths, labels=None):
    labels = labels or [i % 2 for i in range(len(lengths))]
    return [Example(f"r{i}", [100 * (i + 1) + t for t in range(n)], y) for i, (n, y) in enumerate(zip(lengths, labels))]


def test_contract_example_row():
    a, b, c = make([3, 2, 3], [1, 0, None])
    batch = collate_rows([[([], [a]), ([], [b]), ([], [c])], [([], [b])]], PAD)
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 2, 2, 3, 3, 3], [1, 1, 0, 0, 0, 0, 0, 0]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1, 0, 1, 2], [0, 1, 0, 0, 0, 0, 0, 0]]
    assert batch["input_ids"].tolist() == [a.input_ids + b.input_ids + c.input_ids, b.input_ids + [PAD] * 6]
    assert batch["labels"].tolist() == [1, 0, -1, 0] and batch["ids"] == ["r0", "r1", "r2", "r1"]
    assert all(batch[k].dtype == torch.long for k in ("input_ids", "attention_mask", "position_ids", "labels"))


def last_tokens(batch):
    """Reference reading of a batch, as the model does: (row, last column) of each example in label order."""
    out = []
    for row, mask in enumerate(batch["attention_mask"]):
        for k in range(1, int(mask.max()) + 1):
            out.append((row, int(torch.nonzero(mask == k).max())))
    return out


@settings(max_examples=80, deadline=None)
@given(st.lists(st.integers(1, 12), min_size=1, max_size=12), st.sampled_from(["right", "left"]), st.integers(12, 30),
       st.booleans())
def test_each_example_is_one_contiguous_run_ending_at_its_last_token(lengths, side, row_tokens, packed):
    data = make(lengths)
    side = "right" if packed else side  # left padding is for generation prompts (translate), never packed
    batch = collate_packed(data, PAD, row_tokens) if packed else collate_padded(data, PAD, side)
    by_id = {e.id: e for e in data}
    assert sorted(batch["ids"]) == sorted(by_id) and len(batch["labels"]) == len(data)
    mask, pos, ids = batch["attention_mask"], batch["position_ids"], batch["input_ids"]
    for (row, last), id_, label in zip(last_tokens(batch), batch["ids"], batch["labels"].tolist()):
        e = by_id[id_]
        k = int(mask[row, last])
        cols = torch.nonzero(mask[row] == k).flatten()
        assert cols.tolist() == list(range(last - len(e.input_ids) + 1, last + 1))  # contiguous, in order
        assert ids[row, cols].tolist() == e.input_ids and pos[row, cols].tolist() == list(range(len(e.input_ids)))
        assert label == e.label
    assert (ids[mask == 0] == PAD).all() and (pos[mask == 0] == 0).all()
    assert ((mask > 0).sum(1) <= (row_tokens if packed else max(lengths))).all()
    pads = (mask == 0).int()
    if side == "right":  # padding only at the end (right) or the start (left) of rows
        assert (pads.cummax(1).values == pads).all()
    else:
        assert (pads.flip(1).cummax(1).values.flip(1) == pads).all()


def test_pack_fills_few_balanced_rows():
    data = make([5, 4, 4, 3, 3, 3, 2, 1])
    units = [([], [e]) for e in data]
    rows = pack(units, 10)
    assert sorted(e.id for row in rows for _, [e] in row) == sorted(e.id for e in data)
    assert [sum(len(e.input_ids) for _, [e] in row) for row in rows] == [8, 9, 8]
    with pytest.raises(ValueError, match="example r0 has 5 tokens, more than row_tokens=4"):
        pack(units, 4)


def test_sampler_single_rank_covers_every_example_once_per_epoch():
    lengths = [n % 37 + 1 for n in range(0, 1000, 7)]
    sampler = BatchSampler(lengths, 8, seed=3, megabatch=4)
    first = list(sampler)
    assert sorted(i for b in first for i in b) == list(range(len(lengths)))
    assert Counter(map(len, first)) == {8: len(lengths) // 8, len(lengths) % 8: 1}
    assert first == list(BatchSampler(lengths, 8, seed=3, megabatch=4))
    sampler.set_epoch(1)
    assert list(sampler) != first and len(sampler) == len(first)
    assert list(BatchSampler([], 8)) == [] and len(BatchSampler([], 8, world_size=2, rank=1)) == 0
    evaluation = list(BatchSampler(lengths, 8, shuffle=False))
    assert [lengths[i] for b in evaluation for i in b] == sorted(lengths, reverse=True)


@pytest.mark.parametrize("drop_last", [False, True])
def test_distributed_shards_are_disjoint_and_equal(drop_last):
    lengths, world = list(range(1, 104)), 4
    samplers = [BatchSampler(lengths, 5, seed=1, rank=r, world_size=world, drop_last=drop_last) for r in range(world)]
    shards = [list(s) for s in samplers]
    assert len({len(s) for s in shards}) == 1  # every rank takes as many steps
    seen = Counter(i for s in shards for b in s for i in b)
    if drop_last:
        assert len(seen) == 100 and set(seen.values()) == {1}
    else:
        assert set(seen) == set(range(103)) and sum(seen.values()) == 104  # 103 rows, one repeated for 4 ranks
        assert all(len(b) > 0 for s in shards for b in s)


@settings(max_examples=80, deadline=None)
@given(st.lists(st.integers(1, 9), max_size=60), st.integers(1, 8), st.integers(1, 4), st.booleans(), st.booleans(),
       st.booleans(), st.integers(0, 3))
def test_sampler_invariants(lengths, batch_size, world, shuffle, grouped, drop_last, start):
    def shards(start_step=0):
        out = []
        for rank in range(world):
            sampler = BatchSampler(lengths, batch_size, 5, shuffle, grouped, rank, world, drop_last, megabatch=2)
            sampler.set_epoch(1, start_step)
            out.append(list(sampler))
            assert len(sampler) == len(out[-1])
        return out

    whole = shards()
    assert len({len(s) for s in whole}) == 1 and all(0 < len(b) <= batch_size for s in whole for b in s)
    seen = Counter(i for s in whole for b in s for i in b)
    n = len(lengths)
    if drop_last:
        assert set(seen.values()) <= {1} and sum(seen.values()) == n - n % (batch_size * world)
    else:
        assert set(seen) == set(range(n)) and sum(seen.values()) == -(-n // world) * world
    if start <= len(whole[0]):
        assert shards(start) == [s[start:] for s in whole]
    else:
        with pytest.raises(ValueError, match=f"start_step {start} is outside epoch 1 of {len(whole[0])} steps"):
            shards(start)


def test_resume_mid_epoch_yields_the_remaining_batches():
    sampler = BatchSampler(list(range(1, 60)), 4, seed=7, rank=1, world_size=2)
    sampler.set_epoch(2)
    whole = list(sampler)
    sampler.set_epoch(2, start_step=5)
    assert list(sampler) == whole[5:] and len(sampler) == len(whole) - 5


def test_length_grouping_reduces_padding_through_a_dataloader():
    data = make([(7 * i) % 50 + 1 for i in range(400)])
    lengths = [len(e.input_ids) for e in data]
    waste = {}
    for grouped in (False, True):
        sampler = BatchSampler(lengths, 16, group_by_length=grouped)
        loader = DataLoader(data, batch_sampler=sampler, collate_fn=partial(collate_padded, pad_id=PAD))
        batches = list(loader)
        assert sorted(i for b in batches for i in b["ids"]) == sorted(e.id for e in data)
        waste[grouped] = padding_waste(batches)
    assert waste[True] < waste[False] / 4


@pytest.mark.slow
def test_real_sample_padding_waste(shared):
    """Every real row ends in the closing token after batching; packing and grouping cut the padding."""
    records = read_records(shared / "data" / "qc_sample.jsonl")
    tok = Tokenizer.from_file(str(shared / "tokenizers" / "qwen3" / "tokenizer.json"))
    data = examples(records, encode(tok, "qwen", records, 64, translate=False))
    lengths, pad = [len(e.input_ids) for e in data], pad_token_id(tok, "qwen")
    random_order = [[data[i] for i in b] for b in BatchSampler(lengths, 16, group_by_length=False)]
    padded = [collate_padded(b, pad) for b in random_order]
    packed = [collate_packed(b, pad, 128) for b in random_order]
    for batch in padded[:50] + packed[:50]:
        rows, cols = zip(*last_tokens(batch))
        assert (batch["input_ids"][list(rows), list(cols)] == close_token_id(tok, "qwen")).all()
    assert padding_waste(packed) < padding_waste(padded) / 3


def test_cli_prints_the_waste_of_each_layout(shared, tmp_path, capsys):
    row = {"task": "QI", "language": "en", "origin_query": "red shoes"}
    rows = [dict(row, id=i, item_title="shoe " * (i % 9)) for i in range(40)]
    path = tmp_path / "test_QI.txt"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main([str(path), str(shared / "tokenizers" / "qwen3"), "qwen", "--batch-size", "40"]) == 0
    printed = capsys.readouterr().out
    tok = Tokenizer.from_file(str(shared / "tokenizers" / "qwen3" / "tokenizer.json"))
    lengths = [len(ids) for ids in encode(tok, "qwen", read_records(path, training=False), 128, translate=False)]
    # one batch of all 40 rows, padded to the longest, whatever the order: waste = 1 - real / slots
    waste = 100 * (1 - sum(lengths) / (40 * max(lengths)))
    assert "40 examples" in printed and printed.count(f"{waste:5.1f}% padding, {40 * max(lengths)} token slots") == 2
    packed = next(line for line in printed.splitlines() if "packed" in line)
    assert float(packed.split(":")[1].split("%")[0]) < waste
    prefix = len(tok.encode("red shoes", add_special_tokens=False).ids) + len(tok.encode("\n").ids)
    computed = sum(lengths) - 39 * prefix  # one batch, one query: its prefix once, not 40 times
    shared_line = next(line for line in printed.splitlines() if "shared prefix" in line)
    assert f"own tokens / computed {sum(lengths) / computed:.2f}x" in shared_line


def test_a_budget_of_rows_times_length_gives_the_row_count_micro_batches():
    sampler = BatchSampler([16] * 40, 12, seed=3, world_size=2)
    for update in sampler.updates():
        for rank in (0, 1):
            rows = update[rank].tolist()
            assert micro_batches(update, rank, [16] * 40, 4 * 16) == [rows[j:j + 4] for j in range(0, len(rows), 4)]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 40), min_size=8, max_size=60), st.integers(1, 3), st.integers(48, 200),
       st.booleans())
def test_token_budget_micro_batches_fit_the_budget_and_pair_up_across_ranks(lengths, world, budget, packed):
    sampler = BatchSampler(lengths, 8, seed=0, world_size=world)
    for update in sampler.updates():
        shares = [micro_batches(update, r, lengths, budget, packed) for r in range(world)]
        assert len({len(s) for s in shares}) == 1  # every rank as many forward/backward passes
        for rank, share in enumerate(shares):
            assert sorted(i for part in share for i in part) == sorted(update[rank].tolist()) and all(share)
            for part in share:
                slots = sum(lengths[i] for i in part) if packed else len(part) * bucketed(max(lengths[i] for i in part))
                assert slots <= budget or len(part) == 1


def test_bucketed_batches_pad_to_a_multiple_of_the_bucket():
    batch = collate_padded(make([3, 17, 5]), PAD, bucket=True)
    assert batch["input_ids"].shape == (3, 2 * BUCKET) and bucketed(17) == 32 and bucketed(16) == 16


def grouped(sizes, prefix: int = 4, suffix: int = 3, lead: tuple = ()) -> list[Example]:
    """Groups of `sizes` examples; those of a group begin with the same `prefix` tokens (after `lead`, which
    every example begins with)."""
    out = []
    for g, n in enumerate(sizes):
        head = [*lead] + [1000 + 10 * g + t for t in range(prefix)]
        out += [Example(f"g{g}e{j}", head + [5000 + 100 * g + 10 * j + t for t in range(suffix + j % 2)], j % 2,
                        group=f"g{g}") for j in range(n)]
    return out


@pytest.mark.parametrize("lead", [(), (2, 3)])
def test_shared_rows_hold_each_prefix_once_and_every_example_whole(lead):
    """Each group's prefix once, and the tokens every example begins with (`lead`) once a row: its root."""
    data = grouped([3, 1, 2], lead=lead) + [Example("x", [*lead, 7, 8, 9], 1)]
    batch = collate_shared(data, PAD)
    ids, mask, pos, sub = (batch[k] for k in ("input_ids", "attention_mask", "position_ids", "suffix_ids"))
    units = [len(set(row[row > 0].tolist())) for row in mask]
    own = (4 + 3 + 4 + 3) + (4 + 3) + (4 + 3 + 4) + 3 + len(lead) * 4  # each prefix once, with its lead
    assert batch["input_ids"].ne(PAD).sum() == own - len(lead) * sum(n - 1 for n in units)  # the lead once a row
    assert (sub == -1).sum() == len(lead) * sum(n > 1 for n in units) and max(units) > 1
    assert sorted(batch["ids"]) == sorted(e.id for e in data)
    by_id = {e.id: e for e in data}
    assert batch["labels"].tolist() == [by_id[i].label for i in batch["ids"]]
    rebuilt = []
    for r in range(len(ids)):
        for j in sub[r].unique().tolist():
            if j <= 0:
                continue
            cols = (sub[r] == j).nonzero().flatten()
            unit = mask[r, cols[0]]
            prefix = ((sub[r] == -1) | (mask[r] == unit) & (sub[r] == 0)).nonzero().flatten()
            tokens = ids[r, torch.cat([prefix, cols])].tolist()
            assert cols.tolist() == list(range(int(cols[0]), int(cols[-1]) + 1))  # one contiguous run
            assert pos[r, torch.cat([prefix, cols])].tolist() == list(range(len(tokens)))  # positions continue
            rebuilt.append(tokens)
    assert rebuilt == [by_id[i].input_ids for i in batch["ids"]]  # suffixes in label order, each with its prefix
    assert (sub[mask == 0] == 0).all() and (ids[mask == 0] == PAD).all()


def test_group_sampler_draws_chunks_of_groups_and_covers_every_example():
    sizes = [1, 2, 5, 9, 17, 3, 1, 1, 4]
    groups = [g for g, n in enumerate(sizes) for _ in range(n)]
    sampler = BatchSampler([5] * len(groups), 6, seed=1, groups=groups, group_size=4)
    order = [i for b in sampler for i in b]
    assert sorted(order) == list(range(len(groups)))  # every example once
    chunks = sampler.chunks(np.arange(len(groups)), np.random.default_rng(0))
    assert sorted(np.concatenate(chunks).tolist()) == list(range(len(groups)))
    assert all(len({groups[i] for i in c}) == 1 and 1 <= len(c) <= 4 for c in chunks)  # one group, <= group_size
    assert sorted(len(c) for c in chunks if groups[c[0]] == 4) == [3, 3, 3, 4, 4]  # 17 in near-equal chunks
    assert order == [i for b in BatchSampler([5] * len(groups), 6, seed=1, groups=groups, group_size=4) for i in b]
    sampler.set_epoch(1)
    assert [i for b in sampler for i in b] != order  # reshuffled each epoch
    evaluation = [i for b in BatchSampler([5] * len(groups), 6, shuffle=False, groups=groups) for i in b]
    assert [groups[i] for i in evaluation] == sorted(groups)  # without shuffle: each group's examples together


def test_fill_makes_batches_of_whole_chunks():
    chunks = [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9], [10], [11, 12], [13, 14, 15, 16, 17, 18, 19]]
    out = fill([np.array(c) for c in chunks], 5)
    flat = np.concatenate(out).tolist()
    assert sorted(flat) == list(range(20))  # every example once
    batches = [flat[i:i + 5] for i in range(0, 20, 5)]
    assert batches[:2] == [[0, 1, 2, 3, 10], [4, 5, 6, 11, 12]]  # earliest chunk that fits the room left
    assert batches[2:] == [[7, 8, 9, 13, 14], [15, 16, 17, 18, 19]]  # none fits: the earliest is split
    assert [len(c) for c in out] == [4, 1, 3, 2, 3, 2, 5]  # the split chunk's rest fills the next batch whole


def test_group_sampler_batches_hold_whole_chunks():
    sizes = np.random.default_rng(0).geometric(0.4, 150)  # many small groups, as category paths are
    groups = [g for g, n in enumerate(sizes) for _ in range(n)]
    sampler = BatchSampler([5] * len(groups), 16, seed=3, groups=groups, group_size=4, drop_last=True)
    rng = np.random.default_rng([3, 0])  # the epoch's draws, in steps()' order
    chunks = sampler.chunks(rng.permutation(len(groups)), rng)
    batch_of = {i: b for b, batch in enumerate(sampler) for i in batch}
    cut = [c for c in chunks if len({batch_of.get(i, -1) for i in c}) > 1]
    assert len(chunks) > 150 and len(cut) <= 1  # whole chunks; at most one split, at the epoch's end


def test_group_sampler_steps_are_the_same_on_any_number_of_ranks():
    sizes = np.random.default_rng(1).geometric(0.4, 80)
    groups = [g for g, n in enumerate(sizes) for _ in range(n)]
    one = BatchSampler([5] * len(groups), 8, seed=2, groups=groups, drop_last=True).steps()
    two = BatchSampler([5] * len(groups), 4, seed=2, groups=groups, world_size=2, drop_last=True).steps()
    assert [sorted(s.flatten().tolist()) for s in one] == [sorted(s.flatten().tolist()) for s in two]  # same updates


def test_shared_micro_batches_keep_the_sampler_order():
    lengths = [3, 9, 4, 4, 8, 2]
    step = torch.tensor([[0, 1, 2, 3, 4, 5]])
    parts = micro_batches(step, 0, lengths, max_tokens=12, shared=True)
    assert parts == [[0, 1], [2, 3], [4, 5]]  # in order, each at most 12 of the examples' own tokens
