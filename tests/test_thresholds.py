"""Thresholds from out-of-fold probabilities: global, per language (shrunk, with a fallback), cross-fitted choice."""
import numpy as np
import pytest

from train.metrics import best_threshold, classification_metrics
from train.thresholds import SHRINK_ROWS, Thresholds, choose, cross_fitted_f1, tune


def rows(seed=0, n=400):
    """Two languages whose scores need different thresholds: 'ja' scores run 0.3 lower than 'en'."""
    rng = np.random.default_rng(seed)
    languages = np.array(["en", "ja"] * (n // 2))
    labels = rng.integers(0, 2, n)
    probs = np.clip(0.35 + 0.3 * labels + rng.normal(0, 0.08, n) - 0.3 * (languages == "ja"), 0, 1)
    return probs, labels, languages, np.arange(n) % 4


def test_per_language_thresholds_are_shrunk_towards_the_global_one():
    probs, labels, languages, _ = rows()
    t = tune(probs, labels, languages)
    assert t.global_ == best_threshold(probs, labels)
    for lang in ("en", "ja"):
        mask = languages == lang
        own, n = best_threshold(probs[mask], labels[mask]), mask.sum()
        assert t.per_language[lang] == pytest.approx((n * own + SHRINK_ROWS * t.global_) / (n + SHRINK_ROWS))
    assert t.per_language["ja"] + 0.1 < t.per_language["en"]


def test_a_language_absent_from_training_uses_the_global_threshold():
    t = Thresholds(0.4, {"en": 0.6})
    assert t.of("per_language", "de") == 0.4 and t.of("per_language", "en") == 0.6
    assert t.of("global", "en") == 0.4 and t.of("0.5", "en") == 0.5 and t.of(0.7, "de") == 0.7


def test_a_language_with_one_class_only_keeps_the_global_threshold():
    t = tune([0.2, 0.9, 0.8, 0.3], [0, 1, 1, 1], ["en", "en", "ko", "ko"])
    assert t.per_language["ko"] == pytest.approx(t.global_)


def test_cross_fitting_scores_each_fold_with_thresholds_from_the_others():
    probs, labels, languages, folds = rows()
    f1 = cross_fitted_f1(probs, labels, languages, folds, "global")
    preds = np.zeros(len(probs), int)
    for k in range(4):
        rest = folds != k
        preds[folds == k] = probs[folds == k] >= best_threshold(probs[rest], labels[rest])
    assert f1 == pytest.approx(classification_metrics(preds, labels, languages)["f1"])


def test_choose_prefers_per_language_when_languages_are_calibrated_differently():
    probs, labels, languages, folds = rows()
    best, scores = choose(probs, labels, languages, folds)
    assert best == "per_language" and scores["per_language"] > scores["global"] + 0.01
    same = np.where(languages == "ja", probs + 0.3, probs).clip(0, 1)  # one calibration: no reason to split
    best, scores = choose(same, labels, languages, folds)
    assert scores["per_language"] <= scores["global"] + 0.01
