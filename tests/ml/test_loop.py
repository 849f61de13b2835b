"""The improvement loop: baseline -> robustness -> augment, each reading what the previous one settled."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.errors import PermanentError
from worker.ml.data import load_folder

# A 1-layer, 64-wide BERT learns the 10 intents to ~0.9 accuracy in 150 steps at this rate.
BASELINE = {"steps": 150, "lr": 5e-3, "batch_size": 32, "checkpoint_every": 50, "latency_samples": 5}
AUGMENT = {"k": 2, "variants": 1, "steps": 20, "lr": 1e-3, "checkpoint_every": 10}


@pytest.fixture(scope="module")
def chain(tmp_path_factory, clinc_subset, tiny_bert, run_job):
    """Run the three initiatives in order, as the worker would after `budgetq submit --after`."""
    root, history = tmp_path_factory.mktemp("chain"), []
    baseline = run_job(root, "baseline", {**BASELINE, "dataset": str(clinc_subset), "model": str(tiny_bert)}, history)
    robustness = run_job(root, "robustness", {"max_rows": 120, "model_job": baseline.job_id}, history)
    augment = run_job(root, "augment", {**AUGMENT, "mlm_path": str(tiny_bert), "model_job": baseline.job_id}, history)
    return baseline, robustness, augment


def test_baseline_stores_a_safetensors_model_and_logs_its_full_evaluation(chain):
    baseline, _, _ = chain
    folder = Path(baseline.artifacts["model"])
    assert {p.name for p in folder.iterdir()} >= {"model.safetensors", "config.json", "labels.json", "dataset.json"}
    assert len(json.loads((folder / "labels.json").read_text())) == 10
    assert baseline.values("accuracy")[0].value > 0.5  # it learned: chance is 0.1
    assert {m.slice for m in baseline.values("slice_f1")} == {"banking", "travel", "kitchen_and_dining"}
    assert {m.value for m in baseline.values("slice_support")} == {80.0, 60.0}
    names = {m.name for m in baseline.metrics}
    for method in ("msp", "mahalanobis"):
        assert {f"ood.{method}.{k}" for k in ("auroc", "fpr95", "in_scope_accuracy", "oos_recall")} <= names
    assert {"latency_p50_ms", "throughput_per_s", "param_count", "size_bytes"} <= names


def test_robustness_logs_drops_invariance_and_failures_per_perturbation_and_slice(chain):
    _, robustness, _ = chain
    drops = robustness.values("synonym.accuracy_drop")
    assert {m.slice for m in drops} == {None, "banking", "travel", "kitchen_and_dining"}
    # Casing cannot change what an uncased model reads: CheckList's INV holds exactly.
    assert all(m.value == 1.0 for m in robustness.values("casing.invariance"))
    assert any(m.value < 1.0 for m in robustness.values("keyboard.invariance"))
    failures = robustness.failures
    assert failures and {f.perturbation for f in failures} <= set(json.loads(
        Path(robustness.artifacts["report"]).read_text())["perturbations"])
    assert all(f.expected != f.predicted for f in failures)
    assert {m.value for m in robustness.values("weakness_rank")} == {1.0, 2.0, 3.0}


def test_augment_targets_the_slices_robustness_ranked_weakest(chain):
    baseline, robustness, augment = chain
    ranks = {m.slice: m.value for m in robustness.values("weakness_rank")}
    worst_two = sorted(ranks, key=ranks.get)[:2]
    assert [m.slice for m in augment.values("targeted_rank")] == worst_two
    assert augment.values("targets_from_robustness")[0].value == 1.0
    report = json.loads(Path(robustness.artifacts["report"]).read_text())
    assert report["model_job"] == baseline.job_id and report["ranking"][:2] == worst_two


def test_augment_logs_generated_duplicates_and_kept_per_slice_and_augmenter(chain):
    _, _, augment = chain
    targeted = {m.slice for m in augment.values("targeted_rank")}
    for name in ("char_noise", "word_noise", "synonym", "style", "contextual"):
        rows = {m.slice: m.value for m in augment.values(f"aug.{name}.generated")}
        assert set(rows) == targeted and all(v > 0 for v in rows.values())
        for group in targeted:
            generated, duplicates, kept = (
                next(m.value for m in augment.values(f"aug.{name}.{k}") if m.slice == group)
                for k in ("generated", "duplicates", "kept")
            )
            assert generated == duplicates + kept
    total = sum(m.value for m in augment.metrics if m.name.endswith(".kept") and m.slice)
    assert augment.values("aug.kept")[0].value == total > 0


def test_augment_compares_equal_compute_arms_and_logs_improvement_in_points(chain):
    _, _, augment = chain
    # Same steps for both arms: the difference is the data, not the compute.
    assert len(augment.values("control.loss")) == len(augment.values("augmented.loss")) == AUGMENT["steps"]
    f1 = {arm: augment.values(f"{arm}.targeted_f1")[0].value for arm in ("baseline", "control", "augmented")}
    assert all(0 <= v <= 1 for v in f1.values())
    assert augment.values("improvement")[0].value == pytest.approx(100 * (f1["augmented"] - f1["control"]))
    assert {m.name for m in augment.metrics} >= {"baseline.macro_f1", "control.macro_f1", "augmented.macro_f1"}
    assert (Path(augment.artifacts["model"]) / "model.safetensors").is_file()


def test_augment_logs_the_standard_improvement_rows_beside_the_cost_outside_its_targets(chain):
    _, _, augment = chain
    value = {m.name: m.value for m in augment.metrics if m.slice is None and m.step is None}
    assert value["improvement.ci_low"] <= value["improvement"] <= value["improvement.ci_high"]
    for name in ("accuracy", "macro_f1"):
        assert value[f"overall.{name}_delta"] == pytest.approx(100 * (value[f"augmented.{name}"] - value[f"control.{name}"]))
    gained, lost = value["improvement"] > 0, min(value["overall.accuracy_delta"], value["overall.macro_f1_delta"]) < 0
    assert value["tradeoff"] == float(gained and lost)
    assert "rest.accuracy_delta" in value
    # Targeted F1 counted on the targeted rows only can only be as high or higher: it ignores false positives.
    for arm in ("control", "augmented"):
        assert value[f"{arm}.targeted_f1_rows_only"] >= value[f"{arm}.targeted_f1"] - 1e-9


def count_reads(monkeypatch, dataset) -> dict[str, int]:
    """How often inference reads the whole test and validation splits, counted as the job runs."""
    from worker.ml import evaluate

    reads = {"test": 0, "val": 0}
    real_infer = evaluate.infer

    def counting_infer(model, tokenizer, texts, **kw):
        for split in reads:
            reads[split] += tuple(texts) == getattr(dataset, split).texts
        return real_infer(model, tokenizer, texts, **kw)

    monkeypatch.setattr(evaluate, "infer", counting_infer)
    return reads


def test_augment_reads_test_once_per_model_and_its_arms_share_one_step_cap_and_validation_cadence(chain, tmp_path, run_job, monkeypatch):
    baseline, _, _ = chain
    history = [r for r in baseline.history if r.initiative == "baseline"]  # no robustness report: rank on validation
    reads = count_reads(monkeypatch, load_folder(Path(baseline.params["dataset"])))
    # Up to 2 epochs of the augmented data (400 rows + about 40 variants, batch 32: 14 steps an epoch).
    augment = run_job(tmp_path, "augment", {"k": 1, "epochs": 2, "lr": 1e-3, "augmenters": "style"}, history)
    kept = augment.values("aug.kept")[0].value
    cap = 2 * -(-(400 + kept) // 32)
    for arm in ("control", "augmented"):
        # Both arms: the augmented data's cap, validation once per epoch of the original data (13 steps).
        assert [m.step for m in augment.values(f"{arm}.val_macro_f1")] == [13, 26, cap][: 2 + (cap > 26)]
        assert augment.values(f"{arm}.steps")[0].value == cap and augment.values(f"{arm}.stopped_early")[0].value == 0
    assert reads["test"] == 3  # the stored model, the control arm, the augmented arm: once each
    assert reads["val"] == 1 + 2 * len(augment.values("control.val_macro_f1"))  # ranking the slices, then validations


def test_augment_chooses_its_augmenters_by_trials_scored_on_validation_never_on_test(chain, tmp_path, run_job, monkeypatch):
    baseline, _, _ = chain
    history = [r for r in baseline.history if r.initiative == "baseline"]
    reads = count_reads(monkeypatch, load_folder(Path(baseline.params["dataset"])))
    augment = run_job(tmp_path, "augment", {**AUGMENT, "k": 1, "steps": 2, "augmenters": "char_noise,word_noise", "choose": 1,
                                            "trial_steps": 3, "model_job": baseline.job_id}, history)
    gains = {name: augment.values(f"choice.{name}.val_gain")[0].value for name in ("char_noise", "word_noise")}
    chosen = [name for name in gains if augment.values(f"choice.{name}.chosen")]
    assert len(chosen) == 1 and gains[chosen[0]] == max(gains.values())
    # Each trial ran its 3 steps: the control and one per augmenter.
    assert all(len(augment.values(f"trial.{name}.loss")) == 3 for name in ("control", "char_noise", "word_noise"))
    # Only the chosen augmenter's variants join the augmented arm.
    assert augment.values("aug.kept")[0].value == sum(m.value for m in augment.values(f"aug.{chosen[0]}.kept"))
    assert reads["test"] == 3  # the choice read validation only: test once per final model, as without it
    assert reads["val"] == 1 + 3  # ranking the slices, then one score per trial


def test_without_a_robustness_report_augment_targets_the_lowest_validation_f1_slices(chain, tmp_path, run_job):
    from worker.ml.evaluate import infer, slice_scores
    from worker.ml.modeling import load_saved

    baseline, _, _ = chain
    history = [r for r in baseline.history if r.initiative == "baseline"]
    augment = run_job(tmp_path, "augment", {**AUGMENT, "k": 1, "steps": 2, "augmenters": "style", "model_job": baseline.job_id}, history)
    dataset = load_folder(Path(baseline.params["dataset"]))
    model, tokenizer, _ = load_saved(Path(baseline.artifacts["model"]))
    scores = slice_scores(dataset.label_ids(dataset.val), infer(model, tokenizer, dataset.val.texts).predictions(), dataset.val.slices)
    f1 = {name: values[0] for name, values in scores.items()}
    assert [m.slice for m in augment.values("targeted_rank")] == [min(f1, key=lambda s: (f1[s], s))]
    assert augment.values("targets_from_robustness")[0].value == 0.0


def test_a_balanced_augmented_arm_draws_each_label_as_often_as_the_original_data_does(chain, tmp_path, run_job):
    from collections import Counter

    from worker.initiatives.augment import _PriorKept
    from worker.initiatives.augment import Params as AugmentParams

    # Given the original rows plus five variants of every row of one label
    baseline, _, _ = chain
    dataset = load_folder(Path(baseline.params["dataset"]))
    target = dataset.labels[0]
    rows = [i for i, label in enumerate(dataset.train.labels) if label == target]
    augmented = dataset.train.plus(dataset.train.pick(rows * 5))
    sampler = _PriorKept(dataset, augmented, AugmentParams(batch_size=64, seed=3))

    # When 300 micro-batches are drawn
    drawn = Counter(dataset.label_ids(augmented)[i] for m in range(300) for i in sampler.indices(m))

    # Then the targeted label's share stays its share of the original data, and batches replay by number
    share = len(rows) / len(dataset.train)
    assert abs(drawn[dataset.labels.index(target)] / sum(drawn.values()) - share) < 0.25 * share
    assert sampler.indices(7) == sampler.indices(7) and sampler.indices(7) != sampler.indices(8)
    history = [r for r in baseline.history if r.initiative == "baseline"]
    balanced = run_job(tmp_path, "augment", {**AUGMENT, "k": 1, "steps": 2, "augmenters": "style", "balance": True,
                                             "model_job": baseline.job_id}, history)
    assert balanced.values("augmented.steps")[0].value == balanced.values("control.steps")[0].value == 2


def test_robustness_without_a_model_source_says_how_to_name_one(tmp_path, run_job):
    with pytest.raises(PermanentError, match="resubmit it --after the job that stores the model"):
        run_job(tmp_path, "robustness", {}, [])


def test_a_model_job_that_is_not_a_settled_job_of_this_budget_is_refused(tmp_path, run_job):
    with pytest.raises(PermanentError, match="no settled job 'job-42'"):
        run_job(tmp_path, "robustness", {"model_job": "job-42"}, [])
