"""curriculum: train high-loss examples first, then anneal to uniform; compare at equal steps.

Three arms start from the same pretrained model and train for the same number of steps:
``uniform`` (the plain seeded shuffle), ``curriculum`` (rank-based selection by each row's latest
training loss, see ``worker.ml.curriculum``) and ``random`` (the same schedule and skew, with the
losses shuffled across rows: a control for "any non-uniform sampling helps"). Every ``eval_every``
steps each arm is scored on the validation split (evaluation, not scoring of the training set), which
gives its steps to ``target_accuracy``. ``improvement`` is curriculum minus uniform test accuracy, in
points. The curriculum arm's model is stored as the ``model`` artifact.

Each arm's loss table is saved beside its checkpoints after every step, so a resumed attempt draws
from the losses its predecessor had measured rather than starting over with every row unseen.
"""

from __future__ import annotations

from specs.curriculum import ARMS, Params






def run(params: Params, ctx) -> None:
    from worker.ml.lineage import DataSpec, save_model
    from worker.ml.modeling import load_classifier
    from worker.ml.train import seed_everything

    spec = DataSpec(params.dataset, params.variant, params.slice_column, params.seed)
    dataset = spec.load()
    accuracy = {}
    for arm in ARMS:
        seed_everything(params.seed)  # the same random head in every arm: only the sampling differs
        model, tokenizer = load_classifier(params.model, dataset.labels)
        train_arm(model, tokenizer, dataset, arm, params, ctx)
        accuracy[arm] = _test_arm(ctx, model, tokenizer, dataset, arm, params.max_length)
        if arm == "curriculum":
            ctx.save_artifact("model", save_model(model, tokenizer, dataset.labels, spec, ctx.work_dir / "model"))
    ctx.log_metric("improvement", 100 * (accuracy["curriculum"] - accuracy["uniform"]))


def train_arm(model, tokenizer, dataset, arm: str, params: Params, ctx) -> None:
    """Train one arm in place, logging the loss distribution, validation accuracy and wall time."""
    import time

    from worker.ml.curriculum import CurriculumSampler, LossTable, per_row_loss
    from worker.ml.train import config_from, train

    table = LossTable.resume(_table_path(ctx, arm), len(dataset.train))
    sampler = None
    if arm != "uniform":
        sampler = CurriculumSampler(table, batch_size=params.batch_size, steps=params.steps, grad_accum=params.grad_accum,
                                    s_max=params.s_max, anneal=params.anneal, anneal_fraction=params.anneal_fraction,
                                    seed=params.seed, shuffled=arm == "random")
    watch = _Watch(ctx, model, tokenizer, dataset, table, arm, params)
    start = time.perf_counter()
    done = train(model, tokenizer, dataset.train.texts, dataset.label_ids(dataset.train), config_from(params), ctx,
                 run=arm, batches=sampler, loss_fn=per_row_loss(table), on_step=watch)
    ctx.log_metric(f"{arm}.wall_s", time.perf_counter() - start)
    if done.resumed_from:
        # Wall time and the validation curve cover this attempt's steps only; the earlier attempt logged the rest.
        ctx.log_metric(f"{arm}.resumed_from", done.resumed_from)
    if watch.reached is not None:
        ctx.log_metric(f"{arm}.steps_to_target", watch.reached)
    ctx.log_metric(f"{arm}.target_reached", float(watch.reached is not None))


class _Watch:
    """The ``on_step`` hook: loss quantiles every ``quantile_every`` steps, validation every ``eval_every``."""

    def __init__(self, ctx, model, tokenizer, dataset, table, arm: str, params: Params) -> None:
        self.ctx, self.model, self.tokenizer, self.dataset = ctx, model, tokenizer, dataset
        self.table, self.arm, self.params = table, arm, params
        self.reached = None  # the first step whose validation accuracy met the target

    def __call__(self, step: int) -> None:
        self.table.tick(step)
        self.table.save(_table_path(self.ctx, self.arm))
        last = step == self.params.steps
        if step % self.params.quantile_every == 0 or last:
            for name, value in self.table.summary().items():
                self.ctx.log_metric(f"{self.arm}.train_loss_{name}", value, step=step)
        if step % self.params.eval_every == 0 or last:
            self._validate(step)

    def _validate(self, step: int) -> None:
        import numpy as np

        from worker.ml.evaluate import infer

        outputs = infer(self.model, self.tokenizer, self.dataset.val.texts, max_length=self.params.max_length)
        self.model.train()  # infer switched to eval mode; training goes on after this hook
        accuracy = float(np.mean(outputs.predictions() == np.asarray(self.dataset.label_ids(self.dataset.val))))
        self.ctx.log_metric(f"{self.arm}.val_accuracy", accuracy, step=step)
        if self.reached is None and accuracy >= self.params.target_accuracy:
            self.reached = step


def _table_path(ctx, arm: str):
    from pathlib import Path

    # Beside the arm's checkpoints (``train`` names that folder after the run), outside their step-* names.
    return Path(ctx.checkpoint_dir) / arm / "losses.npz"


def _test_arm(ctx, model, tokenizer, dataset, arm: str, max_length: int) -> float:
    """Log the arm's test accuracy, macro-F1 and per-slice F1 under ``<arm>.``; return its accuracy."""
    from worker.ml.evaluate import classification_rows, infer, log_rows

    predicted = infer(model, tokenizer, dataset.test.texts, max_length=max_length).predictions()
    rows = classification_rows(dataset, dataset.test, predicted)
    log_rows(ctx, rows, prefix=f"{arm}.")
    return next(r.value for r in rows if r.name == "accuracy")
