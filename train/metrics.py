"""Validation metrics of a binary relevance classifier: positive-class F1, precision, recall, ROC-AUC, per language.

A metric the rows do not define is None (JSON `null`, "n/a" in tables): ROC-AUC of one class, F1 / recall /
all-positive F1 with no positive label, precision with no row predicted positive. Never NaN, which JSON lacks.
"""
import numpy as np
from sklearn.metrics import precision_recall_curve, roc_auc_score

PER_LANGUAGE = ("f1_", "auc_", "all_positive_f1_")  # prefixes of one language's metrics: f1_ja, auc_ja, ...


def _f1(labels, preds) -> float | None:
    positives = int(labels.sum())
    if positives == 0:
        return None
    tp = int((labels * preds).sum())
    return 2 * tp / (positives + int(preds.sum()))


def _auc(labels, probs) -> float | None:
    return float(roc_auc_score(labels, probs)) if len(set(labels.tolist())) == 2 else None


def classification_metrics(probs, labels, languages, threshold: float = 0.5) -> dict:
    """Metrics of P(relevant) `probs` against 0/1 `labels` (None where undefined, see above)."""
    probs, labels, languages = np.asarray(probs, dtype=float), np.asarray(labels, dtype=int), np.asarray(languages)
    preds = (probs >= threshold).astype(int)
    tp = int((labels * preds).sum())
    out = {
        "f1": _f1(labels, preds),
        "precision": tp / int(preds.sum()) if preds.sum() else None,
        "recall": tp / int(labels.sum()) if labels.sum() else None,
        "auc": _auc(labels, probs),
        "all_positive_f1": _f1(labels, np.ones_like(labels)),
        "threshold": float(threshold),
    }
    for lang in sorted(set(languages.tolist())):
        mask = languages == lang
        out[f"f1_{lang}"] = _f1(labels[mask], preds[mask])
        out[f"auc_{lang}"] = _auc(labels[mask], probs[mask])
        out[f"all_positive_f1_{lang}"] = _f1(labels[mask], np.ones_like(labels[mask]))
    return out


def fmt(value, spec: str = ".4f") -> str:
    """A metric for a table or log line: formatted, or "n/a" when undefined (None or NaN)."""
    return "n/a" if value is None or value != value else format(value, spec)


def best_threshold(probs, labels) -> float:
    """The decision threshold on `probs` that maximises positive-class F1 on these labels (0.5 when the labels
    hold one class: then every threshold has the same F1, or none is defined)."""
    if len(set(np.asarray(labels).tolist())) < 2:
        return 0.5
    precision, recall, thresholds = precision_recall_curve(labels, probs)
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
    return float(thresholds[np.argmax(f1[:-1])]) if len(thresholds) else 0.5
