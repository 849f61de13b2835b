"""robustness: evaluate a stored model under a suite of text perturbations and rank its weakest slices.

Per perturbation and slice it logs the accuracy drop against clean text and the invariance rate
(CheckList's INV test: the share of predictions a label-preserving edit leaves unchanged). A slice's
``weakness`` is its error rate averaged over clean text and every perturbation; ``weakness_rank`` 1
is the most error-prone slice, the one augment targets first. Mispredictions go to the failure
report; the ranking also goes to a ``report`` artifact that names the model job it judged.
"""

from __future__ import annotations

from specs.robustness import Params


from dataclasses import dataclass


def run(params: Params, ctx) -> None:
    import random

    from worker.ml.evaluate import infer, log_rows, ood_evaluation
    from worker.ml.lineage import load_model, model_source
    from worker.ml.textops import WordNetUnavailable

    source = model_source(ctx, params.model_job)
    model, tokenizer, _, dataset = load_model(source, ctx)
    test = dataset.test
    if params.max_rows and params.max_rows < len(test):
        test = test.pick(sorted(random.Random(params.seed).sample(range(len(test)), params.max_rows)))

    def predict(texts) -> list[int]:
        return infer(model, tokenizer, texts, max_length=params.max_length).predictions().tolist()

    clean = _Clean(test, dataset.labels, dataset.label_ids(test), predict(test.texts))
    errors = {group: [clean.error_rate(clean.predicted, group)] for group in clean.groups()}
    judged = []
    for name in params.perturbations:
        try:
            _judge(ctx, params, clean, name, predict, errors)
            judged.append(name)
        except WordNetUnavailable as missing:
            # A worker without WordNet (no wordnet-base, no internet) still judges every other perturbation.
            ctx.warn(f"perturbation {name} skipped: {missing}")
            ctx.log_metric(f"skipped.{name}", 1)
    ranking = _log_ranking(ctx, errors)
    # Out-of-scope detection on clean text: a robustness report describes the whole model.
    log_rows(ctx, ood_evaluation(model, tokenizer, dataset, max_length=params.max_length))
    _save_report(ctx, source.job_id, ranking, judged)


@dataclass(frozen=True)
class _Clean:
    """The test rows, their true label ids and the model's predictions on the unperturbed text."""

    test: object  # worker.ml.data.Examples
    labels: tuple[str, ...]
    truth: list[int]
    predicted: list[int]

    def groups(self) -> list[str]:
        return sorted(set(self.test.slices) - {None})

    def rows(self, group) -> list[int]:
        return [i for i, s in enumerate(self.test.slices) if group is None or s == group]

    def error_rate(self, predicted: list[int], group) -> float:
        rows = self.rows(group)
        return sum(self.truth[i] != predicted[i] for i in rows) / len(rows)

    def invariance(self, predicted: list[int], group) -> float:
        rows = self.rows(group)
        return sum(self.predicted[i] == predicted[i] for i in rows) / len(rows)


def _judge(ctx, params: Params, clean: _Clean, name: str, predict, errors: dict[str, list[float]]) -> None:
    """Perturb the test texts with ``name``; log drops, invariance and failures per slice."""
    from worker.context import FailureRow
    from worker.ml.textops import perturb

    texts = perturb(name, clean.test.texts, seed=params.seed)
    predicted = predict(texts)
    for group in [None, *errors]:
        error = clean.error_rate(predicted, group)
        ctx.log_metric(f"{name}.accuracy_drop", error - clean.error_rate(clean.predicted, group), slice=group)
        ctx.log_metric(f"{name}.invariance", clean.invariance(predicted, group), slice=group)
        if group is not None:
            errors[group].append(error)
    wrong = [i for i, (t, p) in enumerate(zip(clean.truth, predicted)) if t != p][: params.failures_per_perturbation]
    names = clean.labels
    ctx.log_failures(
        FailureRow(name, clean.test.slices[i], texts[i], names[clean.truth[i]], names[predicted[i]]) for i in wrong
    )


def _log_ranking(ctx, errors: dict[str, list[float]]) -> list[str]:
    """Log each slice's weakness and rank (1 = most error-prone); return slices worst first."""
    weakness = {group: sum(rates) / len(rates) for group, rates in errors.items()}
    ranking = sorted(weakness, key=lambda g: (-weakness[g], g))
    for rank, group in enumerate(ranking, start=1):
        ctx.log_metric("weakness", weakness[group], slice=group)
        ctx.log_metric("weakness_rank", rank, slice=group)
    return ranking


def _save_report(ctx, model_job: str, ranking: list[str], perturbations) -> None:
    import json

    path = ctx.work_dir / "robustness_report.json"
    path.write_text(json.dumps({"model_job": model_job, "ranking": ranking, "perturbations": list(perturbations)}))
    ctx.save_artifact("report", path)
