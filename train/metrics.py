"""Validation metrics of a binary relevance classifier: positive-class F1, precision, recall, ROC-AUC, per language."""
import math

import numpy as np
from sklearn.metrics import f1_score, precision_recall_curve, precision_score, recall_score, roc_auc_score

PER_LANGUAGE = ("f1_", "auc_", "all_positive_f1_")  # prefixes of one language's metrics: f1_ja, auc_ja, ...


def classification_metrics(probs, labels, languages, threshold: float = 0.5) -> dict:
    """Metrics of P(relevant) `probs` against 0/1 `labels`; AUC is NaN when only one class is present."""
    probs, labels, languages = np.asarray(probs), np.asarray(labels), np.asarray(languages)
    preds = (probs >= threshold).astype(int)
    out = {
        "f1": f1_score(labels, preds, zero_division=0),
        "precision": precision_score(labels, preds, zero_division=0),
        "recall": recall_score(labels, preds, zero_division=0),
        "auc": roc_auc_score(labels, probs) if len(set(labels.tolist())) == 2 else math.nan,
        "all_positive_f1": f1_score(labels, np.ones_like(labels), zero_division=0),
        "threshold": threshold,
    }
    for lang in sorted(set(languages.tolist())):
        mask = languages == lang
        out[f"f1_{lang}"] = f1_score(labels[mask], preds[mask], zero_division=0)
        out[f"auc_{lang}"] = roc_auc_score(labels[mask], probs[mask]) if len(set(labels[mask].tolist())) == 2 \
            else math.nan
        out[f"all_positive_f1_{lang}"] = f1_score(labels[mask], np.ones_like(labels[mask]), zero_division=0)
    return {k: float(v) for k, v in out.items()}


def best_threshold(probs, labels) -> float:
    """The decision threshold on `probs` that maximises positive-class F1 on these labels."""
    precision, recall, thresholds = precision_recall_curve(labels, probs)
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
    return float(thresholds[np.argmax(f1[:-1])]) if len(thresholds) else 0.5
