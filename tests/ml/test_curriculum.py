"""The loss curriculum: high-loss rows first, annealed to uniform, with no forward pass of its own."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.initiatives.curriculum.sampling import CurriculumSampler, LossTable

STEPS = 8
PARAMS = {"steps": STEPS, "batch_size": 16, "lr": 5e-3, "checkpoint_every": 100, "quantile_every": 2,
          "eval_every": 4, "target_accuracy": 0.15, "s_max": 50.0, "anneal_fraction": 0.5}

# Losses that differ by a visible margin: with all losses equal no ordering can favour anything.
losses_strategy = st.lists(st.floats(0.0, 20.0, allow_nan=False), min_size=2, max_size=200).filter(
    lambda xs: max(xs) - min(xs) > 1e-3)


def sampler_over(losses, **kw) -> CurriculumSampler:
    table = LossTable(len(losses))
    table.observe(range(len(losses)), losses)
    return CurriculumSampler(table, batch_size=1, steps=100, **kw)


@settings(max_examples=60, deadline=None)
@given(losses=losses_strategy, s_max=st.floats(2.0, 1e4), anneal=st.sampled_from(["linear", "cosine"]))
def test_early_draws_favour_high_loss_rows_and_the_end_of_annealing_is_uniform(losses, s_max, anneal):
    sampler = sampler_over(losses, s_max=s_max, anneal=anneal, anneal_fraction=0.6)
    values = np.asarray(losses)
    # Early in the schedule the expected loss of a drawn row exceeds the plain mean...
    assert float(sampler.probabilities(1) @ values) > values.mean() + 1e-9
    # ...and once the annealing fraction has passed every row is equally likely.
    for step in (61, 100):
        assert sampler.probabilities(step) == pytest.approx(np.full(len(values), 1 / len(values)), rel=1e-6)


@settings(max_examples=30, deadline=None)
@given(losses=losses_strategy)
def test_the_pressure_relaxes_monotonically_along_the_schedule(losses):
    sampler = sampler_over(losses, s_max=100.0, anneal="cosine", anneal_fraction=1.0)
    values = np.asarray(losses)
    expected = [float(sampler.probabilities(step) @ values) for step in (1, 25, 50, 75, 100)]
    assert all(a >= b - 1e-9 for a, b in itertools.pairwise(expected))


def test_rows_without_a_loss_yet_are_drawn_before_seen_ones():
    table = LossTable(10)
    table.observe(range(5), [9.0] * 5)  # rows 5-9 never seen: they count as higher than any loss
    sampler = CurriculumSampler(table, batch_size=5, steps=10, s_max=1e6)
    p = sampler.probabilities(1)
    assert p[5:].min() > p[:5].max()
    assert set(sampler.indices(0)) == {5, 6, 7, 8, 9}


def test_a_saved_loss_table_is_what_a_resumed_attempt_starts_from(tmp_path):
    table = LossTable(4)
    table.observe([1, 3], [0.5, 2.0])
    table.tick(7)
    table.save(tmp_path / "losses.npz")
    again = LossTable.resume(tmp_path / "losses.npz", 4)
    assert again.losses.tolist() == [math.inf, 0.5, math.inf, 2.0] and again.seen_at.tolist() == [-1, 1, -1, 1]
    assert again.clock == 8 and LossTable.resume(tmp_path / "absent.npz", 4).clock == 1


def test_the_random_control_keeps_the_skew_but_not_the_ranking():
    losses = list(range(100))
    curriculum = sampler_over(losses, s_max=100.0)
    control = sampler_over(losses, s_max=100.0, shuffled=True)
    p, q = curriculum.probabilities(1), control.probabilities(1)
    assert sorted(p) == pytest.approx(sorted(q))  # the same distribution of probabilities...
    assert q @ np.arange(100) < p @ np.arange(100) - 10  # ...not aimed at the high-loss rows


@settings(max_examples=40, deadline=None)
@given(losses=losses_strategy, beta=st.floats(0.5, 5.0))
def test_the_selective_sampler_favours_high_loss_rows_at_every_step_and_never_starves_a_row(losses, beta):
    sampler = sampler_over(losses, sampler="selective", beta=beta)
    values = np.asarray(losses)
    first, last = sampler.probabilities(1), sampler.probabilities(100)
    assert float(first @ values) > values.mean() + 1e-9  # aimed at the hard rows...
    assert sorted(first) == pytest.approx(sorted(last))  # ...with no annealing: the same skew throughout
    assert first.min() > 0 and first.sum() == pytest.approx(1.0)
    # The highest loss is (N ** beta) times likelier than the lowest: percentile 1 against 1/N.
    assert first.max() / first.min() == pytest.approx(len(values) ** beta, rel=1e-6)


def test_the_selective_sampler_at_beta_zero_is_uniform():
    p = sampler_over(list(range(50)), sampler="selective", beta=0.0).probabilities(1)
    assert p == pytest.approx(np.full(50, 1 / 50))


@pytest.mark.parametrize("field, value, message", [("sampler", "loss", "sampler must be one of rank, selective"),
                                                   ("beta", 11.0, "beta must be between 0 and 10")])
def test_curriculum_params_name_what_is_wrong(field, value, message):
    from specs.curriculum import Params

    with pytest.raises(ValueError, match=message):
        Params(**{field: value})


@pytest.fixture(scope="module")
def dataset(clinc_subset):
    from worker.ml.data import load_folder

    return load_folder(clinc_subset)


def test_the_curriculum_makes_no_forward_pass_beyond_training_steps_and_validation(make_context, tiny_bert, dataset):
    import specs
    from worker.initiatives import load_payload
    from worker.initiatives.curriculum import train_arm
    from worker.ml.modeling import load_classifier

    model, tokenizer = load_classifier(str(tiny_bert), dataset.labels)
    calls = {"train": 0, "eval": 0}
    model.register_forward_hook(lambda module, args, out: calls.__setitem__(
        "train" if module.training else "eval", calls["train" if module.training else "eval"] + 1))
    ctx = make_context("curriculum")
    train_arm(model, tokenizer, dataset, "curriculum", specs.parse_params("curriculum", PARAMS), ctx)
    # One forward per step (grad_accum 1): the losses the sampler ranks by come from those passes.
    assert calls["train"] == STEPS
    # Validation at steps 4 and 8, in batches of 64.
    assert calls["eval"] == 2 * math.ceil(len(dataset.val) / 64)
    assert [m.step for m in ctx.values("curriculum.train_loss_p50")] == [2, 4, 6, 8]
    assert [m.step for m in ctx.values("curriculum.val_accuracy")] == [4, 8]


def test_each_checkpoint_carries_the_loss_table_as_of_its_step(make_context, tiny_bert, dataset):
    # The table travels inside the checkpoint (to object storage too), so a resumed attempt on another
    # machine draws from the losses measured up to the step it resumes from, and none measured later.
    from pathlib import Path

    import specs
    from worker.initiatives.curriculum import table_path, train_arm
    from worker.ml.modeling import load_classifier

    model, tokenizer = load_classifier(str(tiny_bert), dataset.labels)
    ctx = make_context("curriculum")
    train_arm(model, tokenizer, dataset, "curriculum", specs.parse_params("curriculum", {**PARAMS, "checkpoint_every": 4}), ctx)
    folder = Path(ctx.checkpoint_dir) / "curriculum"
    for step in (4, 8):
        table = LossTable.resume(folder / f"step-{step:06d}" / "losses.npz", len(dataset.train))
        assert table.clock == step + 1 and table.seen_at.max() == step
        assert 0 < (table.seen_at >= 1).sum() <= PARAMS["batch_size"] * step  # rows seen in steps 1..step only
    assert table_path(ctx, "curriculum") == folder / "step-000008" / "losses.npz"
    assert not (folder / "losses.npz").exists()  # nothing beside the checkpoints that would not travel


def test_a_curriculum_job_compares_three_arms_at_equal_steps(tmp_path, clinc_subset, tiny_bert, run_job):
    ctx = run_job(tmp_path, "curriculum", {**PARAMS, "dataset": str(clinc_subset), "model": str(tiny_bert)}, [])
    accuracy = {}
    for arm in ("uniform", "curriculum", "random"):
        assert len(ctx.values(f"{arm}.loss")) == STEPS
        assert {f"{arm}.macro_f1", f"{arm}.wall_s", f"{arm}.target_reached", f"{arm}.train_loss_mean"} <= {m.name for m in ctx.metrics}
        accuracy[arm] = ctx.values(f"{arm}.accuracy")[0].value
    assert ctx.values("improvement")[0].value == pytest.approx(100 * (accuracy["curriculum"] - accuracy["uniform"]))
    assert ctx.values("overall.accuracy_delta")[0].value == pytest.approx(ctx.values("improvement")[0].value)
    low, high = ctx.values("improvement.ci_low")[0].value, ctx.values("improvement.ci_high")[0].value
    assert low <= ctx.values("improvement")[0].value <= high and ctx.values("tradeoff")
    assert (tmp_path / "artifacts" / ctx.job_id / "model" / "model.safetensors").is_file()
