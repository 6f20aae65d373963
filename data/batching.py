"""Token ids -> batches of tensors, padded or packed, and the batch sampler that orders them.

A batch is a dict:
    input_ids       (B, T) long
    attention_mask  (B, T) long: 0 = padding, k > 0 = the k-th example of the row
    position_ids    (B, T) long: 0, 1, 2, ... restarting for each example; 0 on padding
    token_type_ids  (B, T) long, only when the examples have token types (BERT's segments); 0 on padding
    labels          (N,) long: one per example, row by row then example by example; -1 when unlabelled
    ids             N record ids, in the order of labels
A padded batch has one example per row; a packed batch concatenates examples into rows of at most
`row_tokens` tokens. The model must let a token attend only within its own example and pool the last
token of each example. `python -m train.commands.padding` prints the padding waste of each layout for a file.
"""
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class Example:
    id: str
    input_ids: list[int]
    label: int | None
    token_types: list[int] | None = None


def examples(records, token_ids, token_types=None) -> list[Example]:
    """Pair records with their token ids (from data.inputs.encode) and token types (data.inputs.token_types, None
    for families without); a list of these is a Dataset."""
    types = token_types or [None] * len(token_ids)
    return [Example(r.id, ids, r.label, t) for r, ids, t in zip(records, token_ids, types, strict=True)]


def bucketed(length: int) -> int:
    """`length` rounded up to a multiple of BUCKET: the widths of token-budget batches, few distinct shapes."""
    return -(-length // BUCKET) * BUCKET


def collate_rows(rows: list[list[Example]], pad_id: int, padding_side: str = "right", bucket: bool = False) -> dict:
    """One row of the batch per list of examples, concatenated and padded to the longest row (rounded up to a
    multiple of BUCKET tokens with `bucket`)."""
    if padding_side not in ("right", "left"):
        raise ValueError(f"padding_side must be 'right' or 'left', got {padding_side!r}")
    width = max(sum(len(e.input_ids) for e in row) for row in rows)
    width = bucketed(width) if bucket else width
    typed = rows[0][0].token_types is not None
    columns = {"input_ids": [], "attention_mask": [], "position_ids": []} | ({"token_type_ids": []} if typed else {})
    for row in rows:
        ids = [t for e in row for t in e.input_ids]
        numbers = [k for k, e in enumerate(row, 1) for _ in e.input_ids]
        positions = [p for e in row for p in range(len(e.input_ids))]
        types = [t for e in row for t in e.token_types] if typed else None
        n_pad = width - len(ids)
        for name, values, fill in [("input_ids", ids, pad_id), ("attention_mask", numbers, 0),
                                   ("position_ids", positions, 0), ("token_type_ids", types, 0)][:3 + typed]:
            columns[name].append(values + [fill] * n_pad if padding_side == "right" else [fill] * n_pad + values)
    batch = {name: torch.tensor(values, dtype=torch.long) for name, values in columns.items()}
    flat = [e for row in rows for e in row]
    batch["labels"] = torch.tensor([-1 if e.label is None else e.label for e in flat], dtype=torch.long)
    batch["ids"] = [e.id for e in flat]
    return batch


def collate_padded(examples: list[Example], pad_id: int, padding_side: str = "right", bucket: bool = False) -> dict:
    return collate_rows([[e] for e in examples], pad_id, padding_side, bucket)


def pack(examples: list[Example], row_tokens: int) -> list[list[Example]]:
    """Balanced rows of at most row_tokens: longest example first, to the shortest row; starting from the
    fewest rows the tokens need, one more row until every row fits."""
    for e in examples:
        if len(e.input_ids) > row_tokens:
            raise ValueError(f"example {e.id} has {len(e.input_ids)} tokens, more than row_tokens={row_tokens}")
    n_rows = -(-sum(len(e.input_ids) for e in examples) // row_tokens)
    while True:  # ends: with one example per row every row fits
        rows, sizes = [[] for _ in range(n_rows)], [0] * n_rows
        for e in sorted(examples, key=lambda e: -len(e.input_ids)):
            i = sizes.index(min(sizes))
            rows[i].append(e)
            sizes[i] += len(e.input_ids)
        if max(sizes) <= row_tokens:
            return rows
        n_rows += 1


def collate_packed(examples: list[Example], pad_id: int, row_tokens: int, bucket: bool = False) -> dict:
    return collate_rows(pack(examples, row_tokens), pad_id, bucket=bucket)


def micro_batches(step, rank: int, lengths, max_tokens: int, packed: bool = False) -> list[list[int]]:
    """Rank `rank`'s share of one update (`step`: every rank's example indices, one row per rank) in micro-batches
    of at most `max_tokens` token slots: padded, rows x the longest row rounded up to BUCKET; packed, the
    examples' tokens. Longest examples first. Every rank gets as many micro-batches (the most any rank needs, its
    largest ones split in two) so that FSDP's collectives pair up; the loss weighs each micro-batch by its
    examples, so the update is the same however they are split."""
    def slots(batch):  # longest first: a padded batch is as wide as its first example
        return sum(lengths[i] for i in batch) if packed else len(batch) * bucketed(lengths[batch[0]])

    def split(indices):
        out = []
        for i in sorted(indices, key=lambda i: -lengths[i]):
            if out and slots(out[-1] + [i]) <= max_tokens:
                out[-1].append(i)
            else:
                out.append([i])
        return out

    shares = [split(row.tolist()) for row in step]
    mine, most = shares[rank], max(len(s) for s in shares)
    while len(mine) < most:  # every rank has as many examples as the one that needs `most` micro-batches
        j = max(range(len(mine)), key=lambda j: len(mine[j]))
        half = len(mine[j]) // 2
        mine[j:j + 1] = [mine[j][:half], mine[j][half:]]
    return mine


def padding_waste(batches) -> float:
    """Fraction of the batches' token slots that are padding."""
    pads = sum(int((b["attention_mask"] == 0).sum()) for b in batches)
    return pads / sum(b["attention_mask"].numel() for b in batches)


BUCKET = 16  # token-budget batches pad their rows to a multiple of this many tokens


class BatchSampler:
    """Batches of example indices for one rank: shuffled per (seed, epoch), optionally grouped by length.

    Length grouping sorts the examples of each megabatch (`megabatch` steps of all ranks) by length, so a
    batch holds examples of similar length; without shuffle the whole epoch is sorted (evaluation). The
    epoch's steps are shared out so rank r takes batch r of every step: ranks get disjoint batches and
    the same number of steps. Without drop_last, up to world_size - 1 examples are repeated so that every
    rank gets as many; one step may then have smaller batches. Resume with set_epoch(epoch, start_step).
    """

    def __init__(self, lengths, batch_size, seed=0, shuffle=True, group_by_length=True, rank=0, world_size=1,
                 drop_last=False, megabatch=50):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
        self.lengths, self.batch_size, self.seed, self.shuffle = np.asarray(lengths), batch_size, seed, shuffle
        self.group_by_length, self.rank, self.world_size = group_by_length, rank, world_size
        self.drop_last, self.megabatch = drop_last, megabatch
        self.set_epoch(0)

    def set_epoch(self, epoch: int, start_step: int = 0):
        self.epoch = epoch
        self.epoch_steps = self.steps()
        if not 0 <= start_step <= len(self.epoch_steps):
            raise ValueError(f"start_step {start_step} is outside epoch {epoch} of {len(self.epoch_steps)} steps "
                             "(resumed with another batch size, world size or dataset?)")
        self.start_step = start_step

    def steps(self) -> list[np.ndarray]:
        """All ranks' batches of the epoch: one (world_size, batch) index array per step."""
        rng = np.random.default_rng([self.seed, self.epoch])
        n, step = len(self.lengths), self.batch_size * self.world_size
        order = rng.permutation(n) if self.shuffle else np.arange(n)
        if self.group_by_length and n:
            size = step * self.megabatch if self.shuffle else n
            chunks = [order[i : i + size] for i in range(0, n, size)]
            order = np.concatenate([c[np.argsort(-self.lengths[c], kind="stable")] for c in chunks])
        if self.drop_last:
            order = order[: n - n % step]
        else:
            order = np.resize(order, -(-n // self.world_size) * self.world_size)
        full = len(order) - len(order) % step
        steps = list(order[:full].reshape(-1, self.world_size, self.batch_size))
        if full < len(order):
            steps.append(order[full:].reshape(self.world_size, -1))
        return [steps[i] for i in rng.permutation(len(steps))] if self.shuffle else steps

    def __iter__(self):
        for s in self.epoch_steps[self.start_step :]:
            yield s[self.rank].tolist()

    def updates(self):
        """Every rank's indices of each remaining step of the epoch, one (world_size, batch) array per step."""
        yield from self.epoch_steps[self.start_step :]

    def __len__(self):
        return len(self.epoch_steps) - self.start_step
