"""The ledger side of a fleet on spot machines, on SQLite and PostgreSQL: preemptions that cost no
attempt, a reaper that decides through ``next_status`` and charges to the last sign of life, one
upkeep leader, and rejected messages on the record."""

import time
from datetime import timedelta

import pytest
from sqlalchemy import select, update

from core.status import JobStatus, Stop, StopReason
from models import endings, fleet, ledger, queries, views
from models.schema import Job, Preemption, WorkerRow
from tests.test_ledger import admit, assert_audit_clean, budget, claim, funded  # noqa: F401 - funded is a fixture


def settle(store, job, *, attempt, status, cost, stop=None, worker="w1", checkpoint=0):
    with store.session() as s:
        return ledger.settle_job(s, job_id=job.id, attempt=attempt, worker=worker, status=status, cost_micros=cost,
                                 stop=stop, checkpoint_micros=checkpoint)


def get(store, job):
    with store.session() as s:
        return queries.get_job(s, job_id=job.id)


def reap(store, *, after_seconds=31):
    with store.session() as s:
        return endings.reap_expired(s, now=ledger.utcnow() + timedelta(seconds=after_seconds))


def test_a_preempted_attempt_is_charged_its_time_requeued_and_costs_no_attempt(funded):
    job = admit(funded, estimate=100_000, max_attempts=1)
    claim(funded, job)
    closed = settle(funded, job, attempt=1, status=JobStatus.REQUEUED, cost=7_000, stop=Stop(StopReason.PREEMPTION), checkpoint=5_000)
    assert (closed.status, closed.charge_micros, closed.release_micros) == ("requeued", 7_000, 0)
    with funded.session() as s:
        (row,) = s.scalars(select(Preemption)).all()
    assert (row.attempt, row.worker, row.charged_micros, row.lost_micros) == (1, "w1", 7_000, 2_000)
    # Its only attempt is still unused: another worker claims it, and a lost worker then uses it up.
    assert claim(funded, job, worker="w2").attempt == 2
    (reaped,) = reap(funded)
    assert reaped.status == "failed"
    final = get(funded, job)
    assert (final.attempts, final.preemptions, final.charged_micros, final.reserved_micros) == (2, 1, 7_000, 0)
    assert budget(funded).spent_micros == 7_000
    assert_audit_clean(funded)


def test_a_job_preempted_more_times_than_its_attempts_still_runs(funded):
    job = admit(funded, estimate=100_000, max_attempts=2)
    for attempt in range(1, 5):
        claim(funded, job, worker=f"w{attempt}")
        settle(funded, job, attempt=attempt, worker=f"w{attempt}", status=JobStatus.REQUEUED, cost=1_000,
               stop=Stop(StopReason.PREEMPTION))
    claim(funded, job, worker="w5")
    settle(funded, job, attempt=5, worker="w5", status=JobStatus.SUCCEEDED, cost=1_000)
    done = get(funded, job)
    assert (done.status, done.attempts, done.preemptions, done.charged_micros) == ("succeeded", 5, 4, 5_000)
    with funded.session() as s:
        assert queries.preemption_summary(s, budget="b") == views.PreemptionSummary("b", 4, 4_000, 4_000)
    assert_audit_clean(funded)


def test_the_reaper_closes_each_expired_attempt_as_what_it_was(funded):
    cancelled, spent, lost = (admit(funded, estimate=50_000) for _ in range(3))
    for job in (cancelled, spent, lost):
        claim(funded, job)
    with funded.session() as s:
        endings.cancel_job(s, job_id=cancelled.id)
        ledger.heartbeat(s, job_id=spent.id, attempt=1, worker="w1", metered_micros=50_000, lease_seconds=30)
        ledger.heartbeat(s, job_id=lost.id, attempt=1, worker="w1", metered_micros=1_000, lease_seconds=30)
    outcome = {c.job_id: c.status for c in reap(funded)}
    assert outcome == {cancelled.id: "cancelled", spent.id: "budget_stopped", lost.id: "requeued"}
    assert [get(funded, j).stop_reason for j in (cancelled, spent, lost)] == ["cancel", "budget", "lost"]
    assert "cancel" in get(funded, cancelled).error and "heartbeating" in get(funded, lost).error
    assert_audit_clean(funded)


def test_an_attempt_killed_before_its_first_heartbeat_is_charged_to_its_workers_last_sign_of_life(funded):
    # $3.60/hour on one slot is 1000 micro-dollars a second.
    with funded.session() as s:
        fleet.register_worker(s, name="w1", host="h", price_micros_per_hour=3_600_000, spot=True, instance_type="x", slots=1)
    job = admit(funded, estimate=100_000)
    claim(funded, job)
    started = get(funded, job).started_at
    with funded.session() as s:
        s.execute(update(WorkerRow).values(last_seen=started + timedelta(seconds=10)))
    assert get(funded, job).metered_micros == 0  # no heartbeat ever came
    (reaped,) = reap(funded)
    assert (reaped.status, reaped.charge_micros) == ("requeued", 10_000)  # claim -> last_seen, not $0
    assert_audit_clean(funded)


def test_a_reaped_attempt_pays_at_most_up_to_its_lease(funded):
    with funded.session() as s:
        fleet.register_worker(s, name="w1", host="h", price_micros_per_hour=3_600_000, spot=True, instance_type="x", slots=2)
    job = admit(funded, estimate=100_000)
    claim(funded, job)
    view = get(funded, job)
    with funded.session() as s:
        s.execute(update(WorkerRow).values(last_seen=view.started_at + timedelta(hours=1)))
    (reaped,) = reap(funded)
    lease_s = (view.lease_until - view.started_at).total_seconds()
    assert reaped.charge_micros == pytest.approx(1000 * lease_s / 2, abs=1)  # two slots share the price
    assert_audit_clean(funded)


def test_a_heartbeat_passes_on_a_preemption_notice_and_records_the_checkpoint_cost(funded):
    job = admit(funded, estimate=50_000)
    claim(funded, job, worker="spot-1")
    with funded.session() as s:
        assert fleet.request_preemption(s, worker="spot-1") == 1
        beat = ledger.heartbeat(s, job_id=job.id, attempt=1, worker="spot-1", metered_micros=900, lease_seconds=30,
                                checkpoint_micros=600)
    assert beat == views.Beat(StopReason.PREEMPTION)
    with funded.session() as s:
        assert s.scalar(select(Job.checkpoint_micros).where(Job.id == job.id)) == 600
        endings.cancel_job(s, job_id=job.id)
        beat = ledger.heartbeat(s, job_id=job.id, attempt=1, worker="spot-1", metered_micros=950, lease_seconds=30)
    assert beat == views.Beat(StopReason.CANCEL)  # a cancel outranks the preemption


def test_one_worker_at_a_time_holds_the_upkeep_lease(funded):
    def take(holder, seconds=30.0):
        with funded.session() as s:
            return fleet.acquire_lease(s, name="upkeep", holder=holder, seconds=seconds)

    assert take("w1", seconds=0.2) and not take("w2") and take("w1", seconds=0.2)  # held, then renewed
    time.sleep(0.3)
    assert take("w2") and not take("w1")  # expired: the next worker takes over
    with funded.session() as s:
        fleet.release_lease(s, name="upkeep", holder="w2")
    assert take("w1")


def test_every_publish_is_counted_and_rejected_messages_are_kept(funded):
    job = admit(funded)
    for _ in range(3):
        with funded.session() as s:
            ledger.mark_published(s, job_ids=[job.id])
    with funded.session() as s:
        assert s.scalar(select(Job.publications).where(Job.id == job.id)) == 3
        fleet.record_rejected(s, rows=[dict(received_at=ledger.utcnow(), worker="w1", queue="calibrate", task="x",
                                             message_id="m1", content_type="application/x-python-serialize", bytes=12,
                                             reason="content type is not application/json", excerpt="b'\\x80\\x04'")])
    with funded.session() as s:
        (rejected,) = queries.rejected_messages(s)
    assert (rejected.worker, rejected.task, rejected.bytes) == ("w1", "x", 12)


def test_the_audit_notices_a_preemption_count_without_its_records(funded):
    job = admit(funded)
    with funded.session() as s:
        s.execute(update(Job).where(Job.id == job.id).values(attempts=1, preemptions=1))
        problems = queries.audit(s)
    assert [p.detail for p in problems] == ["preemptions is 1 but 0 are recorded"]


def test_the_fleet_audit_reads_who_runs_what_and_what_each_attempt_charged(funded):
    from models import attempts

    done, preempted, waiting = admit(funded, estimate=100_000), admit(funded, estimate=100_000), admit(funded, estimate=100_000)
    claim(funded, done)
    settle(funded, done, attempt=1, status=JobStatus.SUCCEEDED, cost=3_000)
    claim(funded, preempted)
    settle(funded, preempted, attempt=1, status=JobStatus.REQUEUED, cost=2_000, stop=Stop(StopReason.PREEMPTION), checkpoint=500)
    claim(funded, preempted, worker="w2")
    with funded.session() as s:
        assert attempts.running_attempts(s, worker="w2") == [(preempted.id, 2)]
        assert attempts.running_attempts(s, worker="w1") == []
        assert attempts.count_jobs(s, statuses=("admitted", "requeued", "running")) == 2
        audit = attempts.fleet_audit(s)
    outcomes = {j.id: (j.status, j.attempts, j.preemptions, j.charged_micros) for j in audit.jobs}
    assert outcomes == {done.id: ("succeeded", 1, 0, 3_000), preempted.id: ("running", 2, 1, 2_000),
                        waiting.id: ("admitted", 0, 0, 0)}
    assert audit.charges_per_attempt == {(done.id, 1): 1, (preempted.id, 1): 1}
    assert audit.preempted == {(preempted.id, 1)} and audit.rejected_messages == 0
    assert audit.preemptions_by_initiative == {preempted.initiative: (1, 2_000, 1_500)}
