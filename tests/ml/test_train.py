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
