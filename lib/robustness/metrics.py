"""Classification metrics from labels and predictions/logits, and metrics tables from a store's predictions.

Metrics (all fractions; ``METRICS`` registry, chosen by name): accuracy, balanced accuracy, worst-group
accuracy (groups are ints, negative = no group), macro-F1, and AUROC reported as 2·AUC − 1 (0 = chance).
"""
from __future__ import annotations

import warnings
from typing import Callable, Iterable

import numpy as np
import polars as pl

from askshift.lib.registry import Registry

SUB_SPLITS = {None: None, "all": None, "in_support": "in", "out_of_support": "out"}


def accuracy(labels, predictions) -> float:
    labels, predictions = np.asarray(labels), np.asarray(predictions)
    return float((labels == predictions).mean()) if len(labels) else float("nan")


def balanced_accuracy(labels, predictions) -> float:
    """Mean per-class recall over the classes present in ``labels``."""
    from sklearn.metrics import balanced_accuracy_score

    if not len(labels):
        return float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "y_pred contains classes not in y_true": the score is still defined
        return float(balanced_accuracy_score(labels, predictions))


def worst_group_accuracy(labels, predictions, groups) -> float:
    """Lowest accuracy over groups >= 0 (negative group = no group); NaN when no example has a group."""
    labels, predictions, groups = np.asarray(labels), np.asarray(predictions), np.asarray(groups)
    ids = np.unique(groups[groups >= 0])
    if not len(ids):
        return float("nan")
    return float(min((labels[groups == g] == predictions[groups == g]).mean() for g in ids))


def macro_f1(labels, predictions) -> float:
    from sklearn.metrics import f1_score

    if not len(labels):
        return float("nan")
    return float(f1_score(labels, predictions, average="macro", zero_division=0))


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def normalized_auroc(labels, logits) -> float:
    """2·AUC − 1 (the Gini coefficient: 0 = chance, 1 = perfect; the ``auroc`` metric of ER tables, on the same
    footing as accuracy).  ``askshift.lib.support.ratios.auroc`` is the plain AUC of the domain classifier.  Binary (2 columns): AUC of the class-1 margin; multi-class: macro one-vs-rest over the
    classes present with both positives and negatives.  NaN when fewer than two classes occur."""
    from sklearn.metrics import roc_auc_score

    labels = np.asarray(labels)
    logits = np.asarray(logits, dtype=np.float64)
    if logits.ndim == 1:
        logits = np.stack([-logits, logits], axis=1) / 2
    if len(np.unique(labels)) < 2:
        return float("nan")
    if logits.shape[1] == 2:
        return float(2 * roc_auc_score(labels == 1, logits[:, 1] - logits[:, 0]) - 1)
    probs = _softmax(logits)
    classes = [c for c in np.unique(labels) if 0 <= c < probs.shape[1] and (labels != c).any()]
    if not classes:
        return float("nan")
    # One multilabel call (one binary problem per column, macro average): per-class calls cost ~1 ms each.
    onehot = labels[:, None] == np.asarray(classes)[None, :]
    return float(2 * roc_auc_score(onehot, probs[:, classes], average="macro") - 1)


METRICS: Registry[Callable[..., float]] = Registry("metric")
METRICS.add("accuracy", lambda labels, predictions, logits, groups: accuracy(labels, predictions), "fraction correct")
METRICS.add("balanced_accuracy", lambda labels, predictions, logits, groups: balanced_accuracy(labels, predictions),
            "mean per-class recall")
METRICS.add("worst_group_accuracy", lambda labels, predictions, logits, groups: worst_group_accuracy(labels, predictions, groups),
            "lowest accuracy over groups (negative group = none)")
METRICS.add("macro_f1", lambda labels, predictions, logits, groups: macro_f1(labels, predictions), "unweighted mean F1 over classes")
METRICS.add("auroc", lambda labels, predictions, logits, groups: normalized_auroc(labels, logits) if logits is not None else float("nan"),
            "2·AUC − 1 (one-vs-rest macro for many classes)")


def compute_metrics(labels, predictions=None, logits=None, groups=None) -> dict[str, float]:
    """Every registered metric plus ``n``; predictions default to argmax of logits."""
    labels = np.asarray(labels)
    if predictions is None:
        if logits is None:
            raise ValueError("give predictions or logits")
        predictions = np.asarray(logits).argmax(axis=1)
    predictions = np.asarray(predictions)
    groups = np.full(len(labels), -1) if groups is None else np.asarray(groups)
    out: dict[str, float] = {"n": int(len(labels))}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn warns about classes absent from y_true; the metric is still defined
        for name in METRICS.names():
            out[name] = METRICS.get(name)(labels, predictions, logits, groups)
    return out


def logits_array(column: pl.Series) -> np.ndarray:
    """A stored logits column (Array or List of floats) as an (n, classes) float array."""
    if column.dtype == pl.Object or isinstance(column.dtype, pl.List):
        return np.stack([np.asarray(v, dtype=np.float32) for v in column.to_list()]) if column.len() else np.zeros((0, 0))
    return np.asarray(column.to_numpy(), dtype=np.float32)


def metrics_from_predictions(df: pl.DataFrame) -> dict[str, float]:
    """Metrics of a predictions table as written by ``ExperimentStore.write_predictions``."""
    logits = logits_array(df["logits"]) if "logits" in df.columns else None
    groups = df["group"].to_numpy() if "group" in df.columns else None
    predictions = df["prediction"].to_numpy() if "prediction" in df.columns else None
    return compute_metrics(df["label"].to_numpy(), predictions=predictions, logits=logits, groups=groups)


def _restrict(exp, split: str, df: pl.DataFrame, sub_split: str | None) -> pl.DataFrame | None:
    support = SUB_SPLITS[sub_split]
    if support is None:
        return df
    if not exp.subsplit_path(split).exists():
        return None
    members = exp.read_subsplit(split).filter(pl.col("support") == support).select("index")
    return df.join(members, on="index", how="semi")


def prediction_splits(exp, model: str) -> list[str]:
    """Splits with stored predictions for ``model`` (file stems under predictions/<model>/)."""
    folder = exp.predictions_path(model, "x").parent
    return sorted(p.stem for p in folder.glob("*.parquet")) if folder.exists() else []


def metrics_table(
    exp,
    models: Iterable[str] | None = None,
    splits: Iterable[str] | None = None,
    sub_split: str | None = None,
) -> pl.DataFrame:
    """One row per (registered model, split with predictions): model, group, split, sub_split, n, metrics.

    ``sub_split="in_support"`` / ``"out_of_support"`` keeps only the examples of a split whose
    ``exp.read_subsplit(split)`` row has support "in" / "out"; splits without a sub-split file are skipped.
    ``sub_split=None`` (or "all") uses every example.
    """
    if sub_split not in SUB_SPLITS:
        raise ValueError(f"sub_split must be one of None, 'all', 'in_support', 'out_of_support'; got {sub_split!r}")
    registered = exp.models()
    if models is not None:
        wanted = list(models)
        registered = registered.filter(pl.col("model").is_in(wanted))
    rows = []
    for model, group in registered.select("model", "group").iter_rows():
        for split in (list(splits) if splits is not None else prediction_splits(exp, model)):
            if not exp.has_predictions(model, split):
                continue
            df = _restrict(exp, split, exp.read_predictions(model, split), sub_split)
            if df is None:
                continue
            rows.append({"model": model, "group": group, "split": split, "sub_split": sub_split or "all",
                         **metrics_from_predictions(df)})
    schema = {"model": pl.String, "group": pl.String, "split": pl.String, "sub_split": pl.String, "n": pl.Int64,
              **{name: pl.Float64 for name in METRICS.names()}}
    return pl.DataFrame(rows, schema=schema)


__all__ = [
    "METRICS",
    "accuracy",
    "normalized_auroc",
    "balanced_accuracy",
    "compute_metrics",
    "logits_array",
    "macro_f1",
    "metrics_from_predictions",
    "metrics_table",
    "prediction_splits",
    "worst_group_accuracy",
]
