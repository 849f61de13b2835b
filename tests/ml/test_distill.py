"""Distillation: a smaller student cut from a baseline, trained on its outputs and internals, measured
beside it (CPU fp32 and int8 through ONNX Runtime), stored like any model."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.errors import BudgetStop

BASELINE = {"steps": 40, "lr": 5e-3, "batch_size": 32, "checkpoint_every": 40, "latency_samples": 3}
DISTILL = {"layers": 1, "sample_fraction": 0.25, "batch_size": 16, "lr": 5e-3, "latency_samples": 3,
           "speed_rounds": 2, "epochs": 12, "patience": 2, "serving_batch": 8}


@pytest.fixture(scope="module")
def teacher(tmp_path_factory, clinc_subset, run_job):
    """A settled baseline job with a 2-layer tiny BERT: a teacher with a layer to drop."""
    from worker.ml.data import load_folder
    from worker.ml.modeling import build_tiny_bert

    texts = load_folder(clinc_subset).train.texts
    bert = build_tiny_bert(texts, tmp_path_factory.mktemp("teacher_bert"), hidden=32, layers=2, vocab_size=400)
    root, history = tmp_path_factory.mktemp("distill"), []
    run_job(root, "baseline", {**BASELINE, "dataset": str(clinc_subset), "model": str(bert)}, history)
    return root, history


@pytest.fixture(scope="module")
def distilled(teacher, run_job):
    root, history = teacher
    return run_job(root, "distill", {**DISTILL, "quantize": True, "model_job": history[0].job_id}, history)


def value(ctx, name: str) -> float:
    return ctx.values(name)[-1].value


def test_the_student_is_smaller_and_both_are_measured_side_by_side(distilled):
    assert value(distilled, "param_count") < value(distilled, "teacher.param_count")
    assert value(distilled, "size_ratio") > 1
    for name in ("accuracy", "macro_f1", "latency_p50_ms", "throughput_per_s", "ood.msp.auroc", "ood.mahalanobis.auroc"):
        assert {name, f"teacher.{name}"} <= {m.name for m in distilled.metrics}
    assert {m.slice for m in distilled.values("slice_f1")} == {m.slice for m in distilled.values("teacher.slice_f1")}
    retained = value(distilled, "accuracy") / value(distilled, "teacher.accuracy")
    assert value(distilled, "accuracy_retained") == pytest.approx(retained)
    # The ratios come from teacher and student timed in alternation, not from two separate evaluations.
    speed = {who: value(distilled, f"speed.{who}.throughput_per_s") for who in ("teacher", "student")}
    assert value(distilled, "improvement") == value(distilled, "throughput_ratio") == pytest.approx(speed["student"] / speed["teacher"])
    accuracy = {who: value(distilled, f"{p}accuracy") for who, p in (("student", ""), ("teacher", "teacher."))}
    assert value(distilled, "overall.accuracy_delta") == pytest.approx(100 * (accuracy["student"] - accuracy["teacher"]))
    assert {"overall.macro_f1_delta", "latency_ratio", "val.accuracy", "teacher.val.accuracy", "val.accuracy_retained"} <= {
        m.name for m in distilled.metrics}


def test_speed_is_logged_at_batch_1_and_at_the_serving_batch_for_each_model(distilled):
    assert value(distilled, "speed.latency_batch") == 1 and value(distilled, "speed.serving_batch") == DISTILL["serving_batch"]
    for who in ("teacher", "student", "int8"):
        assert value(distilled, f"speed.{who}.latency_p50_ms") > 0 and value(distilled, f"speed.{who}.throughput_per_s") > 0
    latency = {who: value(distilled, f"speed.{who}.latency_p50_ms") for who in ("teacher", "student")}
    assert value(distilled, "latency_ratio") == pytest.approx(latency["teacher"] / latency["student"])


def test_the_int8_student_runs_through_onnx_runtime_and_reports_its_accuracy(distilled):
    # int8 weights move the logits a little; on 200 test rows the predictions barely change.
    assert abs(value(distilled, "int8.accuracy") - value(distilled, "accuracy")) <= 0.05
    assert 0 < value(distilled, "int8.size_bytes")
    assert "model.onnx" not in {p.name for p in Path(distilled.artifacts["model"]).iterdir()}  # not the stored artifact


def test_the_intermediate_loss_terms_are_logged_each_step(distilled):
    steps = len(distilled.values("distill.loss"))
    for term in ("soft", "hard", "hidden", "attention"):
        assert len(distilled.values(f"distill.loss.{term}")) == steps


def test_the_speed_gain_is_logged_with_the_accuracy_it_cost_and_no_bootstrap_interval(distilled):
    for name in ("accuracy", "macro_f1"):
        delta = 100 * (value(distilled, name) - value(distilled, f"teacher.{name}"))
        assert value(distilled, f"overall.{name}_delta") == pytest.approx(delta)
    worse = min(value(distilled, "overall.accuracy_delta"), value(distilled, "overall.macro_f1_delta")) < 0
    assert value(distilled, "tradeoff") == float(value(distilled, "improvement") > 1 and worse)
    assert not distilled.values("improvement.ci_low")  # a speed ratio is not a test-set metric


def test_the_student_trains_on_the_stratified_sample_until_validation_stops_improving(distilled):
    rows = value(distilled, "distill.train_rows")
    assert rows == 100  # a quarter of 40 rows for each of 10 intents
    per_epoch = 7  # 100 rows in batches of 16
    steps = value(distilled, "distill.steps")
    assert len(distilled.values("distill.loss")) == steps <= DISTILL["epochs"] * per_epoch
    assert value(distilled, "distill.epochs_run") == pytest.approx(steps / per_epoch)
    validated = [m.step for m in distilled.values("distill.val_macro_f1")]
    assert validated == list(range(per_epoch, int(steps) + 1, per_epoch))  # once per epoch
    if value(distilled, "distill.stopped_early"):  # patience ran out: it stopped that many validations after the best
        assert steps == value(distilled, "distill.best_step") + DISTILL["patience"] * per_epoch
    else:  # or it kept improving to the cap
        assert steps == DISTILL["epochs"] * per_epoch


def test_the_student_loads_and_evaluates_through_the_baseline_load_path(distilled):
    from worker.ml.evaluate import classification_rows, infer
    from worker.ml.lineage import load_model

    model, tokenizer, _, dataset = load_model(distilled.history[-1], distilled)
    assert model.config.num_hidden_layers == 1
    assert model.config.vocab_size == len(tokenizer) < 400  # pruned to the pieces the corpus uses
    predicted = infer(model, tokenizer, dataset.test.texts).predictions()
    accuracy = classification_rows(dataset, dataset.test, predicted)[0]
    assert accuracy.name == "accuracy" and accuracy.value == pytest.approx(value(distilled, "accuracy"))
    assert (Path(distilled.artifacts["model"]) / "model.safetensors").is_file()


def test_robustness_takes_the_student_as_its_model_job(distilled, teacher, run_job):
    root, history = teacher
    report = run_job(root, "robustness", {"model_job": distilled.job_id, "perturbations": "casing", "max_rows": 30}, history)
    assert report.values("casing.invariance") and report.values("ood.msp.auroc")


def test_a_budget_stop_mid_training_raises_after_logging_partial_metrics(teacher, make_context):
    import specs
    from worker.initiatives import load_payload

    _, history = teacher
    ctx = make_context("distill", history=list(history), stop_after_steps=2)
    with pytest.raises(BudgetStop, match="after step 2"):
        load_payload(specs.get("distill")).run(specs.parse_params("distill", {**DISTILL, "model_job": history[0].job_id}), ctx)
    assert [m.step for m in ctx.values("distill.loss")] == [1, 2]
    assert ctx.values("teacher.accuracy") and "model" not in ctx.artifacts
