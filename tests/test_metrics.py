"""Metrics from labels and logits, from stored predictions, and metrics tables with in/out-of-support parts."""
from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from sklearn.metrics import balanced_accuracy_score, f1_score, roc_auc_score

from askshift.lib.robustness.metrics import (
    METRICS,
    accuracy,
    balanced_accuracy,
    compute_metrics,
    macro_f1,
    metrics_from_predictions,
    metrics_table,
    normalized_auroc,
    worst_group_accuracy,
)
from askshift.lib.store import ExperimentStore


def test_hand_computed_values_on_a_tiny_example():
    labels = np.array([0, 0, 0, 1, 1, 2])
    preds = np.array([0, 0, 1, 1, 0, 2])
    groups = np.array([0, 0, 1, 1, 1, -1])
    assert accuracy(labels, preds) == pytest.approx(4 / 6)
    assert balanced_accuracy(labels, preds) == pytest.approx((2 / 3 + 1 / 2 + 1) / 3)
    # group 0: 2/2 right, group 1: 1/3 right, -1 is "no group" and ignored
    assert worst_group_accuracy(labels, preds, groups) == pytest.approx(1 / 3)
    assert np.isnan(worst_group_accuracy(labels, preds, np.full(6, -1)))
    # per-class F1: class 0 P=2/3 R=2/3, class 1 P=1/2 R=1/2, class 2 P=R=1
    assert macro_f1(labels, preds) == pytest.approx((2 / 3 + 1 / 2 + 1) / 3)


def test_metrics_agree_with_scikit_learn_on_random_predictions():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, 300)
    logits = rng.normal(size=(300, 5))
    logits[np.arange(300), labels] += 1.0
    preds = logits.argmax(1)
    assert balanced_accuracy(labels, preds) == pytest.approx(balanced_accuracy_score(labels, preds))
    assert macro_f1(labels, preds) == pytest.approx(f1_score(labels, preds, average="macro"))
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    assert normalized_auroc(labels, logits) == pytest.approx(2 * roc_auc_score(labels, probs, multi_class="ovr") - 1)


def test_auroc_is_reported_as_two_auc_minus_one():
    labels = np.array([0, 0, 1, 1])
    perfect = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    assert normalized_auroc(labels, perfect) == pytest.approx(1.0)
    assert normalized_auroc(labels, perfect[:, ::-1]) == pytest.approx(-1.0)
    assert normalized_auroc(labels, np.zeros((4, 2))) == pytest.approx(0.0)  # ties: AUC 0.5 = chance
    assert np.isnan(normalized_auroc(np.zeros(4, int), perfect))  # one class: undefined


def test_metrics_from_stored_predictions_match_metrics_from_arrays(tmp_path):
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 3, 50)
    logits = rng.normal(size=(50, 3)).astype(np.float32)
    groups = rng.integers(-1, 3, 50)
    exp = ExperimentStore(tmp_path / "exp")
    exp.write_predictions("m", "source_val", logits, labels, groups=groups)
    stored = metrics_from_predictions(exp.read_predictions("m", "source_val"))
    direct = compute_metrics(labels, logits=logits, groups=groups)
    assert stored == pytest.approx(direct, nan_ok=True)
    assert stored["n"] == 50 and set(METRICS.names()) <= set(stored)


def test_metrics_table_covers_registered_models_and_filters_sub_splits(tmp_path):
    exp = ExperimentStore(tmp_path / "exp")
    labels = np.arange(40) % 2
    right = np.eye(2, dtype=np.float32)[labels]
    for model, group in (("a", "baseline"), ("b", "ft")):
        exp.register_model(model, group)
        exp.write_predictions(model, "source_val", right, labels)
        # wrong on the first half of the examples only
        shifted = right.copy()
        shifted[:20] = shifted[:20, ::-1]
        exp.write_predictions(model, "tint_val", shifted, labels)
    exp.write_predictions("unregistered", "source_val", right, labels)
    exp.write_subsplit("tint_val", pl.DataFrame({"index": np.arange(40), "support": ["out"] * 20 + ["in"] * 20}))

    whole = metrics_table(exp)
    assert whole.height == 4 and set(whole["model"]) == {"a", "b"}
    assert whole.filter(pl.col("split") == "tint_val")["accuracy"].to_list() == [0.5, 0.5]
    inside = metrics_table(exp, sub_split="in_support")
    assert inside["split"].to_list() == ["tint_val", "tint_val"]  # source_val has no sub-split file: skipped
    assert inside["accuracy"].to_list() == [1.0, 1.0] and inside["n"].to_list() == [20, 20]
    outside = metrics_table(exp, models=["b"], sub_split="out_of_support")
    assert outside.rows(named=True)[0]["accuracy"] == 0.0 and outside["sub_split"].to_list() == ["out_of_support"]
    with pytest.raises(ValueError, match="sub_split"):
        metrics_table(exp, sub_split="inside")
