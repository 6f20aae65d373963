"""Decision thresholds from out-of-fold (OOF) probabilities: every training row scored by the fold model that
did not train on it.

Choices: a fixed threshold (0.5), one global threshold tuned on all OOF rows, or a threshold per language, tuned
on that language's rows and shrunk towards the global one by SHRINK_ROWS pseudo-rows (a language with few rows
stays near the global threshold; a language absent from training gets the global one). Each choice is scored
by cross-fitting: the rows of fold k are predicted with thresholds tuned on the other folds only, so a choice
with more freedom (per language) does not win by fitting the rows it is scored on.
"""
from dataclasses import dataclass, field

import numpy as np

from train.metrics import best_threshold, classification_metrics

SHRINK_ROWS = 200


@dataclass
class Thresholds:
    global_: float
    per_language: dict[str, float] = field(default_factory=dict)

    def of(self, choice, language: str) -> float:
        """The threshold of `choice` ("global", "per_language" or a number) for a row of `language`."""
        if choice == "global":
            return self.global_
        if choice == "per_language":
            return self.per_language.get(language, self.global_)
        return float(choice)


def tune(probs, labels, languages) -> Thresholds:
    """The global and the shrunk per-language thresholds of these rows."""
    probs, labels, languages = np.asarray(probs), np.asarray(labels), np.asarray(languages)
    global_ = best_threshold(probs, labels)
    per_language = {}
    for lang in sorted(set(languages.tolist())):
        mask = languages == lang
        n = int(mask.sum())
        own = best_threshold(probs[mask], labels[mask]) if len(set(labels[mask].tolist())) == 2 else global_
        per_language[lang] = (n * own + SHRINK_ROWS * global_) / (n + SHRINK_ROWS)
    return Thresholds(global_, per_language)


def cross_fitted_f1(probs, labels, languages, folds, choice) -> float | None:
    """Positive-class F1 of `choice` over all rows, fold k's rows thresholded as tuned on the other folds (on all
    rows when there is a single fold: then the figure is in-sample)."""
    probs, labels, languages, folds = map(np.asarray, (probs, labels, languages, folds))
    preds = np.zeros(len(probs), dtype=int)
    for fold in sorted(set(folds.tolist())):
        rows = folds == fold
        rest = ~rows if (~rows).any() else rows
        thresholds = tune(probs[rest], labels[rest], languages[rest])
        cut = np.array([thresholds.of(choice, lang) for lang in languages[rows]])
        preds[rows] = probs[rows] >= cut
    return classification_metrics(preds, labels, languages, threshold=0.5)["f1"]


def choose(probs, labels, languages, folds) -> tuple[str, dict[str, float]]:
    """The choice with the best cross-fitted F1 among 0.5, global and per_language, and each one's F1."""
    scores = {str(c): cross_fitted_f1(probs, labels, languages, folds, c) for c in (0.5, "global", "per_language")}
    # a tie goes to the simpler global threshold; an undefined F1 (no relevant row) ties every choice
    best = max(scores, key=lambda c: (-1.0 if scores[c] is None else scores[c], c == "global"))
    return best, scores
