"""A training job says where its wall time went: phases that never overlap, and training rows per second."""

from __future__ import annotations

import time

import pytest

from core.phases import PHASES, time_split
from producer.render import time_json
from worker.ml.data import load_folder
from worker.ml.modeling import Pretokenized, encode, load_classifier
from worker.ml.phases import Phases

STEPS, BATCH = 6, 16


@pytest.fixture(scope="module")
def baseline(tmp_path_factory, clinc_subset, tiny_bert, run_job):
    """One baseline job run in process, and the wall seconds around it."""
    params = {"dataset": str(clinc_subset), "model": str(tiny_bert), "steps": STEPS, "batch_size": BATCH, "eval_every": 3,
              "checkpoint_every": 4, "lr": 5e-3, "latency_samples": 3}
    start = time.perf_counter()
    ctx = run_job(tmp_path_factory.mktemp("phases"), "baseline", params, [])
    return ctx, time.perf_counter() - start


def scalars(ctx) -> dict[str, float]:
    return {m.name: m.value for m in ctx.metrics if m.step is None and m.slice is None}


def test_a_baseline_job_logs_every_phase_non_negative_and_they_sum_to_no_more_than_its_wall_time(baseline):
    ctx, wall = baseline
    values = scalars(ctx)
    seconds = {name: values[f"phase.{name}.seconds"] for name in PHASES}
    assert all(s >= 0 for s in seconds.values())
    # Each phase this job has took some time: it loads, tokenizes, trains, validates, checkpoints, saves, evaluates.
    assert all(s > 0 for s in seconds.values()), seconds
    assert sum(seconds.values()) <= values["payload.seconds"] <= wall


def test_training_rows_per_second_are_the_rows_trained_over_the_train_phase(baseline):
    ctx, _ = baseline
    values = scalars(ctx)
    rows = min(BATCH, int(values["train.rows"])) * STEPS
    assert values["train.samples_per_s"] == pytest.approx(rows / values["phase.train.seconds"], rel=1e-9)


def test_the_results_summary_carries_the_split_of_the_last_attempt(baseline):
    ctx, _ = baseline
    summary = time_json(scalars(ctx))
    assert set(summary["seconds"]) == set(PHASES)
    assert summary["wall_seconds"] == pytest.approx(sum(summary["seconds"].values()) + summary["other_seconds"])
    assert 0 < summary["train_share"] < 1
    assert time_json({"accuracy": 0.5}) is None and time_split({}) is None


def test_a_nested_phase_pauses_the_outer_one_so_no_second_is_counted_twice():
    phases = Phases()
    start = time.perf_counter()
    with phases("train"):
        time.sleep(0.05)
        with phases("checkpoint"):
            time.sleep(0.05)
        time.sleep(0.05)
    wall = time.perf_counter() - start
    assert phases.seconds["checkpoint"] == pytest.approx(0.05, abs=0.04)
    assert phases.seconds["train"] >= 0.1 and sum(phases.seconds.values()) <= wall
    with pytest.raises(ValueError, match="unknown phase 'sleep'"):
        with phases("sleep"):
            pass


def test_a_batch_cut_from_texts_tokenized_once_equals_the_batch_tokenized_alone(clinc_subset, tiny_bert):
    dataset = load_folder(clinc_subset)
    _, tokenizer = load_classifier(str(tiny_bert), dataset.labels)
    texts = dataset.train.texts
    tokens = Pretokenized(tokenizer, texts, max_length=12, device="cpu")  # 12 truncates the longest rows
    lengths = [len(tokenizer(t)["input_ids"]) for t in texts]
    shortest, longest = lengths.index(min(lengths)), lengths.index(max(lengths))
    for indices in ([0, 5, 9], [shortest], [shortest, longest], list(range(len(texts)))[::7]):
        alone = encode(tokenizer, [texts[i] for i in indices], max_length=12, device="cpu")
        cut = tokens.batch(indices)
        assert cut.keys() == alone.keys()
        for key in alone:
            assert cut[key].dtype == alone[key].dtype and cut[key].tolist() == alone[key].tolist(), key
