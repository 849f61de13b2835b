"""curriculum: train high-loss examples first, then anneal to uniform; compare under one training plan.

Three arms start from the same pretrained model under the same plan (the same step cap, validation
cadence and early stopping, or exactly ``steps`` steps each): ``uniform`` (the plain seeded
shuffle), ``curriculum`` (rank-based selection by each row's latest training loss, see
``worker.initiatives.curriculum.sampling``; ``sampler: selective`` swaps in the Selective-Backprop-style rule) and ``random`` (the same schedule and skew, with the losses shuffled
across rows: a control for "any non-uniform sampling helps"). The annealing runs over the step cap.
Every validation of the training loop (evaluation, not scoring of the training set) also gives the
arm's steps to ``target_accuracy``. ``improvement`` is curriculum minus uniform test accuracy, in
points, with its paired bootstrap interval and the overall deltas (``worker.ml.evaluate.comparison_rows``).
The curriculum arm's model is stored as the ``model`` artifact.

Each arm's loss table is written into every checkpoint of that arm, so it travels with the checkpoint
(to object storage too): a resumed attempt, on this machine or another, draws from the losses measured
up to the checkpoint's step rather than starting over with every row unseen.
"""

from __future__ import annotations

from specs.curriculum import ARMS, Params

TABLE = "losses.npz"  # the loss table's file in each checkpoint


def run(params: Params, ctx) -> None:
    from worker.ml.evaluate import accuracy, comparison_rows, log_rows
    from worker.ml.lineage import DataSpec, save_model
    from worker.ml.modeling import load_classifier
    from worker.ml.phases import recorded
    from worker.ml.train import seed_everything

    with recorded(ctx) as phases:
        with phases("load"):
            spec, dataset = DataSpec.of(params, ctx)
        predicted = {}
        for arm in ARMS:
            with phases("load"):
                seed_everything(params.seed)  # the same random head in every arm: only the sampling differs
                model, tokenizer = load_classifier(params.model, dataset.labels)
            train_arm(model, tokenizer, dataset, arm, params, ctx, phases)
            with phases("evaluate"):
                predicted[arm] = _test_arm(ctx, model, tokenizer, dataset, arm, params.max_length)
            if arm == "curriculum":
                with phases("save"):
                    ctx.save_artifact("model", save_model(model, tokenizer, dataset.labels, spec, ctx.work_dir / "model"))
        with phases("evaluate"):
            truth = dataset.label_ids(dataset.test)
            rows = comparison_rows(truth, predicted["uniform"], predicted["curriculum"], metric=accuracy, seed=params.seed)
        log_rows(ctx, rows)


def train_arm(model, tokenizer, dataset, arm: str, params: Params, ctx, phases=None) -> None:
    """Train one arm in place, logging the loss distribution, validation accuracy and wall time."""
    import time

    from worker.initiatives.curriculum.sampling import CurriculumSampler, LossTable, per_row_loss
    from worker.ml.train import Plan, config_from, train

    cfg = config_from(params)
    plan = Plan.of(cfg, len(dataset.train), len(dataset.val))
    table = LossTable.resume(table_path(ctx, arm), len(dataset.train))  # the latest checkpoint's, if any
    sampler = None
    if arm != "uniform":
        sampler = CurriculumSampler(table, batch_size=params.batch_size, steps=plan.steps, grad_accum=params.grad_accum,
                                    s_max=params.s_max, anneal=params.anneal, anneal_fraction=params.anneal_fraction,
                                    seed=params.seed, shuffled=arm == "random",
                                    sampler=params.sampler, beta=params.beta)
    watch = _Watch(ctx, table, arm, params, plan.steps, phases)
    start = time.perf_counter()
    done = train(model, tokenizer, dataset.train.texts, dataset.label_ids(dataset.train), cfg, ctx, run=arm,
                 val=(dataset.val.texts, dataset.label_ids(dataset.val)), batches=sampler, loss_fn=per_row_loss(table),
                 on_step=watch, on_eval=watch.validated, phases=phases, on_checkpoint=watch.saved)
    ctx.log_metric(f"{arm}.wall_s", time.perf_counter() - start)
    if done.resumed_from:
        # Wall time and the validation curve cover this attempt's steps only; the earlier attempt logged the rest.
        ctx.log_metric(f"{arm}.resumed_from", done.resumed_from)
    if watch.reached is not None:
        ctx.log_metric(f"{arm}.steps_to_target", watch.reached)
    ctx.log_metric(f"{arm}.target_reached", float(watch.reached is not None))


class _Watch:
    """The ``on_step`` hook (loss quantiles every ``quantile_every`` steps) and the ``on_eval`` hook
    (the first validation that meets ``target_accuracy``; the training loop logs the scores)."""

    def __init__(self, ctx, table, arm: str, params: Params, last_step: int, phases=None) -> None:
        from worker.ml.phases import Phases

        self.ctx, self.table, self.arm, self.params, self.last_step = ctx, table, arm, params, last_step
        self.phases = phases if phases is not None else Phases()
        self.reached = None  # the first step whose validation accuracy met the target

    def __call__(self, step: int) -> None:
        self.table.tick(step)
        if step % self.params.quantile_every == 0 or step == self.last_step:
            for name, value in self.table.summary().items():
                self.ctx.log_metric(f"{self.arm}.train_loss_{name}", value, step=step)

    def saved(self, folder, step: int) -> None:
        """The ``on_checkpoint`` hook: the table as of the end of ``step`` goes into that step's checkpoint."""
        self.table.tick(step)
        self.table.save(folder / TABLE)

    def validated(self, step: int, accuracy: float, macro_f1: float) -> None:
        if self.reached is None and accuracy >= self.params.target_accuracy:
            self.reached = step


def table_path(ctx, arm: str):
    """The loss table in the arm's latest checkpoint (``train`` names the folder after the run), or None."""
    from pathlib import Path

    from worker.ml.checkpoint import latest_checkpoint

    latest = latest_checkpoint(Path(ctx.checkpoint_dir) / arm)
    return latest / TABLE if latest else None


def _test_arm(ctx, model, tokenizer, dataset, arm: str, max_length: int):
    """Log the arm's test accuracy, macro-F1 and per-slice F1 under ``<arm>.``; return its predictions."""
    from worker.ml.evaluate import classification_rows, infer, log_rows

    predicted = infer(model, tokenizer, dataset.test.texts, max_length=max_length).predictions()
    log_rows(ctx, classification_rows(dataset, dataset.test, predicted), prefix=f"{arm}.")
    return predicted
