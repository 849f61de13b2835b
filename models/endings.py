"""Attempts no worker will settle: expired leases reaped, and jobs cancelled by their users.

Both end attempts with the one closing statement of ``models.closing``; ``next_status`` decides
what a reaped attempt becomes from why it stopped and the attempts its job has used.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, Optional

from sqlalchemy import BigInteger, String, Text, and_, bindparam, literal, select, update
from sqlalchemy.orm import Session

from core.status import Stop, StopReason, describe, next_status
from models.closing import CANCELLED, CLAIMABLE, Closing, close_attempt, jobs_t, utcnow
from models.queries import get_job
from models.schema import Job, WorkerRow
from models.views import Closed, JobView


_workers_t = WorkerRow.__table__
_EXPIRED = (
    select(
        jobs_t.c.id, jobs_t.c.attempts, jobs_t.c.preemptions, jobs_t.c.max_attempts, jobs_t.c.reserved_micros,
        jobs_t.c.metered_micros, jobs_t.c.cancel_requested, jobs_t.c.worker, jobs_t.c.started_at, jobs_t.c.lease_until,
        _workers_t.c.price_micros_per_hour, _workers_t.c.slots, _workers_t.c.last_seen,
    )
    .select_from(jobs_t.outerjoin(_workers_t, _workers_t.c.name == jobs_t.c.worker))
    .where(jobs_t.c.status == "running", jobs_t.c.lease_until < bindparam("expired_before", type_=jobs_t.c.lease_until.type))
    .order_by(jobs_t.c.lease_until)
)

_REAP_ONE = Closing.build(
    # Still the attempt that was read, and still expired: a heartbeat that renewed it since wins.
    guard=and_(jobs_t.c.id == bindparam("job_id"), jobs_t.c.attempts == bindparam("attempt"), jobs_t.c.status == "running",
               jobs_t.c.lease_until < bindparam("expired_before", type_=jobs_t.c.lease_until.type)),
    charge=bindparam("charge", type_=BigInteger),
    status=bindparam("new_status", type_=String),
    error=bindparam("error", type_=Text),
    reason=bindparam("reason", type_=String),
    # The dead worker loses the attempt: a late settlement from it is refused (LeaseLost).
    keep_worker=False,
)


def reap_expired(s: Session, *, now: Optional[datetime] = None) -> list[Closed]:
    """Close every running attempt whose lease ran out (its worker died, or stopped reaching us).

    Each is charged from its claim to its last sign of life: its last heartbeat's metered cost,
    or, if later, its worker's last ``last_seen`` (within the lease) at that worker's price, so an
    attempt killed before its first heartbeat still pays for the time it ran. ``next_status``
    decides what follows, from why it stopped (a cancel, a spent reservation, or a lost worker)
    and the attempts the job has used.
    """
    expired_before = now or utcnow()
    closed: list[Closed] = []
    for row in s.execute(_EXPIRED, {"expired_before": expired_before}).all():
        charge = _charge_to_last_sign_of_life(row)
        stop = _why_reaped(row, charge)
        status = next_status(stop, attempts=row.attempts, max_attempts=row.max_attempts, preemptions=row.preemptions)
        closed += close_attempt(s, _REAP_ONE, {
            "job_id": row.id, "attempt": row.attempts, "expired_before": expired_before, "charge": charge,
            "new_status": status.value, "error": describe(stop), "reason": stop.reason.value,
        })
    return closed


def _charge_to_last_sign_of_life(row: Any) -> int:
    """The larger of the metered cost and price x (last sign of life - claim) / slots, capped at the reservation."""
    charge = row.metered_micros
    if row.price_micros_per_hour is not None and row.last_seen is not None and row.started_at is not None:
        alive_until = min(row.last_seen, row.lease_until)
        elapsed_us = (alive_until - row.started_at) // timedelta(microseconds=1)
        if elapsed_us > 0:
            charge = max(charge, row.price_micros_per_hour * elapsed_us // (3_600_000_000 * max(1, row.slots)))
    return min(charge, row.reserved_micros)


def _why_reaped(row: Any, charge: int) -> Stop:
    if row.cancel_requested:
        return Stop(StopReason.CANCEL, "its worker stopped heartbeating after the cancel")
    if charge >= row.reserved_micros:
        return Stop(StopReason.BUDGET, "lease expired after the reservation was spent")
    return Stop(StopReason.LOST, f"worker {row.worker or '?'} stopped heartbeating")


_CANCEL_QUEUED = Closing.build(
    guard=and_(jobs_t.c.id == bindparam("job_id"), jobs_t.c.status.in_(CLAIMABLE)),
    charge=literal(0, BigInteger), status=literal(CANCELLED, String), error=literal(describe(Stop(StopReason.CANCEL)), Text),
    reason=literal(StopReason.CANCEL.value, String),
)


def cancel_job(s: Session, *, job_id: str) -> JobView:
    """Cancel a job: a queued one releases its reservation now; a running one is told to stop."""
    close_attempt(s, _CANCEL_QUEUED, {"job_id": job_id})
    s.execute(
        update(jobs_t).where(Job.id == job_id, Job.status == "running").values(cancel_requested=True, updated_at=utcnow())
    )
    return get_job(s, job_id=job_id)
