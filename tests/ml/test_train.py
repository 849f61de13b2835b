"""The training loop stops between steps, checkpoints without pickle, and resumes where it stopped."""

from __future__ import annotations

import pytest

from core.errors import BudgetStop, PermanentError
from worker.ml.data import load_folder
from worker.ml.modeling import load_classifier, load_saved, save_classifier
from worker.ml.train import TrainConfig, seed_everything, train

CONFIG = TrainConfig(steps=12, batch_size=16, grad_accum=2, lr=5e-3, warmup_ratio=0.25, checkpoint_every=5, seed=3)


def fit(ctx_factory, tiny_bert, dataset, name, **context):
    """Train a fresh classifier under a fresh context; return (context, result or the stop)."""
    seed_everything(CONFIG.seed)  # the new classification head is random: make it the same in every run
    model, tokenizer = load_classifier(str(tiny_bert), dataset.labels)
    ctx = ctx_factory(name, **context)
    try:
        return ctx, train(model, tokenizer, dataset.train.texts, dataset.label_ids(dataset.train), CONFIG, ctx)
    except BudgetStop as stop:
        return ctx, stop


@pytest.fixture
def ctx_factory(make_context):
    return lambda job_id, **kw: make_context("baseline", job_id=job_id, **kw)


@pytest.fixture(scope="module")
def dataset(clinc_subset):
    return load_folder(clinc_subset)


def losses(ctx) -> dict[int, float]:
    return {m.step: m.value for m in ctx.values("train.loss")}


def test_a_stop_mid_training_checkpoints_and_the_next_attempt_resumes_at_the_same_step(ctx_factory, tiny_bert, dataset):
    # Given an uninterrupted run as the reference
    reference, done = fit(ctx_factory, tiny_bert, dataset, "reference")
    assert done.step == 12 and sorted(losses(reference)) == list(range(1, 13))
    # When a run is stopped after 7 steps (between two periodic checkpoints)...
    first, stop = fit(ctx_factory, tiny_bert, dataset, "job", stop_after_steps=7)
    assert isinstance(stop, BudgetStop) and "after step 7" in str(stop)
    assert sorted(losses(first)) == list(range(1, 8))
    # ...and its next attempt runs with the same checkpoint folder
    second, resumed = fit(ctx_factory, tiny_bert, dataset, "job", attempt=2)
    # Then it starts at step 8 and its loss curve is the one the uninterrupted run drew
    assert resumed.resumed_from == 7 and resumed.step == 12
    assert sorted(losses(second)) == list(range(8, 13))
    combined = {**losses(first), **losses(second)}
    assert combined == pytest.approx(losses(reference), rel=1e-4)


def test_checkpoints_hold_only_safetensors_and_json(ctx_factory, tiny_bert, dataset):
    ctx, _ = fit(ctx_factory, tiny_bert, dataset, "files")
    checkpoints = sorted(p.name for p in (ctx.checkpoint_dir / "train").iterdir())
    assert checkpoints == ["step-000010", "step-000012"]  # step 5 pruned: two are kept
    files = {p.name for p in (ctx.checkpoint_dir / "train" / "step-000012").iterdir()}
    assert files == {"model.safetensors", "optimizer.safetensors", "rng.safetensors", "state.json"}


def test_the_learning_rate_warms_up_then_decays_linearly(ctx_factory, tiny_bert, dataset):
    ctx, _ = fit(ctx_factory, tiny_bert, dataset, "lr")
    rates = [m.value for m in ctx.values("train.lr")]
    # 3 warmup steps (25% of 12) climb to the peak, then 9 steps fall linearly towards zero.
    assert rates[:4] == pytest.approx([CONFIG.lr / 3, 2 * CONFIG.lr / 3, CONFIG.lr, CONFIG.lr])
    assert all(a > b for a, b in zip(rates[3:], rates[4:]))
    assert rates[-1] == pytest.approx(CONFIG.lr / 9)


def test_a_saved_classifier_round_trips_with_its_label_map(tmp_path, tiny_bert, dataset):
    model, tokenizer = load_classifier(str(tiny_bert), dataset.labels)
    folder = save_classifier(model, tokenizer, dataset.labels, tmp_path / "model")
    again, _, labels = load_saved(folder)
    assert labels == dataset.labels and again.config.id2label[0] == dataset.labels[0]
    assert {p.suffix for p in folder.iterdir()} == {".json", ".safetensors"}


def test_pickle_weights_are_refused(tmp_path, tiny_bert, dataset):
    folder = tmp_path / "pickled"
    folder.mkdir()
    (folder / "config.json").write_text((tiny_bert / "config.json").read_text())
    (folder / "pytorch_model.bin").write_bytes(b"not really a pickle")
    with pytest.raises(PermanentError, match="refusing pickle weights pytorch_model.bin"):
        load_classifier(str(folder), dataset.labels)


# Early stopping: min_delta 1.0 means no validation can beat the first, so the run stops at the
# third validation (patience 2) and must come back with the first validation's weights.
EARLY = TrainConfig(epochs=6, batch_size=32, lr=5e-3, warmup_ratio=0.1, eval_every=5, patience=2, min_delta=1.0,
                    checkpoint_every=4, seed=3)


def fit_early(ctx_factory, tiny_bert, dataset, name, cfg=EARLY, **context):
    """Train with validation under ``cfg``; return (context, result or the stop, model)."""
    seed_everything(cfg.seed)
    model, tokenizer = load_classifier(str(tiny_bert), dataset.labels)
    ctx = ctx_factory(name, **context)
    val = (dataset.val.texts, dataset.label_ids(dataset.val))
    try:
        return ctx, train(model, tokenizer, dataset.train.texts, dataset.label_ids(dataset.train), cfg, ctx, val=val), model
    except BudgetStop as stop:
        return ctx, stop, model


def val_f1(model, tiny_bert, dataset) -> float:
    from transformers import AutoTokenizer

    from worker.ml.evaluate import infer, macro_f1

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_bert))
    return macro_f1(dataset.label_ids(dataset.val), infer(model, tokenizer, dataset.val.texts).predictions())


def curve(ctx, name="train.val_macro_f1") -> dict[int, float]:
    return {m.step: m.value for m in ctx.values(name)}


def test_early_stopping_stops_after_patience_validations_without_a_gain_and_restores_the_best_weights(ctx_factory, tiny_bert, dataset):
    ctx, done, model = fit_early(ctx_factory, tiny_bert, dataset, "early")
    assert sorted(curve(ctx)) == [5, 10, 15] and sorted(curve(ctx, "train.val_accuracy")) == [5, 10, 15]
    assert (done.step, done.best_step, done.stopped_early) == (15, 5, True)
    assert {m.name: m.value for m in ctx.metrics if m.step is None} == {
        "train.rows": 400, "train.steps": 15, "train.epochs_run": 15 / 13, "train.stopped_early": 1.0, "train.best_step": 5}
    assert val_f1(model, tiny_bert, dataset) == pytest.approx(curve(ctx)[5])  # the weights of step 5, not 15
    assert curve(ctx)[15] != pytest.approx(curve(ctx)[5])  # ...which really differ


def test_a_run_stopped_mid_training_resumes_with_its_early_stopping_state_and_best_weights(ctx_factory, tiny_bert, dataset):
    # Given an uninterrupted reference, and a run stopped after 12 steps (after two validations)...
    reference, _, reference_model = fit_early(ctx_factory, tiny_bert, dataset, "reference")
    first, stop, _ = fit_early(ctx_factory, tiny_bert, dataset, "job", stop_after_steps=12)
    assert isinstance(stop, BudgetStop) and sorted(curve(first)) == [5, 10]
    # When the next attempt resumes from the checkpoint at step 12
    second, resumed, model = fit_early(ctx_factory, tiny_bert, dataset, "job", attempt=2)
    # Then it still knows step 5 was the best and two validations have passed since: one more stops it
    assert resumed.resumed_from == 12 and sorted(curve(second)) == [15]
    assert (resumed.step, resumed.best_step, resumed.stopped_early) == (15, 5, True)
    assert {**losses(first), **losses(second)} == pytest.approx(losses(reference), rel=1e-4)
    for (name, mine), theirs in zip(model.state_dict().items(), reference_model.state_dict().values()):
        assert mine.allclose(theirs, atol=1e-6), name
    # And a third attempt of the finished run trains nothing more and keeps the same best weights
    third, again, model = fit_early(ctx_factory, tiny_bert, dataset, "job", attempt=3)
    assert not losses(third) and (again.step, again.best_step, again.stopped_early) == (15, 5, True)
    assert val_f1(model, tiny_bert, dataset) == pytest.approx(curve(reference)[5])


def test_by_default_training_runs_to_a_validation_plateau_and_keeps_the_best_weights(ctx_factory, tiny_bert, dataset):
    cfg = TrainConfig(epochs=40, batch_size=32, lr=5e-3, checkpoint_every=1000, seed=3)  # default cadence and patience
    ctx, done, model = fit_early(ctx_factory, tiny_bert, dataset, "plateau", cfg=cfg)
    scores = curve(ctx)
    assert done.stopped_early and done.step < 40 * 13
    assert list(scores) == list(range(13, done.step + 1, 13))  # once per epoch: val (100 rows) is smaller than train
    best = max(scores, key=lambda step: (scores[step], -step))  # the first of equal bests
    assert done.best_step == best and done.step == best + 3 * 13  # patience 3
    assert val_f1(model, tiny_bert, dataset) == pytest.approx(scores[best])


def test_the_plan_validates_once_per_epoch_or_per_validation_sized_stretch_and_warms_up_at_most_an_epoch():
    from worker.ml.train import Plan

    full = Plan.of(TrainConfig(epochs=40, batch_size=32), rows=15000, val_rows=3000)
    assert (full.per_epoch, full.steps, full.eval_every, full.warmup, full.early_stopping) == (469, 18760, 469, 469, True)
    # 10 rows per intent beside a 3,000-row validation split: validate every 3,000 training rows, not every epoch.
    few = Plan.of(TrainConfig(epochs=40, batch_size=32), rows=1500, val_rows=3000)
    assert (few.per_epoch, few.steps, few.eval_every, few.warmup) == (47, 1880, 94, 47)
    fixed = Plan.of(TrainConfig(steps=600, batch_size=32), rows=1500, val_rows=3000)
    assert (fixed.steps, fixed.warmup, fixed.early_stopping, fixed.eval_every) == (600, 60, False, 0)  # as before: no validation
    assert not Plan.of(TrainConfig(epochs=3), rows=100, val_rows=0).early_stopping  # nothing to stop on


def test_a_run_interrupted_between_loss_reports_still_logs_every_step_it_took(ctx_factory, tiny_bert, dataset):
    # The losses reach the host in bursts (one sync per report); an interruption must not lose a burst.
    class Interrupted(Exception):
        pass

    def interrupt(step: int) -> None:
        if step == 4:  # between the checkpoint at 0 and the one at 5: nothing flushed these steps yet
            raise Interrupted

    seed_everything(CONFIG.seed)
    model, tokenizer = load_classifier(str(tiny_bert), dataset.labels)
    ctx = ctx_factory("interrupted")
    with pytest.raises(Interrupted):
        train(model, tokenizer, dataset.train.texts, dataset.label_ids(dataset.train), CONFIG, ctx, on_step=interrupt)
    assert sorted(losses(ctx)) == [1, 2, 3, 4] and [r["step"] for r in ctx.reports] == [1, 2, 3, 4]
