"""augment: augment the model's weakest slices, retrain, and measure the gain against a fair control.

The k weakest slices come from the latest robustness report on the same model (``weakness_rank``),
else from the model's own scores on the validation split (lowest slice F1; the test split is never
used to choose); they are never picked by hand. Training texts of those slices get nlpaug variants
from every listed augmenter; near-duplicates of anything already in the training set are dropped.
With ``choose: n`` only the n augmenters that did best in short trials are kept: each augmenter's
variants, and a control without any, continue the stored model for ``trial_steps`` steps, and each
trial is scored by the targeted slices' macro-F1 on the VALIDATION split (``choice.<name>.val_gain``,
trial minus control, in points). The test split plays no part in any choice. Two arms continue training
from the stored model: ``control`` on the original data, ``augmented`` on original plus variants.
Both share one step cap (``epochs`` over the augmented data, or ``steps`` exactly), one validation
cadence and one stopping rule, so the difference between them is the augmentation and not the
compute; ``<arm>.steps`` says what each used. Each arm's final model is scored once on test. The
augmented arm (and each choice trial) draws each label only as often as the original data holds it
(``balance: true``, the default): a targeted slice's variants share its originals' draws rather than
add to them, so the class prior the model learns does not move toward the targets. ``balance: false``
adds them as extra draws, which made the model predict the targets for other rows and cost targeted
F1 in every seed of bench/augment_study.py.

``improvement`` is the augmented arm's targeted macro-F1 minus the control's, in points, where the
targeted macro-F1 averages the F1 of the targeted slices' labels over the WHOLE test set: a row of
another slice predicted as a targeted label is a false positive. (Counting only the targeted rows
made it recall, and a model that dumped other rows into the targeted classes looked like a gain;
``<arm>.targeted_f1_rows_only`` keeps that old number for comparison.) Beside it: the 95% paired
bootstrap interval, ``overall.accuracy_delta`` / ``overall.macro_f1_delta`` and
``rest.accuracy_delta`` (rows outside the targeted slices), all augmented minus control in points,
and ``tradeoff`` (1 when the targeted gain came with an overall loss).
"""

from __future__ import annotations

from typing import Any

import torch

from specs.augment import Params


def run(params: Params, ctx) -> None:
    from worker.ml.lineage import MODEL_ARTIFACT, load_model, model_source, save_model
    from worker.ml.modeling import load_saved
    from worker.ml.phases import recorded

    # Generating the variants is in no phase: the report shows it as the wall time left over ("other").
    with recorded(ctx) as phases:
        with phases("load"):
            source = model_source(ctx, params.model_job)
            model, tokenizer, spec, dataset = load_model(source, ctx)
        with phases("evaluate"):
            targets = weakest_slices(ctx, source, params.k, lambda: _validation_scores(model, tokenizer, dataset, params.max_length))
        variants = generate(ctx, params, dataset.train, targets, tokenizer)
        if params.choose:
            with phases("train"):  # the choice's short trials, scored on validation
                variants = choose(ctx, params, source, dataset, targets, variants)
        extra = _joined(variants.values())
        ctx.log_metric("aug.kept", len(extra))
        arms = {"baseline": None, "control": dataset.train, "augmented": dataset.train.plus(extra)}
        predicted = {}
        for arm, train_set in arms.items():
            if train_set is not None:
                with phases("load"):
                    model, tokenizer, _ = load_saved(ctx.fetch_artifact(source, MODEL_ARTIFACT))
                batches = _PriorKept(dataset, train_set, params) if arm == "augmented" and params.balance else None
                _train(model, tokenizer, dataset, train_set, arms["augmented"], params, ctx, arm, phases, batches)
            with phases("evaluate"):
                predicted[arm] = _evaluate_arm(ctx, model, tokenizer, dataset, targets, arm, params.max_length)
        with phases("save"):
            ctx.save_artifact("model", save_model(model, tokenizer, dataset.labels, spec, ctx.work_dir / "model"))
        with phases("evaluate"):
            _log_gain(ctx, dataset, targets, predicted["control"], predicted["augmented"], params.seed)


def _validation_scores(model, tokenizer, dataset, max_length: int) -> dict[str, float]:
    """The stored model's F1 per slice on the validation split: what targeting ranks by without robustness."""
    from worker.ml.evaluate import infer, slice_scores

    predicted = infer(model, tokenizer, dataset.val.texts, max_length=max_length).predictions()
    return {name: f1 for name, (f1, _, _) in slice_scores(dataset.label_ids(dataset.val), predicted, dataset.val.slices).items()}


def weakest_slices(ctx, source, k: int, validation_f1) -> list[str]:
    """The k most error-prone slices of ``source``'s model: from robustness, else the lowest of ``validation_f1()``."""
    from core.errors import PermanentError
    from worker.ml.lineage import report_for

    report = report_for(ctx, "robustness", source.job_id)
    ranks = report.by_slice("weakness_rank") if report else {}
    if ranks:
        chosen, basis = sorted(ranks, key=lambda s: (ranks[s], s))[:k], "robustness"
    else:
        val_f1 = validation_f1()
        if not val_f1:
            raise PermanentError(f"job {source.job_id}: no robustness report and no validation slices to rank by")
        chosen, basis = sorted(val_f1, key=lambda s: (val_f1[s], s))[:k], "validation"
    for rank, group in enumerate(chosen, start=1):
        ctx.log_metric("targeted_rank", rank, slice=group)
    ctx.log_metric("targets_from_robustness", 1.0 if basis == "robustness" else 0.0)
    return chosen


def generate(ctx, params: Params, train, targets: list[str], tokenizer) -> dict:
    """Variants of the targeted slices' training texts per augmenter, deduplicated; stats logged per slice and augmenter.

    A variant is a duplicate when the model would see the same word pieces as for a text already in
    the training set: for an uncased model, a recased copy teaches nothing.
    """
    from worker.ml.data import Examples
    from worker.ml.textops import WordNetUnavailable, augment

    augmenters = params.augmenters + (("contextual",) if params.mlm_path and "contextual" not in params.augmenters else ())
    seen = {_pieces(tokenizer, t) for t in train.texts}
    rows: dict[str, list[tuple[str, str, str]]] = {}
    skipped: set[str] = set()
    for group in targets:
        part = train.where_slice({group})
        for name in (a for a in augmenters if a not in skipped):
            try:
                variants = augment(name, part.texts, n=params.variants, seed=params.seed, mlm_path=params.mlm_path or None)
            except WordNetUnavailable as missing:
                # Without WordNet the other augmenters still run; both arms train as before.
                ctx.warn(f"augmenter {name} skipped: {missing}")
                ctx.log_metric(f"skipped.{name}", 1)
                skipped.add(name)
                continue
            candidates = [(text, label) for label, options in zip(part.labels, variants) for text in options]
            kept = _dedupe(candidates, seen, tokenizer)
            rows.setdefault(name, []).extend((text, label, group) for text, label in kept)
            ctx.log_metric(f"aug.{name}.generated", len(candidates), slice=group)
            ctx.log_metric(f"aug.{name}.duplicates", len(candidates) - len(kept), slice=group)
            ctx.log_metric(f"aug.{name}.kept", len(kept), slice=group)
    return {name: Examples(*(tuple(column) for column in zip(*found))) for name, found in rows.items() if found}


def _joined(parts) -> Any:
    from worker.ml.data import Examples

    joined = Examples((), (), ())
    for part in parts:
        joined = joined.plus(part)
    return joined


def choose(ctx, params: Params, source, dataset, targets: list[str], variants: dict) -> dict:
    """The ``params.choose`` augmenters whose trial beat the trial control on validation, best first.

    Every trial (one per augmenter, and the control) continues the stored model for the same steps
    and is scored on the validation split only. When no augmenter beats the control, the best one
    is kept all the same (the final comparison against the equal-compute control then says so on
    test) and a warning says that none helped on validation.
    """
    from dataclasses import replace

    from worker.ml.evaluate import infer
    from worker.ml.lineage import MODEL_ARTIFACT
    from worker.ml.modeling import load_saved
    from worker.ml.train import Plan, config_from, train

    steps = params.trial_steps or Plan.of(config_from(params), len(dataset.train), 0).per_epoch
    cfg = replace(config_from(params), steps=steps, eval_every=0)
    truth = dataset.label_ids(dataset.val)
    metric = _targeted_metric(dataset, targets, split="val")
    scores = {}
    for name, extra in {"control": None, **variants}.items():
        model, tokenizer, _ = load_saved(ctx.fetch_artifact(source, MODEL_ARTIFACT))
        train_set = dataset.train if extra is None else dataset.train.plus(extra)
        batches = _PriorKept(dataset, train_set, params) if extra is not None and params.balance else None
        train(model, tokenizer, train_set.texts, dataset.label_ids(train_set), cfg, ctx, run=f"trial.{name}", batches=batches)
        scores[name] = metric(truth, infer(model, tokenizer, dataset.val.texts, max_length=params.max_length).predictions())
    gains = {name: 100 * (scores[name] - scores["control"]) for name in variants}
    for name, gain in gains.items():
        ctx.log_metric(f"choice.{name}.val_gain", gain)
    ranked = sorted(gains, key=lambda name: (-gains[name], name))
    chosen = [name for name in ranked if gains[name] > 0][: params.choose] or ranked[:1]
    if chosen and gains[chosen[0]] <= 0:
        ctx.warn(f"no augmenter beat the trial control on validation; keeping the best, {chosen[0]} ({gains[chosen[0]]:+.2f} points)")
    for rank, name in enumerate(chosen, start=1):
        ctx.log_metric(f"choice.{name}.chosen", rank)
    return {name: variants[name] for name in chosen}


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


def _train(model, tokenizer, dataset, train_set, augmented, params: Params, ctx, arm: str, phases=None, batches=None) -> None:
    """Train one arm under the plan both arms share: the augmented data's step cap, the original data's cadence."""
    from dataclasses import replace

    from worker.ml.train import Plan, config_from, train

    cfg = config_from(params)
    if not params.steps:
        val_rows = len(dataset.val)
        cfg = replace(cfg, max_steps=Plan.of(cfg, len(augmented), val_rows).steps,
                      eval_every=Plan.of(cfg, len(dataset.train), val_rows).eval_every)
    train(model, tokenizer, train_set.texts, dataset.label_ids(train_set), cfg, ctx, run=arm,
          val=(dataset.val.texts, dataset.label_ids(dataset.val)), phases=phases, batches=batches)


class _PriorKept:
    """``train``'s batches hook for a balanced augmented arm: micro-batch ``m`` is drawn with replacement,
    seeded by ``m`` (so a resumed attempt replays it), each row weighted so that every label is drawn as
    often as in the original data: a label with n original rows and v variants weighs n / (n + v) a row."""

    def __init__(self, dataset, train_set, params: Params) -> None:
        from collections import Counter

        labels = dataset.label_ids(train_set)
        original, now = Counter(dataset.label_ids(dataset.train)), Counter(labels)
        self.weights = torch.tensor([original[label] / now[label] for label in labels], dtype=torch.double)
        self.batch_size, self.seed = min(params.batch_size, len(labels)), params.seed

    def indices(self, micro: int) -> list[int]:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + micro)
        return torch.multinomial(self.weights, self.batch_size, replacement=True, generator=generator).tolist()


def _evaluate_arm(ctx, model, tokenizer, dataset, targets: list[str], arm: str, max_length: int):
    """Score the arm's model once on test: its rows under ``<arm>.``, its targeted F1 both ways; return predictions."""
    from worker.ml.evaluate import classification_rows, infer, log_rows, slice_f1_rows_only

    predicted = infer(model, tokenizer, dataset.test.texts, max_length=max_length).predictions()
    log_rows(ctx, classification_rows(dataset, dataset.test, predicted), prefix=f"{arm}.")
    truth = dataset.label_ids(dataset.test)
    ctx.log_metric(f"{arm}.targeted_f1", _targeted_metric(dataset, targets)(truth, predicted))
    in_targets = [s in targets for s in dataset.test.slices]
    ctx.log_metric(f"{arm}.targeted_f1_rows_only", slice_f1_rows_only(truth, predicted, in_targets))
    return predicted


def _targeted_metric(dataset, targets: list[str], split: str = "test"):
    """Macro-F1 over the targeted slices' labels, counted on the whole ``split``."""
    from worker.ml.evaluate import macro_f1, slice_labels

    rows = getattr(dataset, split)
    owned = slice_labels(dataset.label_ids(rows), rows.slices)
    labels = sorted({label for group in targets for label in owned.get(group, [])})
    return lambda truth, predicted: macro_f1(truth, predicted, labels)


def _log_gain(ctx, dataset, targets: list[str], control, augmented, seed: int) -> None:
    """``improvement`` with its interval, the overall deltas, the tradeoff flag and the cost on the other rows."""
    import numpy as np

    from worker.ml.evaluate import accuracy, comparison_rows, log_rows

    truth = np.asarray(dataset.label_ids(dataset.test))
    log_rows(ctx, comparison_rows(truth, control, augmented, metric=_targeted_metric(dataset, targets), seed=seed))
    rest = np.array([s not in targets for s in dataset.test.slices])
    ctx.log_metric("rest.accuracy_delta", 100 * (accuracy(truth[rest], augmented[rest]) - accuracy(truth[rest], control[rest])))
