"""The ledger's state changes, on SQLite and on PostgreSQL."""

from datetime import timedelta

import pytest
from sqlalchemy import func, select, text, update
from sqlalchemy.exc import IntegrityError

from models import endings, ledger, queries, spend, views
from core.errors import BudgetExhausted, ClaimRefused, LeaseLost, NotFound
from core.status import StopReason
from models.schema import Budget, LedgerEntry


def admit(store, estimate=100_000, budget="b", **kw):
    with store.session() as s:
        job, _ = ledger.admit_job(
            s, budget=budget, initiative="calibrate", queue="calibrate", params={}, estimate_micros=estimate,
            max_attempts=kw.pop("max_attempts", 3), **kw,
        )
    return job


def claim(store, job, worker="w1"):
    with store.session() as s:
        return ledger.claim_job(s, job_id=job.id, worker=worker, lease_seconds=30)


def settle(store, job, attempt=1, status="succeeded", cost=10_000, worker="w1"):
    with store.session() as s:
        return ledger.settle_job(s, job_id=job.id, attempt=attempt, worker=worker, status=status, cost_micros=cost)


def budget(store, name="b"):
    with store.session() as s:
        return queries.get_budget(s, name=name)


def assert_audit_clean(store):
    with store.session() as s:
        assert queries.audit(s) == []


@pytest.fixture
def funded(store):
    with store.session() as s:
        spend.create_budget(s, name="b", total_micros=1_000_000)
    return store


def test_admission_reserves_the_estimate_and_refuses_what_does_not_fit(funded):
    for _ in range(3):
        admit(funded, estimate=300_000)
    with pytest.raises(BudgetExhausted, match=r"\$0.10 left"):
        admit(funded, estimate=300_000)
    assert budget(funded).reserved_micros == 900_000
    assert_audit_clean(funded)


def test_the_same_idempotency_key_returns_the_same_job_and_reserves_once(funded):
    first = admit(funded, idempotency_key="nightly")
    again = admit(funded, idempotency_key="nightly")
    assert again.id == first.id
    assert budget(funded).reserved_micros == 100_000


def test_an_unknown_budget_is_not_found(funded):
    with pytest.raises(NotFound, match="budget create"):
        admit(funded, budget="nope")


def test_a_second_claim_of_the_same_job_is_refused(funded):
    job = admit(funded)
    assert claim(funded, job).attempt == 1
    with pytest.raises(ClaimRefused, match="running"):
        claim(funded, job, worker="w2")


def test_settlement_charges_the_cost_releases_the_rest_and_is_idempotent(funded):
    job = admit(funded, estimate=100_000)
    claim(funded, job)
    first = settle(funded, job, cost=30_000)
    second = settle(funded, job, cost=30_000)
    assert (first.charge_micros, first.release_micros, first.replayed) == (30_000, 70_000, False)
    assert second.replayed and second.charge_micros == 30_000
    b = budget(funded)
    assert (b.spent_micros, b.reserved_micros) == (30_000, 0)
    with funded.session() as s:
        charges = s.scalar(select(func.count()).select_from(LedgerEntry).where(LedgerEntry.kind == "charge"))
    assert charges == 1
    assert_audit_clean(funded)


def test_a_job_is_never_charged_more_than_its_reservation(funded):
    job = admit(funded, estimate=50_000)
    claim(funded, job)
    closed = settle(funded, job, status="budget_stopped", cost=999_999)
    assert closed.charge_micros == 50_000
    assert budget(funded).spent_micros == 50_000
    assert_audit_clean(funded)


def test_heartbeat_asks_to_stop_once_the_reservation_is_metered(funded):
    job = admit(funded, estimate=50_000)
    claim(funded, job)
    with funded.session() as s:
        assert not ledger.heartbeat(s, job_id=job.id, attempt=1, worker="w1", metered_micros=10, lease_seconds=30).stop
        beat = ledger.heartbeat(s, job_id=job.id, attempt=1, worker="w1", metered_micros=60_000, lease_seconds=30)
    assert beat == views.Beat(StopReason.BUDGET)
    with funded.session() as s:
        assert queries.get_job(s, job_id=job.id).metered_micros == 50_000  # capped in SQL


def test_an_expired_lease_is_charged_to_its_last_heartbeat_and_requeued(funded):
    job = admit(funded, estimate=100_000)
    claim(funded, job)
    with funded.session() as s:
        ledger.heartbeat(s, job_id=job.id, attempt=1, worker="w1", metered_micros=12_345, lease_seconds=30)
    with funded.session() as s:
        assert endings.reap_expired(s) == []  # the lease still holds
        reaped = endings.reap_expired(s, now=ledger.utcnow() + timedelta(seconds=31))
    assert [(r.status, r.charge_micros, r.release_micros) for r in reaped] == [("requeued", 12_345, 0)]
    with pytest.raises(LeaseLost):
        settle(funded, job, cost=20_000)  # the dead worker's late settlement moves no money
    assert claim(funded, job, worker="w2").attempt == 2
    settle(funded, job, attempt=2, worker="w2", cost=1_000)
    with funded.session() as s:
        final = queries.get_job(s, job_id=job.id)
    assert (final.status, final.charged_micros, final.reserved_micros) == ("succeeded", 13_345, 0)
    assert_audit_clean(funded)


def test_the_last_attempt_fails_when_its_lease_expires(funded):
    job = admit(funded, max_attempts=1)
    claim(funded, job)
    with funded.session() as s:
        (reaped,) = endings.reap_expired(s, now=ledger.utcnow() + timedelta(hours=1))
    assert reaped.status == "failed"
    assert budget(funded).reserved_micros == 0


def test_cancelling_a_queued_job_releases_it_and_its_dependents(funded):
    first = admit(funded)
    second = admit(funded, after=[first.id])
    with funded.session() as s:
        assert endings.cancel_job(s, job_id=first.id).status == "cancelled"
        assert queries.get_job(s, job_id=second.id).status == "cancelled"
    assert budget(funded).reserved_micros == 0
    assert_audit_clean(funded)


def test_a_job_cannot_be_claimed_before_its_dependency_succeeds(funded):
    first = admit(funded)
    second = admit(funded, after=[first.id])
    with funded.session() as s:
        assert [j.id for j in ledger.ready_to_publish(s)] == [first.id]
    with pytest.raises(ClaimRefused, match="dependencies"):
        claim(funded, second)
    claim(funded, first)
    settle(funded, first)
    assert claim(funded, second).attempt == 1


def test_cancelling_a_running_job_tells_its_heartbeat_to_stop(funded):
    job = admit(funded)
    claim(funded, job)
    with funded.session() as s:
        assert endings.cancel_job(s, job_id=job.id).status == "running"
        beat = ledger.heartbeat(s, job_id=job.id, attempt=1, worker="w1", metered_micros=1, lease_seconds=30)
    assert beat == views.Beat(StopReason.CANCEL)


def test_the_check_constraint_refuses_an_overspend_written_by_hand(funded):
    with pytest.raises(IntegrityError):
        with funded.session() as s:
            s.execute(update(Budget).values(spent_micros=Budget.total_micros + 1))
    assert budget(funded).spent_micros == 0


def test_audit_reports_a_budget_row_that_disagrees_with_its_entries(funded):
    with funded.session() as s:
        s.execute(update(Budget).values(spent_micros=5))
    with funded.session() as s:
        problems = queries.audit(s)
    assert [p.detail for p in problems] == ["spent is 5 but entries sum to 0"]


def test_the_migration_downgrades_and_upgrades_again(store):
    store.downgrade("base")
    with store.engine.connect() as conn:
        tables = set(store.engine.dialect.get_table_names(conn))
    assert "budgets" not in tables and "jobs" not in tables
    store.upgrade()
    store.require_head()
    with store.session() as s:
        assert s.execute(text("SELECT count(*) FROM budgets")).scalar() == 0
