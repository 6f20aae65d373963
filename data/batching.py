"""Token ids -> batches of tensors, padded or packed, and the batch sampler that orders them.

A batch is a dict:
    input_ids       (B, T) long
    attention_mask  (B, T) long: 0 = padding, k > 0 = the k-th example of the row
    position_ids    (B, T) long: 0, 1, 2, ... restarting for each example; 0 on padding
    token_type_ids  (B, T) long, only when the examples have token types (BERT's segments); 0 on padding
    labels          (N,) long: one per example, row by row then example by example; -1 when unlabelled
    ids             N record ids, in the order of labels
    suffix_ids      (B, T) long, shared-prefix batches only: 0 on a shared prefix (and padding), j > 0 on the
                    j-th suffix of the row, -1 on the row's root (the tokens all its units begin with, e.g.
                    <bos>: every token of the row sees them); position_ids of a suffix continue from the end of
                    its prefix, those of a prefix from the end of the root
A padded batch has one example per row; a packed batch concatenates examples into rows of at most
`row_tokens` tokens. A shared-prefix batch computes once the tokens that examples of one group (Example.group:
data.inputs.group_key) all begin with: a row holds units, each a prefix followed by the rest (the suffix) of
every example of its group, and the model pools each suffix's last token. The model must let a token attend
only within its own example (a suffix: its prefix and itself) and pool the last token of each example.
`python -m train.commands.padding` prints the padding waste of each layout for a file.
"""
from collections import deque
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class Example:
    id: str
    input_ids: list[int]
    label: int | None
    group: str | None = None  # examples of one group begin with the same tokens (None: a group of its own)
    token_types: list[int] | None = None  # segment ids (BERT), None for families without


def examples(records, token_ids, groups=None, token_types=None) -> list[Example]:
    """Pair records with their token ids (from data.inputs.encode), group keys (data.inputs.group_key) and token
    types (data.inputs.token_types, None for families without); a list of these is a Dataset."""
    groups = groups or [None] * len(token_ids)
    types = token_types or [None] * len(token_ids)
    return [Example(r.id, ids, r.label, g, t) for r, ids, g, t in zip(records, token_ids, groups, types, strict=True)]


Unit = tuple[list[int], list[Example]]  # a prefix and the examples that begin with it, laid out once in a row


def shared_units(examples: list[Example]) -> list[Unit]:
    """The examples as units, groups in order of first appearance: the examples of a group share the tokens they
    all begin with (at most all but the last token of the shortest); an example alone in its group, or with
    nothing in common, is a unit of its own with no prefix."""
    groups = {}
    for e in examples:
        groups.setdefault((0, e.id) if e.group is None else (1, e.group), []).append(e)
    units = []
    for members in groups.values():
        n = min(len(e.input_ids) for e in members) - 1 if len(members) > 1 else 0
        for e in members[1:]:
            n = next((i for i, (a, b) in enumerate(zip(members[0].input_ids[:n], e.input_ids)) if a != b), n)
        units += [(members[0].input_ids[:n], members)] if n else [([], [e]) for e in members]
    return units


def group_batches(examples: list[Example], batch_size: int) -> list[list[Example]]:
    """Inference batches of `batch_size` examples, each group's examples consecutive and the groups in order of
    their tokens (similar sizes together: little padding), so that collate_shared computes each prefix once."""
    size = {}
    for e in examples:
        size[e.group] = size.get(e.group, 0) + len(e.input_ids)
    order = sorted(examples, key=lambda e: (size[e.group], e.group or "", len(e.input_ids)))
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def unit_tokens(unit: Unit) -> int:
    prefix, members = unit
    return len(prefix) + sum(len(e.input_ids) - len(prefix) for e in members)


def bucketed(length: int) -> int:
    """`length` rounded up to a multiple of BUCKET: the widths of token-budget batches, few distinct shapes."""
    return -(-length // BUCKET) * BUCKET


def root_length(row: list[Unit]) -> int:
    """How many leading tokens all units of a shared-prefix row begin with (<bos>, a question's opening words, a
    category path's first levels), leaving each unit's suffixes at least one token: the row computes them once."""
    if len(row) < 2:
        return 0
    leads = [prefix or members[0].input_ids[:-1] for prefix, members in row]
    n = min(map(len, leads))
    for lead in leads[1:]:
        n = next((i for i, (a, b) in enumerate(zip(leads[0][:n], lead)) if a != b), n)
    return n


def row_width(row: list[Unit], root: int) -> int:
    return sum(map(unit_tokens, row)) - root * (len(row) - 1)


def collate_rows(rows: list[list[Unit]], pad_id: int, padding_side: str = "right", bucket: bool = False) -> dict:
    """One row of the batch per list of units, concatenated and padded to the longest row (rounded up to a
    multiple of BUCKET tokens with `bucket`); suffix_ids only when some unit has a prefix. A row of such units
    starts with its root (root_length), once: suffix id -1, seen by every token of the row."""
    if padding_side not in ("right", "left"):
        raise ValueError(f"padding_side must be 'right' or 'left', got {padding_side!r}")
    shared = any(prefix for row in rows for prefix, _ in row)
    roots = [root_length(row) if shared else 0 for row in rows]
    width = max(row_width(row, root) for row, root in zip(rows, roots))
    width = bucketed(width) if bucket else width
    typed = rows[0][0][1][0].token_types is not None
    columns = {"input_ids": [], "attention_mask": [], "position_ids": []} | ({"suffix_ids": []} if shared else {}) \
        | ({"token_type_ids": []} if typed else {})
    for row, root in zip(rows, roots):
        values = {name: [] for name in columns}
        suffix = 0
        for k, (prefix, members) in enumerate(row, 1):
            start = len(prefix) or root  # a unit without a prefix: each example's tokens after the root
            # (tokens, suffix number (0: the unit's prefix, -1: the row's root), first position, example)
            spans = [(members[0].input_ids[:root], -1, 0, members[0])] if k == 1 and root else []
            spans.append((prefix[root:], 0, root, members[0]))
            for e in members:
                suffix += 1
                spans.append((e.input_ids[start:], suffix, start, e))
            for ids, j, start, e in spans:
                values["input_ids"] += ids
                values["attention_mask"] += [k] * len(ids)
                values["position_ids"] += range(start, start + len(ids))
                if shared:
                    values["suffix_ids"] += [j] * len(ids)
                if typed:
                    values["token_type_ids"] += e.token_types[start:start + len(ids)]
        n_pad = width - len(values["input_ids"])
        for name, column in values.items():
            fill = [pad_id if name == "input_ids" else 0] * n_pad
            columns[name].append(column + fill if padding_side == "right" else fill + column)
    batch = {name: torch.tensor(values, dtype=torch.long) for name, values in columns.items()}
    flat = [e for row in rows for _, members in row for e in members]
    batch["labels"] = torch.tensor([-1 if e.label is None else e.label for e in flat], dtype=torch.long)
    batch["ids"] = [e.id for e in flat]
    return batch


def collate_padded(examples: list[Example], pad_id: int, padding_side: str = "right", bucket: bool = False) -> dict:
    return collate_rows([[([], [e])] for e in examples], pad_id, padding_side, bucket)


def pack(units: list[Unit], row_tokens: int) -> list[list[Unit]]:
    """Balanced rows of at most row_tokens: longest unit first, to the shortest row; starting from the fewest
    rows the tokens need, one more row until every row fits."""
    for unit in units:
        if unit_tokens(unit) > row_tokens:
            raise ValueError(f"example {unit[1][0].id} has {unit_tokens(unit)} tokens, more than "
                             f"row_tokens={row_tokens}")
    n_rows = -(-sum(map(unit_tokens, units)) // row_tokens)
    while True:  # ends: with one unit per row every row fits
        rows, sizes = [[] for _ in range(n_rows)], [0] * n_rows
        for unit in sorted(units, key=lambda u: -unit_tokens(u)):
            i = sizes.index(min(sizes))
            rows[i].append(unit)
            sizes[i] += unit_tokens(unit)
        if max(sizes) <= row_tokens:
            return rows
        n_rows += 1


def collate_packed(examples: list[Example], pad_id: int, row_tokens: int, bucket: bool = False) -> dict:
    return collate_rows(pack([([], [e]) for e in examples], row_tokens), pad_id, bucket=bucket)


def collate_shared(examples: list[Example], pad_id: int, bucket: bool = False) -> dict:
    """Shared-prefix rows: each group's prefix once, then its examples' suffixes; units packed into rows of at most
    twice the longest unit (on the QC sample, batches of 16: 7% padding, where rows as long as the longest unit pad
    19%; a row's attention spans up to twice as many keys, a few percent of a step at these lengths). A batch in
    which no two examples share a prefix (an encoder's, whose groups are None) is collate_padded's."""
    units = shared_units(examples)
    if not any(prefix for prefix, _ in units):
        return collate_padded(examples, pad_id, bucket=bucket)
    return collate_rows(pack(units, 2 * max(map(unit_tokens, units))), pad_id, bucket=bucket)


def micro_batches(step, rank: int, lengths, max_tokens: int, packed: bool = False,
                  shared: bool = False) -> list[list[int]]:
    """Rank `rank`'s share of one update (`step`: every rank's example indices, one row per rank) in micro-batches
    of at most `max_tokens` token slots: padded, rows x the longest row rounded up to BUCKET; packed, the
    examples' tokens, longest examples first; shared (prefix rows), the examples' own tokens (at least what their
    rows hold) in the sampler's order, so a group's examples stay together. Every rank gets as many micro-batches
    (the most any rank needs, its largest ones split in two) so that FSDP's collectives pair up; the loss weighs
    each micro-batch by its examples, so the update is the same however they are split."""
    def slots(batch):  # longest first: a padded batch is as wide as its first example
        return sum(lengths[i] for i in batch) if packed or shared else len(batch) * bucketed(lengths[batch[0]])

    def split(indices):
        out = []
        for i in indices if shared else sorted(indices, key=lambda i: -lengths[i]):
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
    """Batches of example indices for one rank: shuffled per (seed, epoch), grouped by length or by shared prefix.

    With `groups` (a group number per example: one shared prefix), batches are drawn from groups, not rows: each
    group's examples are shuffled and cut into chunks of at most `group_size`, the chunks are shuffled, and each
    batch is filled with whole chunks (`filled`), so a batch holds a few examples of each of several prefixes and
    computes each of them once (without shuffle, each group's examples are consecutive). Otherwise length
    grouping sorts the examples of each megabatch (`megabatch` steps of all ranks) by length, so a batch holds
    examples of similar length; without shuffle the whole epoch is sorted (evaluation). The
    epoch's steps are shared out so rank r takes batch r of every step: ranks get disjoint batches and
    the same number of steps. Without drop_last, up to world_size - 1 examples are repeated so that every
    rank gets as many; one step may then have smaller batches. Resume with set_epoch(epoch, start_step).
    """

    def __init__(self, lengths, batch_size, seed=0, shuffle=True, group_by_length=True, rank=0, world_size=1,
                 drop_last=False, megabatch=50, groups=None, group_size=8):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
        self.lengths, self.batch_size, self.seed, self.shuffle = np.asarray(lengths), batch_size, seed, shuffle
        self.group_by_length, self.rank, self.world_size = group_by_length, rank, world_size
        self.drop_last, self.megabatch = drop_last, megabatch
        self.groups, self.group_size = None if groups is None else np.asarray(groups), group_size
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
        if self.groups is not None and n:
            order = np.concatenate(self.filled(self.chunks(order, rng), step)) if self.shuffle else \
                np.argsort(self.groups, kind="stable")
        elif self.group_by_length and n:
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

    def chunks(self, order, rng) -> list[np.ndarray]:
        """Each group's examples (in `order`) cut into near-equal chunks of at most group_size, in random order."""
        members = {}
        for i in order.tolist():
            members.setdefault(self.groups[i], []).append(i)
        chunks = [c for m in members.values() for c in np.array_split(m, -(-len(m) // self.group_size))]
        return [chunks[j] for j in rng.permutation(len(chunks))]

    def filled(self, chunks, step: int) -> list[np.ndarray]:
        """The chunks filled into steps of `step` examples (`fill`), then each step's into its ranks' batches: a
        step holds the same examples whatever the world size, and a rank's batch whole chunks where they fit."""
        out, pieces, size = [], [], 0
        for piece in fill(chunks, step):
            pieces.append(piece)
            size += len(piece)
            if size == step:
                out += fill(pieces, self.batch_size)
                pieces, size = [], 0
        return out + pieces

    def __iter__(self):
        for s in self.epoch_steps[self.start_step :]:
            yield s[self.rank].tolist()

    def updates(self):
        """Every rank's indices of each remaining step of the epoch, one (world_size, batch) array per step."""
        yield from self.epoch_steps[self.start_step :]

    def __len__(self):
        return len(self.epoch_steps) - self.start_step


def fill(chunks: list, size: int) -> list:
    """The chunks in an order whose consecutive runs of `size` examples (the batches) hold whole chunks: each run
    takes, while it has room, the earliest chunk that fits; only when none left fits is the earliest one split
    (at the end of an epoch, or a chunk longer than `size`). A chunk laid end to end across two batches would
    have its prefix computed in both: with batches of 16 and chunks of 8 on the QC sample, filling computes 1.88x
    fewer tokens than the rows hold, where laying the shuffled chunks end to end computes 1.78x fewer."""
    chunks = list(chunks)
    queues = {}  # chunk length -> positions in `chunks`, in order
    for j, c in enumerate(chunks):
        queues.setdefault(len(c), deque()).append(j)
    out, room = [], size
    while any(queues.values()):
        fits = [q[0] for n, q in queues.items() if q and n <= room]
        j = min(fits) if fits else min(q[0] for q in queues.values() if q)
        queues[len(chunks[j])].popleft()
        piece, rest = chunks[j][:room], chunks[j][room:]
        if len(rest):  # split: the rest stays the earliest chunk of its length
            chunks[j] = rest
            queues.setdefault(len(rest), deque()).appendleft(j)
        out.append(piece)
        room = room - len(piece) or size
    return out
