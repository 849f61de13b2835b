"""The fleet's rows: workers and their signs of life, the upkeep lease, rejected messages, preemption requests.

Each change is one statement (an upsert, a guarded UPDATE); none of them moves money.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from sqlalchemy import insert, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from models.closing import jobs_t, utcnow
from models.schema import Lease, RejectedMessage, WorkerRow


def register_worker(
    s: Session, *, name: str, host: str, price_micros_per_hour: int, spot: bool, instance_type: str, slots: int
) -> None:
    """Insert or refresh this worker's row (an upsert: one statement on either database)."""
    now = utcnow()
    values = dict(
        name=name, host=host, price_micros_per_hour=price_micros_per_hour, spot=spot,
        instance_type=instance_type, slots=slots, started_at=now, last_seen=now,
    )
    dialect_insert = postgresql.insert if s.get_bind().dialect.name == "postgresql" else sqlite.insert
    stmt = dialect_insert(WorkerRow).values(**values)
    refreshed = {k: stmt.excluded[k] for k in values if k not in ("name", "started_at")}
    s.execute(stmt.on_conflict_do_update(index_elements=[WorkerRow.name], set_=refreshed))


def touch_worker(s: Session, *, name: str) -> None:
    s.execute(update(WorkerRow.__table__).where(WorkerRow.name == name).values(last_seen=utcnow()))


def acquire_lease(s: Session, *, name: str, holder: str, seconds: float) -> bool:
    """Take or renew the named lease for ``holder`` if it is free, expired or already theirs.

    One guarded UPDATE (or the first INSERT), so two workers never both hold it; works the same on
    SQLite and PostgreSQL, unlike advisory locks.
    """
    now = utcnow()
    until = now + timedelta(seconds=seconds)
    leases_t = Lease.__table__
    taken = s.execute(
        update(leases_t)
        .where(leases_t.c.name == name, (leases_t.c.holder == holder) | (leases_t.c.expires_at < now))
        .values(holder=holder, expires_at=until)
    ).rowcount
    if taken:
        return True
    try:
        with s.begin_nested():
            s.execute(insert(leases_t).values(name=name, holder=holder, expires_at=until))
    except IntegrityError:
        return False  # someone else holds it
    return True


def release_lease(s: Session, *, name: str, holder: str) -> None:
    """Give the lease up early (a worker shutting down), so another can take it at once."""
    leases_t = Lease.__table__
    s.execute(update(leases_t).where(leases_t.c.name == name, leases_t.c.holder == holder).values(expires_at=utcnow() - timedelta(seconds=1)))


def record_rejected(s: Session, *, rows: Sequence[dict[str, Any]]) -> None:
    """Append queue messages a worker acknowledged without running them, with the reason."""
    if rows:
        s.execute(insert(RejectedMessage), [dict(r) for r in rows])


def request_preemption(s: Session, *, worker: str) -> int:
    """Tell every attempt ``worker`` runs to checkpoint and stop: its machine is being reclaimed.

    The worker signals its pool processes directly; this is the fallback its heartbeats read.
    Returns how many running attempts were told.
    """
    done = s.execute(
        update(jobs_t).where(jobs_t.c.worker == worker, jobs_t.c.status == "running").values(preempt_requested=True)
    )
    return done.rowcount or 0
