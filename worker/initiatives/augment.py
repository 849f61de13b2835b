"""augment: augment the model's weakest slices, retrain, and measure the gain against a fair control.

The k weakest slices come from the latest robustness report on the same model (``weakness_rank``),
else from the model's own evaluation (lowest ``slice_f1``); they are never picked by hand. Training
texts of those slices get nlpaug variants; near-duplicates of anything already in the training set
are dropped. Two arms continue training from the stored model for the same number of steps and
batch size: ``control`` on the original data, ``augmented`` on original plus variants, so the
difference between them is the augmentation and not the extra compute. ``improvement`` is the
augmented arm's targeted-slice macro-F1 minus the control's, in points.
"""

from __future__ import annotations

from specs.augment import Params






def run(params: Params, ctx) -> None:
    from worker.ml.lineage import MODEL_ARTIFACT, load_model, model_source, save_model
    from worker.ml.modeling import load_saved

    source = model_source(ctx, params.model_job)
    targets = weakest_slices(ctx, source, params.k)
    model, tokenizer, spec, dataset = load_model(source, ctx)
    extra = generate(ctx, params, dataset.train, targets, tokenizer)
    ctx.log_metric("aug.kept", len(extra))
    arms = {"baseline": None, "control": dataset.train, "augmented": dataset.train.plus(extra)}
    targeted = {}
    for arm, train_set in arms.items():
        if train_set is not None:
            # Each arm starts from the stored model afresh; only its training data differs.
            model, tokenizer, _ = load_saved(ctx.fetch_artifact(source, MODEL_ARTIFACT))
            _train(model, tokenizer, dataset, train_set, params, ctx, arm)
        targeted[arm] = _evaluate_arm(ctx, model, tokenizer, dataset, targets, arm, params.max_length)
    ctx.save_artifact("model", save_model(model, tokenizer, dataset.labels, spec, ctx.work_dir / "model"))
    ctx.log_metric("improvement", 100 * (targeted["augmented"] - targeted["control"]))


def weakest_slices(ctx, source, k: int) -> list[str]:
    """The k most error-prone slices of ``source``'s model, from robustness, else from its evaluation."""
    from core.errors import PermanentError
    from worker.ml.lineage import report_for

    report = report_for(ctx, "robustness", source.job_id)
    ranks = report.by_slice("weakness_rank") if report else {}
    if ranks:
        chosen, basis = sorted(ranks, key=lambda s: (ranks[s], s))[:k], "robustness"
    else:
        f1 = source.by_slice("slice_f1")
        if not f1:
            raise PermanentError(f"job {source.job_id}: no robustness report and no per-slice evaluation to rank slices by")
        chosen, basis = sorted(f1, key=lambda s: (f1[s], s))[:k], "evaluation"
    for rank, group in enumerate(chosen, start=1):
        ctx.log_metric("targeted_rank", rank, slice=group)
    ctx.log_metric("targets_from_robustness", 1.0 if basis == "robustness" else 0.0)
    return chosen


def generate(ctx, params: Params, train, targets: list[str], tokenizer):
    """Variants of the targeted slices' training texts, deduplicated; stats logged per slice and augmenter.

    A variant is a duplicate when the model would see the same word pieces as for a text already in
    the training set: for an uncased model, a recased copy teaches nothing.
    """
    from worker.ml.data import Examples
    from worker.ml.textops import augment

    augmenters = params.augmenters + (("contextual",) if params.mlm_path and "contextual" not in params.augmenters else ())
    seen = {_pieces(tokenizer, t) for t in train.texts}
    rows: list[tuple[str, str, str]] = []
    for group in targets:
        part = train.where_slice({group})
        for name in augmenters:
            variants = augment(name, part.texts, n=params.variants, seed=params.seed, mlm_path=params.mlm_path or None)
            candidates = [(text, label) for label, options in zip(part.labels, variants) for text in options]
            kept = _dedupe(candidates, seen, tokenizer)
            rows += [(text, label, group) for text, label in kept]
            ctx.log_metric(f"aug.{name}.generated", len(candidates), slice=group)
            ctx.log_metric(f"aug.{name}.duplicates", len(candidates) - len(kept), slice=group)
            ctx.log_metric(f"aug.{name}.kept", len(kept), slice=group)
    return Examples(*(tuple(column) for column in zip(*rows))) if rows else Examples((), (), ())


def _pieces(tokenizer, text: str) -> tuple[int, ...]:
    return tuple(tokenizer(text, truncation=True, max_length=512)["input_ids"])


def _dedupe(candidates: list[tuple[str, str]], seen: set, tokenizer) -> list[tuple[str, str]]:
    kept = []
    for text, label in candidates:
        key = _pieces(tokenizer, text)
        if key not in seen:
            seen.add(key)
            kept.append((text, label))
    return kept


def _train(model, tokenizer, dataset, train_set, params: Params, ctx, arm: str) -> None:
    from worker.ml.train import config_from, train

    train(model, tokenizer, train_set.texts, dataset.label_ids(train_set), config_from(params), ctx, run=arm)


def _evaluate_arm(ctx, model, tokenizer, dataset, targets: list[str], arm: str, max_length: int) -> float:
    """Log the arm's test metrics under ``<arm>.``; return its targeted-slice macro-F1."""
    from worker.ml.evaluate import classification_rows, infer, log_rows, slice_scores

    predicted = infer(model, tokenizer, dataset.test.texts, max_length=max_length).predictions().tolist()
    log_rows(ctx, classification_rows(dataset, dataset.test, predicted), prefix=f"{arm}.")
    groups = ["targeted" if s in targets else None for s in dataset.test.slices]
    f1 = slice_scores(dataset.label_ids(dataset.test), predicted, groups)["targeted"][0]
    ctx.log_metric(f"{arm}.targeted_f1", f1)
    return f1
