"""Validation metrics: positive-class F1, precision, recall, AUC, per-language F1, threshold tuning."""
import json
import math

import pytest

from train.metrics import best_threshold, classification_metrics, fmt


def test_hand_counted_metrics():
    probs = [0.9, 0.8, 0.3, 0.6, 0.1, 0.7]
    labels = [1, 1, 1, 0, 0, 0]
    langs = ["en", "en", "fr", "fr", "en", "fr"]
    m = classification_metrics(probs, labels, langs)
    # predicted positive: 0.9, 0.8, 0.6, 0.7 -> TP 2, FP 2, FN 1
    assert m["precision"] == pytest.approx(0.5) and m["recall"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(2 * 0.5 * (2 / 3) / (0.5 + 2 / 3))
    # en: TP 2, FP 0, FN 0 -> 1.0; fr: TP 0 -> 0.0
    assert m["f1_en"] == 1.0 and m["f1_fr"] == 0.0
    assert m["auc"] == pytest.approx(7 / 9)  # 7 of 9 positive/negative pairs are ordered right
    assert m["all_positive_f1"] == pytest.approx(2 * 0.5 / 1.5)
    # en: positives 0.9, 0.8 above the negative 0.1 -> AUC 1; fr: positive 0.3 below both negatives -> 0
    assert m["auc_en"] == 1.0 and m["auc_fr"] == 0.0
    assert m["all_positive_f1_en"] == pytest.approx(2 * (2 / 3) / (2 / 3 + 1))  # 2 of 3 en rows are relevant
    assert m["all_positive_f1_fr"] == pytest.approx(2 * (1 / 3) / (1 / 3 + 1))


def test_undefined_metrics_are_none_never_nan():
    m = classification_metrics([0.2, 0.9], [1, 1], ["en", "en"])  # one class: no AUC, F1 defined
    assert m["auc"] is None and m["auc_en"] is None and m["f1"] == pytest.approx(2 / 3)
    m = classification_metrics([0.2, 0.3], [0, 0], ["en", "fr"])  # no relevant row, none predicted relevant
    assert all(m[k] is None for k in ("f1", "precision", "recall", "auc", "all_positive_f1", "f1_en", "auc_fr"))
    assert json.loads(json.dumps(m, allow_nan=False)) == m
    assert best_threshold([0.2, 0.3], [0, 0]) == 0.5 and fmt(None) == "n/a" and fmt(math.nan) == "n/a"


def test_tuned_threshold_beats_the_default_when_scores_are_shifted():
    probs = [0.05, 0.1, 0.15, 0.2, 0.3, 0.35, 0.4]
    labels = [0, 0, 0, 1, 1, 1, 1]
    t = best_threshold(probs, labels)
    assert 0.15 < t <= 0.2
    assert classification_metrics(probs, labels, ["en"] * 7, t)["f1"] == 1.0
    assert classification_metrics(probs, labels, ["en"] * 7)["f1"] == 0.0
