"""Evaluation metrics on hand-made numbers: per-slice F1, Mahalanobis scores, OOD thresholds."""

from __future__ import annotations

import numpy as np
import pytest

from worker.ml.evaluate import Mahalanobis, Outputs, choose_threshold, ood_rows, slice_scores


def test_slice_f1_counts_only_the_slices_own_labels_and_reports_support():
    truth, predicted = [0, 0, 1, 2, 2], [0, 1, 1, 2, 0]
    scores = slice_scores(truth, predicted, ["a", "a", "a", "b", "b"])
    assert scores["b"] == (pytest.approx(2 / 3), 0.5, 2)  # label 2: recall 1/2, precision 1 -> F1 2/3
    assert scores["a"][1:] == (pytest.approx(2 / 3), 3)


def test_msp_is_the_largest_softmax_probability():
    outputs = Outputs(np.array([[0.0, 0.0], [10.0, 0.0]]), np.zeros((2, 1)))
    assert outputs.msp() == pytest.approx([0.5, 1 / (1 + np.exp(-10))])


def test_mahalanobis_scores_points_far_from_every_class_mean_lowest():
    rng = np.random.default_rng(0)
    features = np.r_[rng.normal(0, 1, (50, 3)), rng.normal(8, 1, (50, 3))]
    scorer = Mahalanobis(features, [0] * 50 + [1] * 50)
    near, far = scorer.score(np.array([[0.0, 0, 0], [8, 8, 8]])), scorer.score(np.array([[30.0, -30, 4]]))
    assert near.min() > far.max()
    assert scorer.score(scorer.means) == pytest.approx([0.0, 0.0], abs=1e-6)  # a class mean is at distance 0


def test_perfectly_separated_scores_give_auroc_1_and_fpr95_0():
    val = (np.array([0.9, 0.8, 0.95]), np.array([True, True, False]), np.array([0.1, 0.2]))
    test = (np.array([0.9, 0.7, 0.85, 0.99]), np.array([True, True, True, False]), np.array([0.2, 0.3]))
    rows = {r.name: r.value for r in ood_rows("msp", val, test)}
    assert rows["ood.msp.auroc"] == 1.0 and rows["ood.msp.fpr95"] == 0.0
    assert rows["ood.msp.oos_recall"] == 1.0 and rows["ood.msp.in_scope_accuracy"] == 0.75


def test_the_threshold_balances_in_scope_accuracy_and_oos_recall_on_validation():
    in_scores, correct = np.array([0.6, 0.7, 0.9]), np.array([True, True, True])
    # Every cut in (0.3, 0.6] accepts all in-scope rows and rejects both OOS rows; the middle one wins.
    assert choose_threshold(in_scores, correct, np.array([0.2, 0.3])) == pytest.approx(0.45, abs=0.1)
    # A misclassified in-scope row is worth nothing accepted, so the cut may rise above it.
    assert choose_threshold(in_scores, np.array([False, True, True]), np.array([0.2, 0.65])) > 0.65


def test_without_oos_validation_rows_the_threshold_keeps_95_percent_of_in_scope():
    scores = np.linspace(0, 1, 101)
    assert choose_threshold(scores, np.ones(101, bool), np.array([])) == pytest.approx(0.05)
