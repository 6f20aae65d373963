"""Category-aware, query-grouped, stratified K-fold split, and the language-held-out split built on it.

Groups: QI rows by normalised query, QC rows by the first `levels` levels of the category path, so a
validation fold holds queries (QI) or category subtrees (QC) never seen in training. Strata: language x label
(x top-level category if asked). Groups go greedily, largest first, to the fold where they least increase the
squared relative deviation of fold size and stratum counts from their targets.

Language-held-out fold k (`split_rows(..., language_groups=...)`) validates on grouped fold k mod K and trains
on the other grouped folds minus every row of language group k: its held-out languages are never seen in
training, no category group (or query) crosses the split, and the seen languages' rows of the same validation
fold give the seen-language figure of the same model.
`python -m train.commands.folds` prints a file's per-fold statistics and writes its assignment.
"""
import logging
import unicodedata
from collections import defaultdict

import numpy as np

from data.records import category_levels

log = logging.getLogger(__name__)


def group_key(record, levels: int) -> str:
    if record.task == "QI":
        return "QI:" + " ".join(unicodedata.normalize("NFKC", record.query).casefold().split())
    return "QC:" + ",".join(category_levels(record.target)[:levels])


def stratum(record, top_level: bool) -> tuple:
    top = (category_levels(record.target)[0],) if top_level and record.task == "QC" else ()
    return (record.language, record.label, *top)


def assign_folds(records, n_folds=5, levels=2, seed=0, stratify_top_level=False) -> list[int]:
    """Fold index (0..n_folds-1) per record; deterministic for a seed; no group spans two folds."""
    groups = defaultdict(list)
    for i, r in enumerate(records):
        groups[group_key(r, levels)].append(i)
    if n_folds < 2 or len(groups) < n_folds:
        raise ValueError(f"need 2 <= n_folds <= number of groups ({len(groups)}), got n_folds={n_folds}")
    strata = {s: j for j, s in enumerate(sorted({stratum(r, stratify_top_level) for r in records}, key=str))}
    counts = np.zeros((len(groups), len(strata) + 1))  # per group: rows per stratum, then all rows
    keys = list(groups)
    for g, key in enumerate(keys):
        for i in groups[key]:
            counts[g, strata[stratum(records[i], stratify_top_level)]] += 1
        counts[g, -1] = len(groups[key])
    target = counts.sum(0) / n_folds
    order = np.random.default_rng(seed).permutation(len(keys))
    order = order[np.argsort(-counts[order, -1], kind="stable")]  # largest first, ties in seeded order
    filled, closed = np.zeros((n_folds, counts.shape[1])), np.zeros(n_folds, bool)
    folds = [0] * len(records)
    for g in order:
        cost = (((filled + counts[g] - target) / target) ** 2 - ((filled - target) / target) ** 2).sum(1)
        f = int(np.argmin(np.where(closed, np.inf, cost)))
        filled[f] += counts[g]
        if counts[g, -1] > target[-1]:  # a group larger than a fold gets that fold to itself
            log.warning("group %r has %d rows, more than a fold (%.0f)", keys[g], counts[g, -1], target[-1])
            closed[f] = True
        for i in groups[keys[g]]:
            folds[i] = f
    return folds


def default_language_groups(records) -> list[list[str]]:
    """One held-out group per language of the records, in alphabetical order."""
    return [[lang] for lang in sorted({r.language for r in records})]


def split_rows(records, fold: int, n_folds: int = 5, levels: int = 2, seed: int = 0, top_level: bool = False,
               language_groups=None) -> tuple[list[int], list[int]]:
    """(training row indices, validation row indices) of fold `fold`: of the grouped K-fold split, or, with
    `language_groups`, of the language-held-out split (fold k holds out language_groups[k], see above)."""
    if language_groups is not None and not 0 <= fold < len(language_groups):
        raise ValueError(f"fold {fold} is not in [0, {len(language_groups)}): one fold per held-out language group "
                         f"{language_groups}")
    folds = assign_folds(records, n_folds, levels, seed, top_level)
    if language_groups is None:
        return [i for i, f in enumerate(folds) if f != fold], [i for i, f in enumerate(folds) if f == fold]
    held_out, grouped = set(language_groups[fold]), fold % n_folds
    train = [i for i, (r, f) in enumerate(zip(records, folds)) if f != grouped and r.language not in held_out]
    return train, [i for i, f in enumerate(folds) if f == grouped]


def shares(records, languages) -> list[float]:
    """Percent of positive labels among labelled rows, then percent of rows per language."""
    labels = [r.label for r in records if r.label is not None]
    languages_share = [100 * sum(r.language == lang for r in records) / len(records) for lang in languages]
    return [100 * sum(labels) / max(len(labels), 1), *languages_share]


def fold_stats(records, folds, levels=2) -> tuple[str, dict]:
    """A per-fold table (rows, groups, positive rate, language shares) and the worst deviations from global."""
    languages = sorted({r.language for r in records})
    overall, n_folds = shares(records, languages), max(folds) + 1
    table, worst = [], {"size %": 0.0, "label pp": 0.0, "language pp": 0.0}
    for f in range(n_folds):
        rows = [r for r, k in zip(records, folds) if k == f]
        values = shares(rows, languages)
        table.append([f, len(rows), len({group_key(r, levels) for r in rows}), *values])
        worst["size %"] = max(worst["size %"], abs(100 * len(rows) * n_folds / len(records) - 100))
        worst["label pp"] = max(worst["label pp"], abs(values[0] - overall[0]))
        worst["language pp"] = max(worst["language pp"], *(abs(a - b) for a, b in zip(values[1:], overall[1:])))
    table.append(["all", len(records), len({group_key(r, levels) for r in records}), *overall])
    header = ["fold", "rows", "groups", "label=1 %", *(f"{lang} %" for lang in languages)]
    lines = ["".join(f"{h:>10}" for h in header)]
    lines += ["".join(f"{v:>10.1f}" if isinstance(v, float) else f"{v:>10}" for v in row) for row in table]
    lines.append("worst deviation from global: " + ", ".join(f"{k} {v:.2f}" for k, v in worst.items()))
    return "\n".join(lines), worst
