"""Evaluation metrics on hand-made numbers: per-slice F1 over the whole test set, the paired
bootstrap, the improvement rows, Mahalanobis scores, OOD thresholds."""

from __future__ import annotations

import numpy as np
import pytest

from worker.ml.evaluate import (
    Mahalanobis,
    Outputs,
    accuracy,
    choose_threshold,
    comparison_rows,
    f1_per_label,
    macro_f1,
    ood_rows,
    paired_bootstrap,
    slice_f1_rows_only,
    slice_scores,
)


def test_slice_f1_counts_only_the_slices_own_labels_and_reports_support():
    truth, predicted = [0, 0, 1, 2, 2], [0, 1, 1, 2, 0]
    scores = slice_scores(truth, predicted, ["a", "a", "a", "b", "b"])
    assert scores["b"] == (pytest.approx(2 / 3), 0.5, 2)  # label 2: recall 1/2, precision 1 -> F1 2/3
    assert scores["a"][1:] == (pytest.approx(2 / 3), 3)


def test_a_slice_pays_for_its_labels_predicted_on_rows_outside_it():
    # Row 4 belongs to slice b but is predicted as label 0, one of slice a's labels: a false positive of a.
    truth, predicted = [0, 0, 1, 2, 2], [0, 1, 1, 2, 0]
    scores = slice_scores(truth, predicted, ["a", "a", "a", "b", "b"])
    label0, label1 = 2 * 1 / (2 + 2), 2 * 1 / (1 + 2)  # F1 = 2 TP / (rows + predictions)
    assert scores["a"][0] == pytest.approx((label0 + label1) / 2)
    assert slice_f1_rows_only(truth, predicted, [True, True, True, False, False]) == pytest.approx(2 / 3)  # blind to row 4


def test_the_fast_f1_agrees_with_sklearn():
    from sklearn.metrics import f1_score

    rng = np.random.default_rng(0)
    truth, predicted = rng.integers(0, 12, 500), rng.integers(0, 14, 500)
    assert macro_f1(truth, predicted) == pytest.approx(f1_score(truth, predicted, average="macro", zero_division=0))
    labels = [0, 3, 5, 20]  # 20 has no rows and no predictions: F1 0, as sklearn's zero_division=0
    assert macro_f1(truth, predicted, labels) == pytest.approx(
        f1_score(truth, predicted, labels=labels, average="macro", zero_division=0))
    assert f1_per_label(truth, predicted, [3]) == pytest.approx(f1_score(truth, predicted, labels=[3], average=None))


def dumping_case():
    """Ten classes of 100 test rows; class 0 is the targeted slice.

    Control: class 0 recalls 20 of its rows (the rest go to class 1), every other class 90 of 100.
    Treatment: class 0 recalls all 100, but 100 correctly predicted rows of other classes are now
    dumped into class 0: targeted recall rises while overall accuracy falls.
    """
    truth = np.repeat(np.arange(10), 100)
    control = truth.copy()
    control[20:100] = 1
    for c in range(1, 10):
        control[c * 100 + 90 : c * 100 + 100] = (c + 1) % 10 or 1  # each other class loses 10 rows elsewhere
    treatment = control.copy()
    treatment[0:100] = 0
    dumped = np.concatenate([np.arange(c * 100, c * 100 + 12) for c in range(1, 10)])[:100]
    treatment[dumped] = 0
    return truth, control, treatment


def test_a_targeted_gain_bought_by_dumping_other_rows_into_the_target_shows_as_a_tradeoff():
    truth, control, treatment = dumping_case()
    slices = np.where(truth == 0, "target", "rest")

    def targeted(t, p):  # macro-F1 over the targeted slice's labels
        return macro_f1(t, p, [0])

    # Recall on the targeted rows goes from 0.2 to 1.0...
    assert slice_scores(truth, control, slices)["target"][1] == pytest.approx(0.2)
    assert slice_scores(truth, treatment, slices)["target"][1] == 1.0
    # ...but the slice F1 counts the 100 dumped rows as false positives: 2*100 / (100 + 200).
    assert slice_scores(truth, treatment, slices)["target"][0] == pytest.approx(2 / 3)
    rows = {r.name: r.value for r in comparison_rows(truth, control, treatment, metric=targeted, seed=1)}
    assert rows["improvement"] == pytest.approx(100 * (2 / 3 - 2 * 20 / 120))
    assert rows["improvement.ci_low"] < rows["improvement"] < rows["improvement.ci_high"]
    assert rows["overall.accuracy_delta"] == pytest.approx(100 * (accuracy(truth, treatment) - accuracy(truth, control)))
    assert rows["overall.accuracy_delta"] == pytest.approx(-2.0)  # +80 target rows right, 100 other rows wrong
    # Macro-F1 barely moves (class 1 stops absorbing class 0's rows); one negative overall delta is enough.
    assert abs(rows["overall.macro_f1_delta"]) < 1
    assert rows["tradeoff"] == 1.0


def test_the_old_rows_only_slice_f1_would_have_inflated_the_dumping_gain():
    truth, control, treatment = dumping_case()
    target_rows = truth == 0
    old_gain = 100 * (slice_f1_rows_only(truth, treatment, target_rows) - slice_f1_rows_only(truth, control, target_rows))
    honest_gain = 100 * (macro_f1(truth, treatment, [0]) - macro_f1(truth, control, [0]))
    assert old_gain == pytest.approx(100 * (1.0 - 1 / 3))  # recall alone: F1 of 1.0 on its own rows
    assert old_gain > honest_gain + 30


def test_a_gain_with_no_loss_elsewhere_is_not_a_tradeoff_and_a_ratio_gain_needs_more_than_one():
    truth = np.repeat(np.arange(4), 50)
    control, treatment = truth.copy(), truth.copy()
    control[:25] = 1
    rows = {r.name: r.value for r in comparison_rows(truth, control, treatment, metric=accuracy)}
    assert rows["improvement"] == pytest.approx(12.5) and rows["tradeoff"] == 0.0
    slower = {r.name: r.value for r in comparison_rows(truth, treatment, control, improvement=0.8, gain_above=1.0)}
    assert slower["tradeoff"] == 0.0 and "improvement.ci_low" not in slower  # slower and worse: no gain at all
    faster = {r.name: r.value for r in comparison_rows(truth, treatment, control, improvement=2.5, gain_above=1.0)}
    assert faster["tradeoff"] == 1.0 and faster["overall.accuracy_delta"] == pytest.approx(-12.5)


def test_the_paired_bootstrap_is_seeded_brackets_a_real_gain_and_is_zero_for_identical_predictions():
    rng = np.random.default_rng(3)
    truth = rng.integers(0, 5, 2000)
    a = np.where(rng.random(2000) < 0.7, truth, (truth + 1) % 5)  # about 70% right
    b = np.where(rng.random(2000) < 0.2, truth, a)  # b fixes about a fifth of a's mistakes
    low, high = paired_bootstrap(accuracy, truth, a, b, rounds=500, seed=7)
    assert 0 < low < accuracy(truth, b) - accuracy(truth, a) < high
    assert (low, high) == paired_bootstrap(accuracy, truth, a, b, rounds=500, seed=7)
    assert paired_bootstrap(accuracy, truth, a, a, rounds=50) == (0.0, 0.0)
    # Pairing matters: the same gain on independent noise would need a far wider interval.
    wide = np.percentile([accuracy(truth, b[rng.integers(0, 2000, 2000)]) for _ in range(200)], [2.5, 97.5])
    assert high - low < wide[1] - wide[0]


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
