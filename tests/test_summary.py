"""The answer users act on: improvement per dollar, ranked only within a unit, with its uncertainty."""

import json

import pytest

from core.stats import mean_ci
from models.views import ImprovementRow
from producer.summary import group_of, summarize


def row(job, initiative, key, charged, **metrics):
    return ImprovementRow(job, initiative, "succeeded", charged, key, metrics)


def test_seeds_of_one_plan_entry_form_one_group_with_a_t_interval():
    rows = [row(f"j{k}", "augment", f"plan:p:aug#seed{k}", 100_000, improvement=v, **{"overall.accuracy_delta": 0.5})
            for k, v in enumerate((1.0, 2.0, 3.0))]
    (group,) = summarize(rows)
    assert group.group == "p:aug" and group.jobs == 3 and group.charged_micros == 300_000
    assert group.improvement.mean == pytest.approx(2.0)
    assert group.improvement.half_width == pytest.approx(4.303 * 1.0 / 3 ** 0.5, rel=1e-3)  # t(2) x sd / sqrt(n)
    assert group.per_dollar == pytest.approx(2.0 / 0.1)  # mean gain over one run's cost


def test_units_are_never_ranked_against_each_other():
    rows = [
        row("a", "augment", "plan:p:aug", 100_000, improvement=5.0),  # 50 F1 points per dollar
        row("c", "curriculum", "plan:p:cur", 100_000, improvement=1.0),  # 10 accuracy points per dollar
        row("d", "distill", "plan:p:dis", 10_000, improvement=2.0),  # 200 x-speed per dollar
        row("b", "baseline", "plan:p:base", 50_000),
    ]
    groups = summarize(rows)
    assert [(g.unit and g.unit.value, g.group) for g in groups] == [
        ("accuracy_points", "p:cur"), ("f1_points", "p:aug"), ("speed_ratio", "p:dis"), (None, "p:base")]
    assert groups[-1].improvement is None  # a baseline is the reference, it reports no gain


def test_a_targeted_gain_bought_with_losses_elsewhere_is_flagged_beside_the_overall_change():
    (group,) = summarize([row("a", "augment", None, 10_000, improvement=9.0, tradeoff=1.0,
                              **{"overall.accuracy_delta": -1.5, "overall.macro_f1_delta": -0.7,
                                 "improvement.ci_low": 4.0, "improvement.ci_high": 14.0})])
    assert group.tradeoff and group.accuracy_delta.mean == -1.5 and group.macro_f1_delta.mean == -0.7
    assert (group.improvement.low, group.improvement.high) == (4.0, 14.0)  # the single run's bootstrap CI
    assert group_of(ImprovementRow("x", "augment", "failed", 0, None, {})) == "augment"


def test_failed_runs_cost_counts_against_the_group():
    rows = [row("a", "augment", "plan:p:aug#seed0", 100_000, improvement=4.0),
            ImprovementRow("b", "augment", "failed", 100_000, "plan:p:aug#seed1", {})]
    (group,) = summarize(rows)
    assert (group.jobs, group.succeeded, group.cost_per_run_micros) == (2, 1, 100_000)
    assert group.per_dollar == pytest.approx(4.0 / 0.1)


def test_mean_ci_needs_replicates_for_an_interval():
    assert mean_ci([3.0]).low is None and mean_ci([1.0, 3.0]).excludes_zero() is False


def test_results_defaults_to_the_latest_budget_and_names_it(embedded):
    embedded.ok("budget", "create", "older", "--total", "1.00")
    embedded.ok("budget", "create", "newer", "--total", "1.00")
    embedded.ok("submit", "calibrate", "--budget", "older", "--estimate", "0.01")
    shown = json.loads(embedded.ok("results", "--json").stdout)
    assert shown == {"budget": "newer", "groups": []}
    assert "budget older" in embedded.ok("results", "--budget", "older").stdout
