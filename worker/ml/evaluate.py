"""Evaluation: accuracy, macro-F1, per-slice F1, out-of-scope detection and cost of inference.

A report is a list of ``MetricRow`` (name, value, slice), exactly what lands in the results DB, so
a later job reads it back with ``PriorResult.metric`` / ``by_slice`` under the same names.
Out-of-scope detection scores each text by how in-scope it looks, two ways: the maximum softmax
probability (MSP) and the negative Mahalanobis distance of its pooled features to the nearest class
mean under one covariance shared by all classes, both fitted on training features.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch

from worker.context import MetricRow
from worker.ml.data import Dataset, Examples
from worker.ml.modeling import autocast, encode, pick_device, size_on_disk


@dataclass(frozen=True)
class Outputs:
    logits: Any  # numpy (n, classes)
    features: Any  # numpy (n, hidden): the [CLS] vector of the last layer

    def predictions(self) -> Any:
        return self.logits.argmax(axis=1)

    def msp(self) -> Any:
        """Maximum softmax probability per row."""
        import numpy as np

        shifted = self.logits - self.logits.max(axis=1, keepdims=True)
        probs = np.exp(shifted) / np.exp(shifted).sum(axis=1, keepdims=True)
        return probs.max(axis=1)


def infer(model: Any, tokenizer: Any, texts: Sequence[str], *, batch_size: Optional[int] = None, max_length: int = 64) -> Outputs:
    """Logits and pooled features for ``texts``, in order.

    On CUDA, batches of 256 (default) under the training loop's autocast: a validation pass is time
    the GPU does not train. On the CPU, batches of 64 in fp32.
    """
    import numpy as np
    device = pick_device()
    batch_size = batch_size or (256 if device == "cuda" else 64)
    model.to(device).eval()
    logits, features = [], []
    with torch.inference_mode(), autocast(device):
        for start in range(0, len(texts), batch_size):
            batch = encode(tokenizer, texts[start : start + batch_size], max_length=max_length, device=device)
            out = model(**batch, output_hidden_states=True)
            logits.append(out.logits.float().cpu())
            features.append(out.hidden_states[-1][:, 0].float().cpu())
    if not logits:
        return Outputs(np.zeros((0, model.config.num_labels)), np.zeros((0, model.config.hidden_size)))
    return Outputs(torch.cat(logits).numpy(), torch.cat(features).numpy())


def classification_rows(dataset: Dataset, examples: Examples, predicted: Sequence[int], prefix: str = "") -> list[MetricRow]:
    """Accuracy and macro-F1 overall; F1, accuracy and support per slice; F1 per class (slice = label).

    Every F1 is computed over all of ``examples``: a prediction of one of a slice's labels on a row
    outside the slice is a false positive of that slice (see ``slice_scores``).
    """
    import numpy as np

    truth, predicted = np.asarray(dataset.label_ids(examples)), np.asarray(predicted)
    rows = [
        MetricRow(f"{prefix}accuracy", accuracy(truth, predicted)),
        MetricRow(f"{prefix}macro_f1", macro_f1(truth, predicted)),
    ]
    for name, (f1, recall, support) in slice_scores(truth, predicted, examples.slices).items():
        rows += [
            MetricRow(f"{prefix}slice_f1", f1, name),
            MetricRow(f"{prefix}slice_accuracy", recall, name),
            MetricRow(f"{prefix}slice_support", float(support), name),
        ]
    present = np.unique(truth)
    for label, f1 in zip(present, f1_per_label(truth, predicted, present)):
        rows.append(MetricRow(f"{prefix}class_f1", float(f1), dataset.labels[label]))
    return rows


def accuracy(truth: Sequence[int], predicted: Sequence[int]) -> float:
    import numpy as np

    return float(np.mean(np.asarray(truth) == np.asarray(predicted))) if len(truth) else 0.0


def f1_per_label(truth: Sequence[int], predicted: Sequence[int], labels: Sequence[int]) -> Any:
    """F1 of each of ``labels`` over all rows (0 where a label has neither rows nor predictions).

    F1 = 2 TP / (rows of the label + predictions of the label), counted with ``bincount``: the
    paired bootstrap calls this thousands of times, where sklearn's validation would dominate.
    """
    import numpy as np

    truth, predicted, labels = np.asarray(truth, dtype=int), np.asarray(predicted, dtype=int), np.asarray(labels, dtype=int)
    size = 1 + max(truth.max(initial=0), predicted.max(initial=0), labels.max(initial=0))
    hits = np.bincount(truth[truth == predicted], minlength=size)
    both = np.bincount(truth, minlength=size) + np.bincount(predicted, minlength=size)
    return np.where(both > 0, 2 * hits / np.maximum(both, 1), 0.0)[labels]


def macro_f1(truth: Sequence[int], predicted: Sequence[int], labels: Optional[Sequence[int]] = None) -> float:
    """Mean F1 over ``labels`` (default: every label in ``truth`` or ``predicted``, as sklearn's)."""
    import numpy as np

    if labels is None:
        labels = np.union1d(np.asarray(truth, dtype=int), np.asarray(predicted, dtype=int))
    return float(np.mean(f1_per_label(truth, predicted, labels))) if len(labels) else 0.0


def slice_labels(truth: Sequence[int], slices: Sequence[Optional[str]]) -> dict[str, list[int]]:
    """The labels that belong to each slice: those of its rows."""
    found: dict[str, set[int]] = {}
    for label, name in zip(truth, slices):
        if name is not None:
            found.setdefault(name, set()).add(int(label))
    return {name: sorted(labels) for name, labels in sorted(found.items())}


def slice_scores(truth: Sequence[int], predicted: Sequence[int], slices: Sequence[Optional[str]]) -> dict[str, tuple[float, float, int]]:
    """Per slice S: (F1, accuracy, support). F1 is the macro-F1 over S's labels computed on ALL rows,
    so a row outside S predicted as one of S's labels counts against S (precision); accuracy is the
    share of S's own rows predicted right (recall on S); support is S's row count."""
    import numpy as np

    truth, predicted, slices = np.asarray(truth), np.asarray(predicted), list(slices)
    scores = {}
    for name, labels in slice_labels(truth, slices).items():
        rows = np.array([s == name for s in slices])
        scores[name] = (macro_f1(truth, predicted, labels), accuracy(truth[rows], predicted[rows]), int(rows.sum()))
    return scores


def slice_f1_rows_only(truth: Sequence[int], predicted: Sequence[int], in_slice: Sequence[bool]) -> float:
    """The old, biased slice F1: macro-F1 over the slice's labels counted on the slice's rows only.

    Predictions of the slice's labels on other rows never count, so when a slice is one class this
    is its recall. Kept only to show in reports how far it overstated a targeted gain.
    """
    import numpy as np

    rows = np.asarray(in_slice, dtype=bool)
    t, p = np.asarray(truth)[rows], np.asarray(predicted)[rows]
    return macro_f1(t, p, np.unique(t))


def paired_bootstrap(metric: Callable[[Any, Any], float], truth: Sequence[int], pred_a: Sequence[int],
                     pred_b: Sequence[int], *, rounds: int = 1000, seed: int = 0) -> tuple[float, float]:
    """95% interval of ``metric(truth, pred_b) - metric(truth, pred_a)`` (b minus a) over test sets
    resampled with replacement: the same resampled rows score both, so what the two predictions
    share (hard rows, easy rows) cancels out of the difference."""
    import numpy as np

    truth, pred_a, pred_b = np.asarray(truth), np.asarray(pred_a), np.asarray(pred_b)
    rng = np.random.default_rng(seed)
    diffs = []
    for _ in range(rounds):
        rows = rng.integers(0, len(truth), len(truth))
        diffs.append(metric(truth[rows], pred_b[rows]) - metric(truth[rows], pred_a[rows]))
    low, high = np.percentile(diffs, [2.5, 97.5])
    return float(low), float(high)


def comparison_rows(truth: Sequence[int], control: Sequence[int], treatment: Sequence[int], *,
                    metric: Optional[Callable[[Any, Any], float]] = None, improvement: Optional[float] = None,
                    gain_above: float = 0.0, seed: int = 0, rounds: int = 1000) -> list[MetricRow]:
    """The rows every initiative with an ``improvement`` logs, treatment against control on one test set.

    ``improvement``: ``metric``'s difference in points (treatment minus control) with its 95% paired
    bootstrap interval as ``improvement.ci_low`` / ``improvement.ci_high``; or, for a unit that is
    not a test-set metric (distill's speed ratio), the value given, with no interval.
    ``overall.accuracy_delta`` and ``overall.macro_f1_delta``: treatment minus control on the whole
    test set, in points. ``tradeoff``: 1.0 when the improvement is a gain (above ``gain_above``: 0 for
    points, 1 for a ratio) but either overall delta is negative, a targeted gain bought with losses
    elsewhere; else 0.0.
    """
    rows = []
    if improvement is None:
        improvement = 100 * (metric(truth, treatment) - metric(truth, control))
        low, high = paired_bootstrap(metric, truth, control, treatment, rounds=rounds, seed=seed)
        rows += [MetricRow("improvement.ci_low", 100 * low), MetricRow("improvement.ci_high", 100 * high)]
    deltas = {name: 100 * (score(truth, treatment) - score(truth, control))
              for name, score in (("accuracy", accuracy), ("macro_f1", macro_f1))}
    tradeoff = improvement > gain_above and min(deltas.values()) < 0
    return [MetricRow("improvement", improvement), *rows,
            *(MetricRow(f"overall.{name}_delta", value) for name, value in deltas.items()),
            MetricRow("tradeoff", 1.0 if tradeoff else 0.0)]


class Mahalanobis:
    """Class means and one shared covariance, fitted on training features (Lee et al., 2018)."""

    def __init__(self, features: Any, label_ids: Sequence[int]) -> None:
        import numpy as np

        labels = np.asarray(label_ids)
        self.classes = np.unique(labels)
        self.means = np.stack([features[labels == c].mean(axis=0) for c in self.classes])
        centered = features - self.means[np.searchsorted(self.classes, labels)]
        covariance = centered.T @ centered / max(1, len(features) - 1)
        # A little ridge: with fewer rows per class than dimensions the covariance is singular.
        ridge = 1e-6 * np.trace(covariance) / len(covariance) + 1e-9
        self.precision = np.linalg.pinv(covariance + ridge * np.eye(len(covariance)))

    def score(self, features: Any) -> Any:
        """Negative distance to the nearest class mean: higher means more in-scope."""
        # (x-m)'P(x-m) = x'Px - 2x'Pm + m'Pm, expanded so n x classes x hidden is never materialized.
        projected = features @ self.precision
        distances = (
            (projected * features).sum(axis=1)[:, None]
            - 2 * projected @ self.means.T
            + ((self.means @ self.precision) * self.means).sum(axis=1)[None, :]
        )
        return -distances.min(axis=1)


def ood_rows(method: str, val: tuple[Any, Any, Any], test: tuple[Any, Any, Any]) -> list[MetricRow]:
    """AUROC, FPR@95, and in-scope accuracy / OOS recall at a threshold chosen on validation.

    ``val`` and ``test`` are (in-scope scores, in-scope correct flags, out-of-scope scores).
    """
    import numpy as np
    from sklearn.metrics import roc_auc_score

    in_scores, correct, oos_scores = (np.asarray(a) for a in test)
    threshold = choose_threshold(*val)
    truth = np.r_[np.ones(len(in_scores)), np.zeros(len(oos_scores))]
    keep95 = np.percentile(in_scores, 5)  # accepts 95% of in-scope rows
    values = {
        "auroc": roc_auc_score(truth, np.r_[in_scores, oos_scores]),
        "fpr95": float(np.mean(oos_scores >= keep95)),
        "threshold": threshold,
        "in_scope_accuracy": float(np.mean(correct & (in_scores >= threshold))),
        "oos_recall": float(np.mean(oos_scores < threshold)),
    }
    rows = [MetricRow(f"ood.{method}.{name}", float(value)) for name, value in values.items()]
    return rows + roc_rows(method, truth, np.r_[in_scores, oos_scores])


def roc_rows(method: str, truth: Any, scores: Any, points: int = 21) -> list[MetricRow]:
    """The test ROC at ``points`` evenly spaced false positive rates, point i as step i (for the report's plot).

    At each rate the true positive rate is the best any threshold reaches without passing that rate.
    """
    import numpy as np
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(truth, scores)
    grid = np.linspace(0.0, 1.0, points)
    best = [float(tpr[fpr <= x].max()) for x in grid]  # fpr starts at 0: never empty
    return ([MetricRow(f"ood.{method}.roc_fpr", float(x), step=i) for i, x in enumerate(grid)]
            + [MetricRow(f"ood.{method}.roc_tpr", y, step=i) for i, y in enumerate(best)])


def choose_threshold(in_scores: Any, correct: Any, oos_scores: Any) -> float:
    """The score cut that maximizes in-scope accuracy plus OOS recall on validation.

    Without out-of-scope validation rows, keep 95% of in-scope rows instead.
    """
    import numpy as np

    in_scores, correct, oos_scores = np.asarray(in_scores), np.asarray(correct), np.asarray(oos_scores)
    if len(oos_scores) == 0:
        return float(np.percentile(in_scores, 5))
    candidates = np.unique(np.quantile(np.r_[in_scores, oos_scores], np.linspace(0, 1, 201)))
    accepted = in_scores[None, :] >= candidates[:, None]
    balanced = (accepted & correct[None, :]).mean(axis=1) + (oos_scores[None, :] < candidates[:, None]).mean(axis=1)
    # Of the equally good cuts take the middle one: the widest margin on both sides.
    best = np.flatnonzero(balanced == balanced.max())
    return float(candidates[best[len(best) // 2]])


def efficiency_rows(model: Any, tokenizer: Any, texts: Sequence[str], folder: Optional[Path], *, samples: int = 50, batches: int = 5) -> list[MetricRow]:
    """Latency p50 at batch 1, throughput at batch 64, parameter count and size on disk."""
    def timed(batch: Sequence[str]) -> float:
        start = time.perf_counter()
        infer(model, tokenizer, batch, batch_size=len(batch))
        if torch.cuda.is_available():
            torch.cuda.synchronize()  # kernels run asynchronously: wait before reading the clock
        return time.perf_counter() - start

    pool = list(texts) * (1 + (64 * batches) // max(1, len(texts)))
    for text in pool[:3]:
        timed([text])  # warm-up: first calls pay for allocation and kernel selection
    latency = statistics.median(timed([t]) for t in pool[:samples])
    seconds = sum(timed(pool[i * 64 : (i + 1) * 64]) for i in range(batches))
    rows = [
        MetricRow("latency_p50_ms", latency * 1000),
        MetricRow("throughput_per_s", 64 * batches / seconds),
        MetricRow("param_count", float(sum(p.numel() for p in model.parameters()))),
    ]
    return rows + ([MetricRow("size_bytes", float(size_on_disk(folder)))] if folder else [])


def evaluate(model: Any, tokenizer: Any, dataset: Dataset, *, folder: Optional[Path] = None, max_length: int = 64,
             latency_samples: int = 50, fit_per_label: int = 25, test: Optional[Outputs] = None) -> list[MetricRow]:
    """The full evaluation of a classifier on ``dataset``'s test split, as metric rows.

    ``test``: the model's outputs on the test split when the caller already has them (one pass, not two).
    """
    test = test if test is not None else infer(model, tokenizer, dataset.test.texts, max_length=max_length)
    rows = classification_rows(dataset, dataset.test, test.predictions())
    rows += ood_evaluation(model, tokenizer, dataset, test=test, max_length=max_length, fit_per_label=fit_per_label)
    return rows + efficiency_rows(model, tokenizer, dataset.test.texts, folder, samples=latency_samples)


def ood_evaluation(model: Any, tokenizer: Any, dataset: Dataset, *, test: Optional[Outputs] = None,
                   max_length: int = 64, fit_per_label: int = 25) -> list[MetricRow]:
    """MSP and Mahalanobis OOD rows; none when the dataset has no out-of-scope test rows.

    Mahalanobis is fitted on at most ``fit_per_label`` training rows per label: class means and one
    shared covariance settle with a few thousand rows, and inference on all of train would cost
    more than the rest of the evaluation.
    """
    if len(dataset.oos_test) == 0:
        return []
    fit = dataset.train.per_label(fit_per_label)
    outputs = {name: infer(model, tokenizer, getattr(dataset, name).texts, max_length=max_length)
               for name in ("val", "oos_val", "oos_test")}
    outputs["fit"] = infer(model, tokenizer, fit.texts, max_length=max_length)
    outputs["test"] = test if test is not None else infer(model, tokenizer, dataset.test.texts, max_length=max_length)
    return ood_suite(dataset, outputs, dataset.label_ids(fit))


def ood_suite(dataset: Dataset, outputs: dict[str, Outputs], fit_label_ids: Sequence[int]) -> list[MetricRow]:
    """OOD rows from model outputs on the fit rows ("fit"), val, test and the out-of-scope splits."""
    import numpy as np

    maha = Mahalanobis(outputs["fit"].features, fit_label_ids)
    scorers = {"msp": Outputs.msp, "mahalanobis": lambda o: maha.score(o.features)}
    rows = []
    for method, scorer in scorers.items():
        sides = []
        for in_name, oos_name in (("val", "oos_val"), ("test", "oos_test")):
            correct = outputs[in_name].predictions() == np.asarray(dataset.label_ids(getattr(dataset, in_name)))
            sides.append((scorer(outputs[in_name]), correct, scorer(outputs[oos_name])))
        rows += ood_rows(method, *sides)
    return rows


def log_rows(ctx: Any, rows: Sequence[MetricRow], prefix: str = "") -> None:
    """Send every row to the job's metrics, names prefixed (``control.``, ``augmented.``)."""
    for row in rows:
        ctx.log_metric(prefix + row.name, row.value, slice=row.slice, step=row.step)
