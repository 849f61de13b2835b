"""How attempts end: the one guarded UPDATE that closes them, and what follows from it.

Settle, reap and cancel each build a ``Closing`` from ``closing_update`` (guard, charge, status,
reason) and run it with ``close_attempt``, which moves the budget and appends the ``charge`` and
``release`` entries the closed rows imply, records the spending thresholds they crossed, and
cancels the jobs whose dependency can no longer succeed.

Portable first: on both databases the closing UPDATE returns its rows and the budget UPDATE and
entry INSERT follow as statements of the same transaction. On PostgreSQL the same three Core
statements also compose into one statement of data-modifying CTEs, used because the ledger
benchmark shows it pays (``models.moves.ONE_STATEMENT_ON_POSTGRES``; bench/ledger.py measures both).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Optional

from sqlalchemy import BigInteger, String, Text, and_, bindparam, case, exists, func, insert, literal, select, union_all, update
from sqlalchemy.orm import Session

from core.status import CLAIMABLE_STATUSES, DEAD_ENDS, FINAL_STATUSES, JobStatus, Stop, StopReason, next_status
from models.moves import ONE_STATEMENT_ON_POSTGRES, append_entries, budgets_t, entries_t, move_budget, moving
from models.schema import Artifact, FailureCase, Job, JobDependency, JobNote, Metric
from models.spend import record_crossings
from models.views import Closed

CLAIMABLE = tuple(s.value for s in CLAIMABLE_STATUSES)
FINAL = tuple(s.value for s in FINAL_STATUSES)
# State changes go through the tables, not the ORM's unit of work: one statement each, no
# identity-map bookkeeping, and nothing loaded into Python to modify.
jobs_t = Job.__table__
NOW = bindparam("now", type_=jobs_t.c.updated_at.type)


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def dialect(s: Session) -> str:
    return s.get_bind().dialect.name


_dep = jobs_t.alias("dep")
_deps_t = JobDependency.__table__


def some_dependency(job_id_column: Any, status_test: Any) -> Any:
    """SQL: the job has a dependency whose status passes ``status_test``."""
    return exists(
        select(1)
        .select_from(_deps_t.join(_dep, _dep.c.id == _deps_t.c.after_job_id))
        .where(_deps_t.c.job_id == job_id_column, status_test)
    )


def deps_unmet(job_id_column: Any) -> Any:
    """SQL: some dependency of the job has not succeeded."""
    return some_dependency(job_id_column, _dep.c.status != "succeeded")


def closing_update(
    *, guard: Any, charge: Any, status: Any, error: Any, reason: Any, keep_worker: bool = True, preempted: Any = None,
    also: Optional[dict[str, Any]] = None,
) -> Any:
    """The one guarded UPDATE that ends attempts, returning what it charged and released.

    Every SET expression reads the row as it was before the UPDATE (SQL semantics on both
    PostgreSQL and SQLite), so ``reserved_micros`` below is the reservation being closed.
    ``also`` sets more columns in the same statement (settle records where the attempt ran).
    ``preempted`` (1 or 0) adds the attempt to ``preemptions``: it then costs the job no attempt.
    """
    charged = case((jobs_t.c.reserved_micros < charge, jobs_t.c.reserved_micros), else_=charge)
    final = status.in_(FINAL)
    return (
        update(jobs_t)
        .where(guard)
        .values(
            status=status,
            charged_micros=jobs_t.c.charged_micros + charged,
            reserved_micros=case((final, 0), else_=jobs_t.c.reserved_micros - charged),
            last_charge_micros=charged,
            last_release_micros=case((final, jobs_t.c.reserved_micros - charged), else_=0),
            metered_micros=0,
            checkpoint_micros=0,
            preempt_requested=False,
            **({} if preempted is None else {"preemptions": jobs_t.c.preemptions + preempted}),
            lease_until=None,
            error=error,
            stop_reason=reason,
            worker=jobs_t.c.worker if keep_worker else None,
            finished_at=case((final, NOW), else_=None),
            updated_at=NOW,
            **(also or {}),
        )
        .returning(jobs_t.c.id, jobs_t.c.budget_id, jobs_t.c.attempts, jobs_t.c.status,
                   jobs_t.c.last_charge_micros, jobs_t.c.last_release_micros)
    )


def _with_budget_and_entries(closing: Any) -> Any:
    """PostgreSQL: the closing UPDATE, the budget UPDATE and the entries as one statement."""
    closed = closing.cte("closed")
    per_budget = (
        select(closed.c.budget_id, func.sum(closed.c.last_charge_micros).label("charge"),
               func.sum(closed.c.last_release_micros).label("release"))
        .group_by(closed.c.budget_id)
        .cte("per_budget")
    )
    moved = moving(budgets_t.c.id == per_budget.c.budget_id, charge=per_budget.c.charge, release=per_budget.c.release).cte("moved")

    def entries(kind: str, amount):
        return select(closed.c.budget_id, closed.c.id, closed.c.attempts, literal(kind, String), amount, NOW)

    rows = union_all(
        entries("charge", closed.c.last_charge_micros),
        entries("release", closed.c.last_release_micros).where(closed.c.status.in_(FINAL)),
    )
    appended = insert(entries_t).from_select(
        ["budget_id", "job_id", "attempt", "kind", "amount_micros", "created_at"], rows
    ).cte("appended")
    return select(closed).add_cte(moved, appended)


@dataclass(frozen=True)
class Closing:
    """An attempt-closing statement in its two forms: alone (portable) and with its effects (PostgreSQL)."""

    alone: Any
    with_effects: Any

    @classmethod
    def build(cls, **kw: Any) -> "Closing":
        closing = closing_update(**kw)
        return cls(closing, _with_budget_and_entries(closing))


def close_attempt(s: Session, closing: Closing, params: dict[str, Any]) -> list[Closed]:
    """Run a closing statement; move the budget and append the entries its rows imply.

    The portable path runs them as the statements after it, in the same transaction; on PostgreSQL,
    where the single statement pays, they ride in it (``ONE_STATEMENT_ON_POSTGRES``).
    """
    now = utcnow()
    params = {**params, "now": now}
    if "close" in ONE_STATEMENT_ON_POSTGRES and dialect(s) == "postgresql":
        rows = s.execute(closing.with_effects, params).all()
    else:
        rows = s.execute(closing.alone, params).all()
        for row in rows:
            move_budget(s, budget_id=row.budget_id, charge=row.last_charge_micros, release=row.last_release_micros)
        append_entries(s, [entry for row in rows for entry in _entries_of(row, now)])
    closed = _with_crossings(s, [Closed(r.id, r.attempts, r.status, r.last_charge_micros, r.last_release_micros) for r in rows],
                             {r.id: r.budget_id for r in rows})
    if any(c.status in FINAL and c.status != JobStatus.SUCCEEDED for c in closed):
        cancel_orphans(s)
    return closed


def _entries_of(row: Any, now: datetime) -> list[dict[str, Any]]:
    """The closed attempt's charge entry, and its release entry if the job is done."""
    amounts = [("charge", row.last_charge_micros)] + ([("release", row.last_release_micros)] if row.status in FINAL else [])
    return [dict(budget_id=row.budget_id, job_id=row.id, attempt=row.attempts, kind=kind, amount_micros=amount, created_at=now)
            for kind, amount in amounts]


def _with_crossings(s: Session, closed: list[Closed], budget_of: dict[str, int]) -> list[Closed]:
    """Record the spending thresholds these charges crossed, each on the close that crossed it."""
    seen: set[int] = set()
    out = []
    for c in closed:
        budget_id = budget_of[c.job_id]
        if c.charge_micros > 0 and budget_id not in seen:
            seen.add(budget_id)
            crossed = record_crossings(s, budget_id=budget_id, job_id=c.job_id)
            c = dataclasses.replace(c, crossed=tuple(crossed)) if crossed else c
        out.append(c)
    return out


def write_results(s: Session, *, job_id: str, attempt: int, metrics, artifacts, failures, notes=()) -> None:
    now = utcnow()
    metric_rows = [
        dict(job_id=job_id, attempt=attempt, name=m.name, value=float(m.value), slice=m.slice, step=m.step, created_at=now)
        for m in metrics
    ]
    artifact_rows = [
        dict(job_id=job_id, attempt=attempt, name=a.name, uri=a.uri, sha256=a.sha256, bytes=a.bytes, created_at=now)
        for a in artifacts
    ]
    failure_rows = [
        dict(job_id=job_id, attempt=attempt, perturbation=f.perturbation, slice=f.slice, text=f.text,
             expected=f.expected, predicted=f.predicted)
        for f in failures
    ]
    note_rows = [dict(job_id=job_id, attempt=attempt, text=text, created_at=now) for text in notes]
    for model, rows in ((Metric, metric_rows), (Artifact, artifact_rows), (FailureCase, failure_rows), (JobNote, note_rows)):
        if rows:
            s.execute(insert(model), rows)


# A job that never started has no attempt to count; next_status still decides what a cancel means.
CANCELLED = next_status(Stop(StopReason.CANCEL), attempts=0, max_attempts=1).value
_CANCEL_ORPHANS = Closing.build(
    guard=and_(
        jobs_t.c.status.in_(CLAIMABLE),
        some_dependency(jobs_t.c.id, _dep.c.status.in_([s.value for s in DEAD_ENDS])),
    ),
    charge=literal(0, BigInteger), status=literal(CANCELLED, String), error=literal("a dependency did not succeed", Text),
    reason=literal(StopReason.CANCEL.value, String),
)


def cancel_orphans(s: Session) -> list[Closed]:
    """Cancel queued jobs whose dependency ended without success, down the whole chain."""
    # _close_attempt calls back here when it cancels something, which walks the chain.
    return close_attempt(s, _CANCEL_ORPHANS, {})
