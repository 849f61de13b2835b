"""Steering the spend, on SQLite and PostgreSQL: top-ups, resuming a budget-stopped job, thresholds,
and the cost forecasts' arithmetic. Every change to a budget is one guarded statement and the audit
stays clean."""

from contextlib import contextmanager
from datetime import timedelta

import pytest
from sqlalchemy import event, func, select

from core.errors import BudgetExhausted, InvalidInput, NotFound
from core.money import format_share, parse_share
from models import endings, ledger, queries, spend
from models.history import CostPoint
from models.schema import BudgetEvent, LedgerEntry
from models.views import Usage
from producer.forecast import forecast, work_size
from tests.test_cli_errors import snapshot
from tests.test_ledger import admit, assert_audit_clean, budget, claim, settle
from worker.context import MetricRow
from worker.usage import work_steps


@pytest.fixture
def funded(store):
    with store.session() as s:
        spend.create_budget(s, name="b", total_micros=1_000_000)
    return store


@contextmanager
def statements(store):
    """The SQL statements sent inside the block, as text."""
    sent: list[str] = []

    def note(_conn, _cursor, statement, *_args):
        sent.append(" ".join(statement.split()))

    event.listen(store.engine, "before_cursor_execute", note)
    try:
        yield sent
    finally:
        event.remove(store.engine, "before_cursor_execute", note)


def stopped_job(store, estimate=100_000):
    """A job whose reservation ran out: admitted, claimed, settled as budget_stopped."""
    job = admit(store, estimate=estimate)
    claim(store, job)
    settle(store, job, status="budget_stopped", cost=estimate)
    return job


def job(store, job_id):
    with store.session() as s:
        return queries.get_job(s, job_id=job_id)


# --- top-ups ---------------------------------------------------------------------------------


def test_a_topup_adds_to_the_total_in_one_guarded_statement_with_a_fund_entry(funded):
    admit(funded, estimate=900_000)
    with statements(funded) as sent, funded.session() as s:
        after = spend.topup_budget(s, name="b", add_micros=500_000)
    assert (after.total_micros, after.left_micros) == (1_500_000, 600_000)
    moved = [q for q in sent if q.startswith("UPDATE budgets")]
    assert len(moved) == 1 and "total_micros + " in moved[0]
    assert len([q for q in sent if q.startswith("INSERT INTO ledger_entries")]) == 1  # the fund entry, same transaction
    with funded.session() as s:
        funds = s.scalars(select(LedgerEntry.amount_micros).where(LedgerEntry.kind == "fund").order_by(LedgerEntry.id)).all()
    assert funds == [1_000_000, 500_000]
    admit(funded, estimate=600_000)  # the new money is admittable at once
    assert_audit_clean(funded)


def test_a_topup_of_an_unknown_budget_or_of_nothing_or_past_the_largest_budget_changes_nothing(funded):
    with pytest.raises(NotFound, match="budget create"), funded.session() as s:
        spend.topup_budget(s, name="nope", add_micros=1)
    with pytest.raises(InvalidInput, match="more than"), funded.session() as s:
        spend.topup_budget(s, name="b", add_micros=0)
    with pytest.raises(InvalidInput, match="would pass"), funded.session() as s:
        spend.topup_budget(s, name="b", add_micros=spend.MAX_TOTAL_MICROS)
    assert budget(funded).total_micros == 1_000_000
    assert_audit_clean(funded)


# --- resuming --------------------------------------------------------------------------------


def test_resuming_a_budget_stopped_job_reserves_anew_raises_its_estimate_and_queues_it(funded):
    stopped = stopped_job(funded)
    with statements(funded) as sent, funded.session() as s:
        resumed = spend.resume_job(s, job_id=stopped.id, max_attempts=2)
    assert (resumed.status, resumed.reserved_micros, resumed.estimate_micros) == ("admitted", 100_000, 200_000)
    assert (resumed.charged_micros, resumed.attempts, resumed.max_attempts, resumed.error) == (100_000, 1, 3, None)
    reservations = [q for q in sent if q.startswith("UPDATE budgets")]
    assert len(reservations) == 1 and "reserved_micros + " in reservations[0]
    assert (budget(funded).spent_micros, budget(funded).reserved_micros) == (100_000, 100_000)
    with funded.session() as s:
        assert [r.id for r in ledger.ready_to_publish(s)] == [stopped.id]
    assert_audit_clean(funded)
    # The next attempt is attempt 2, charged within the new reservation; the CHECK holds throughout.
    assert claim(funded, resumed).attempt == 2
    settle(funded, resumed, attempt=2, cost=40_000)
    final = job(funded, stopped.id)
    assert (final.status, final.charged_micros, final.reserved_micros, final.estimate_micros) == ("succeeded", 140_000, 0, 200_000)
    assert_audit_clean(funded)


def test_a_resume_takes_the_estimate_given_and_refuses_one_that_does_not_fit(funded):
    stopped = stopped_job(funded)
    admit(funded, estimate=850_000)  # $0.05 left
    with pytest.raises(BudgetExhausted, match=r"\$0.05 left, not enough to resume"), funded.session() as s:
        spend.resume_job(s, job_id=stopped.id, max_attempts=1)
    assert job(funded, stopped.id).status == "budget_stopped"
    assert budget(funded).reserved_micros == 850_000
    with funded.session() as s:
        resumed = spend.resume_job(s, job_id=stopped.id, max_attempts=1, estimate_micros=50_000)
    assert (resumed.reserved_micros, resumed.estimate_micros, budget(funded).left_micros) == (50_000, 150_000, 0)
    assert_audit_clean(funded)


def test_only_a_budget_stopped_job_can_be_resumed_and_only_once(funded):
    stopped = stopped_job(funded)
    done = admit(funded)
    claim(funded, done)
    settle(funded, done)
    with pytest.raises(InvalidInput, match="is succeeded; only a budget_stopped"), funded.session() as s:
        spend.resume_job(s, job_id=done.id, max_attempts=1)
    with pytest.raises(NotFound), funded.session() as s:
        spend.resume_job(s, job_id="ghost", max_attempts=1)
    with funded.session() as s:
        spend.resume_job(s, job_id=stopped.id, max_attempts=1)
    with pytest.raises(InvalidInput, match="is admitted"), funded.session() as s:
        spend.resume_job(s, job_id=stopped.id, max_attempts=1)
    assert budget(funded).reserved_micros == 100_000
    assert_audit_clean(funded)


# --- thresholds ------------------------------------------------------------------------------


def events(store):
    with store.session() as s:
        return [(e.threshold_ppm, e.spent_micros, e.job_id) for e in spend.budget_events(s, budget="b")]


def test_a_settlement_that_crosses_a_threshold_records_it_once_with_its_job(funded):
    with funded.session() as s:
        assert spend.set_thresholds(s, budget="b", thresholds_ppm=[500_000, 800_000]) == []
    jobs = [admit(funded, estimate=300_000) for _ in range(3)] + [admit(funded, estimate=50_000)]
    closes = []
    for j in jobs:
        claim(funded, j)
        closes.append(settle(funded, j, cost=j.estimate_micros))
    assert [[e.threshold for e in c.crossed] for c in closes] == [[], ["50%"], ["80%"], []]
    assert events(funded) == [(500_000, 600_000, jobs[1].id), (800_000, 900_000, jobs[2].id)]
    settle(funded, jobs[3], cost=1)  # a replayed settlement records nothing again
    assert len(events(funded)) == 2


def test_a_threshold_is_crossed_at_exactly_its_share_in_integers_even_for_the_largest_budget(store):
    total = spend.MAX_TOTAL_MICROS - 7  # not a whole number of dollars
    ppm = 333_333
    need = -(-ppm * total // 1_000_000)  # the first spent amount at or above the share, exactly
    with store.session() as s:
        spend.create_budget(s, name="b", total_micros=total)
        spend.set_thresholds(s, budget="b", thresholds_ppm=[ppm])
    below = admit(store, estimate=need - 1)
    claim(store, below)
    assert settle(store, below, cost=need - 1).crossed == ()
    one_more = admit(store, estimate=1)
    claim(store, one_more)
    assert [e.threshold_ppm for e in settle(store, one_more, cost=1).crossed] == [ppm]
    assert events(store) == [(ppm, need, one_more.id)]


def test_a_reaped_attempt_crosses_thresholds_too_and_a_threshold_set_after_the_fact_is_recorded_at_once(funded):
    with funded.session() as s:
        spend.set_thresholds(s, budget="b", thresholds_ppm=[100_000])
    j = admit(funded, estimate=500_000)
    claim(funded, j)
    with funded.session() as s:
        ledger.heartbeat(s, job_id=j.id, attempt=1, worker="w1", metered_micros=200_000, lease_seconds=30)
    with funded.session() as s:
        (reaped,) = endings.reap_expired(s, now=ledger.utcnow() + timedelta(seconds=31))
    assert [e.threshold for e in reaped.crossed] == ["10%"]
    with funded.session() as s:
        late = spend.set_thresholds(s, budget="b", thresholds_ppm=[100_000, 150_000, 900_000])
    assert [(e.threshold_ppm, e.job_id) for e in late] == [(150_000, None)]
    with funded.session() as s:
        assert spend.budget_thresholds(s, budget="b") == [100_000, 150_000, 900_000]
        assert s.scalar(select(func.count()).select_from(BudgetEvent)) == 2
    assert_audit_clean(funded)


def test_settle_records_where_the_attempt_ran_and_a_later_attempt_without_training_keeps_the_steps(funded):
    j = admit(funded)
    claim(funded, j)
    with funded.session() as s:
        ledger.settle_job(s, job_id=j.id, attempt=1, worker="w1", status="requeued", cost_micros=10,
                          usage=Usage("cuda:NVIDIA H100", 250_000, 40))
    claim(funded, j)
    with funded.session() as s:
        ledger.settle_job(s, job_id=j.id, attempt=2, worker="w1", status="succeeded", cost_micros=10,
                          usage=Usage("cpu", 1_000_000, None))
    recorded = job(funded, j.id)
    assert (recorded.device, recorded.rate_micros_per_hour, recorded.work_steps) == ("cpu", 1_000_000, 40)


# --- forecasts and shares: the arithmetic ----------------------------------------------------


def test_one_past_size_scales_in_proportion_and_several_sizes_fit_a_fixed_part_plus_a_part_per_step():
    params = {"steps": 100, "batch_size": 32, "max_rows": 0}
    one = [CostPoint("a", 1_000, {"steps": 50, "batch_size": 32, "max_rows": 0}, None)]
    scaled = forecast(params, one)
    assert (scaled.low_micros, scaled.expected_micros, scaled.high_micros, scaled.method) == (2_000, 2_000, 2_000, "scaled")
    # Cost = 500 fixed + 10 per step, seen at 50 and 150 steps (and once 10% dearer at 100).
    several = [CostPoint(str(n), 500 + 10 * n, {"steps": n, "batch_size": 32}, None) for n in (50, 150)]
    fit = forecast({"steps": 250, "batch_size": 32}, several)
    assert (fit.expected_micros, fit.method, fit.jobs) == (3_000, "fit", 2)
    noisy = forecast({"steps": 250, "batch_size": 32}, several + [CostPoint("c", 1_650, {"steps": 100, "batch_size": 32}, None)])
    assert noisy.low_micros < noisy.expected_micros < noisy.high_micros
    assert forecast(params, []) is None


def test_a_past_job_is_sized_by_the_steps_it_reached_and_sizes_of_zero_mean_no_size():
    stopped_early = CostPoint("a", 1_000, {"steps": 100}, work_steps=25)
    assert forecast({"steps": 100}, [stopped_early]).expected_micros == 4_000
    assert work_size({"steps": 10, "max_rows": 0}, ["steps"]) == 10
    assert work_size({"max_rows": 0}, ["max_rows"]) is None


def test_work_steps_are_the_longest_training_run_from_its_steps_metric_or_its_loss_curve():
    curve = [MetricRow("train.loss", 1.0, step=s) for s in (31, 32, 33)] + [MetricRow("accuracy", 0.5)]
    assert work_steps(curve) == 33
    arms = [MetricRow("control.loss", 1.0, step=10), MetricRow("augmented.loss", 1.0, step=12), MetricRow("augmented.steps", 12)]
    assert work_steps(arms) == 12
    assert work_steps([MetricRow("val_accuracy", 0.3, "top1", step=4)]) is None


@pytest.mark.parametrize("text, ppm, shown", [("0.5", 500_000, "50%"), ("80%", 800_000, "80%"), ("1", 1_000_000, "100%"),
                                              ("12.5%", 125_000, "12.5%"), ("0.000001", 1, "0.0001%")])
def test_a_share_of_a_budget_is_exact_parts_per_million(text, ppm, shown):
    assert parse_share(text) == ppm
    assert format_share(ppm) == shown


@pytest.mark.parametrize("text", ["0", "1.5", "-0.1", "abc", "nan", "0.0000001"])
def test_a_share_outside_zero_to_one_or_finer_than_a_millionth_is_refused(text):
    with pytest.raises(InvalidInput, match="--warn-at"):
        parse_share(text, what="--warn-at")


# --- the commands ----------------------------------------------------------------------------


SPEND_CASES = [
    (["budget", "create", "c", "--total", "1", "--warn-at", "half"], 2, "not a share of the budget"),
    (["budget", "create", "c", "--total", "1", "--warn-at", "1.2"], 2, "at most 1"),
    (["budget", "set", "b"], 2, "needs --warn-at"),
    (["budget", "set", "nope", "--warn-at", "0.5"], 4, "no budget named 'nope'"),
    (["budget", "topup", "nope", "--add", "0.50"], 4, "no budget named 'nope'"),
    (["budget", "topup", "b", "--add", "-1"], 2, "negative"),
    (["budget", "topup", "b", "--add", "0"], 2, "more than $0.00"),
    (["jobs", "resume", "ghost"], 4, "no job 'ghost'"),
    (["jobs", "resume", "ghost", "--estimate", "abc"], 2, "not a dollar amount"),
    (["plan", "run", "missing.yaml", "--dry-run", "--price", "cheap"], 2, "not a dollar amount"),
]


@pytest.mark.parametrize("args, code, says", SPEND_CASES, ids=[" ".join(c[0])[:60] for c in SPEND_CASES])
def test_bad_spend_commands_get_one_line_a_distinct_code_and_change_nothing(embedded, args, code, says):
    embedded.ok("budget", "create", "b", "--total", "1.00")
    db = embedded.vars["DATABASE_URL"].split("///", 1)[1]
    before = snapshot(db)
    done = embedded.cli(*args)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == code, done.stderr
    assert len(lines) == 1 and lines[0].startswith("error: ") and says in lines[0], done.stderr
    assert snapshot(db) == before


def test_budget_commands_show_thresholds_top_ups_and_events(embedded):
    import json

    embedded.ok("budget", "create", "b", "--total", "1.00", "--warn-at", "0.5", "--warn-at", "80%")
    assert "added $0.50; total $1.50, $1.50 left" in embedded.ok("budget", "topup", "b", "--add", "0.50").stdout
    shown = json.loads(embedded.ok("budget", "show", "b", "--json").stdout)
    assert (shown["total"], shown["warn_at"], shown["events"]) == ("1.500000", ["50%", "80%"], [])
    assert "warns at 25%" in embedded.ok("budget", "set", "b", "--warn-at", "25%").stdout
    assert "warns at nothing" in embedded.ok("budget", "set", "b", "--no-warnings").stdout
    assert json.loads(embedded.ok("budget", "audit", "--json").stdout)["ok"]


def test_the_migrations_build_exactly_the_tables_and_columns_the_models_declare(store):
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from models.schema import Base

    with store.engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []


def test_reap_reports_a_threshold_its_charge_crossed(embedded):
    import json

    from models.db import Ledger

    embedded.ok("budget", "create", "b", "--total", "1.00", "--warn-at", "10%")
    job_id = json.loads(embedded.ok("submit", "calibrate", "--budget", "b", "--estimate", "0.50", "--json").stdout)["id"]
    store = Ledger(embedded.vars["DATABASE_URL"])
    with store.session() as s:  # a worker that claimed it, metered $0.20 and died
        ledger.claim_job(s, job_id=job_id, worker="gone", lease_seconds=0.5)
        ledger.heartbeat(s, job_id=job_id, attempt=1, worker="gone", metered_micros=200_000, lease_seconds=0.01)
    (reaped,) = json.loads(embedded.ok("reap", "--json").stdout)["reaped"]
    assert [(e["threshold"], e["spent"], e["job_id"]) for e in reaped["crossed"]] == [("10%", "0.200000", job_id)]
