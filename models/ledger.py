"""Every state change of the ledger, each one transaction of guarded statements.

Callers open the transaction (``with ledger.session() as s:``) and pass the session in, so a
plan can admit many jobs all-or-nothing. No function here reads a counter into Python and
writes it back: each change is an ``UPDATE ... WHERE <guard>`` whose missing row means the
transition was not allowed, and every change to a budget appends ledger entries that sum to it.
"""

from __future__ import annotations

import dataclasses
import json
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Optional

from sqlalchemy import (
    BigInteger,
    Integer,
    String,
    Text,
    and_,
    bindparam,
    case,
    exists,
    func,
    insert,
    literal,
    select,
    text,
    union_all,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from core.errors import (
    BudgetExhausted,
    ClaimRefused,
    InvalidInput,
    LeaseLost,
    NotFound,
)
from core.limits import KEY_LENGTH, check_name, check_rank, check_text
from core.money import format_micros
from core.status import CLAIMABLE_STATUSES, DEAD_ENDS, FINAL_STATUSES, JobStatus, Stop, StopReason, describe, next_status
from models.queries import _job_by_key, get_budget, get_job
from models.schema import (
    Artifact,
    Budget,
    FailureCase,
    Job,
    JobDependency,
    JobNote,
    Lease,
    LedgerEntry,
    Metric,
    Preemption,
    RejectedMessage,
    WorkerRow,
)
from models.spend import record_crossings
from models.views import Beat, BudgetView, Claim, Closed, JobView, Ready, Usage

CLAIMABLE = tuple(s.value for s in CLAIMABLE_STATUSES)
FINAL = tuple(s.value for s in FINAL_STATUSES)
# State changes go through the tables, not the ORM's unit of work: one statement each, no
# identity-map bookkeeping, and nothing loaded into Python to modify.
jobs_t, budgets_t, entries_t = Job.__table__, Budget.__table__, LedgerEntry.__table__


def _dialect(s: Session) -> str:
    return s.get_bind().dialect.name


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


# ---------------------------------------------------------------------------------------------
# Budgets


def create_budget(s: Session, *, name: str, total_micros: int) -> BudgetView:
    """Create a budget and its ``fund`` entry. A second budget of the same name is refused."""
    if not name or len(name) > 100 or not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
        raise InvalidInput(f"budget name {name!r} must be 1-100 letters, digits, '-', '_' or '.'")
    now = utcnow()
    try:
        with s.begin_nested():
            budget_id = s.execute(
                insert(Budget)
                .values(name=name, total_micros=total_micros, spent_micros=0, reserved_micros=0, created_at=now)
                .returning(Budget.id)
            ).scalar_one()
    except IntegrityError:
        raise InvalidInput(f"budget {name!r} already exists; pick another name or use it as it is") from None
    _append(s, budget_id=budget_id, job_id=None, attempt=0, kind="fund", amount=total_micros, now=now)
    return BudgetView(budget_id, name, total_micros, 0, 0)


# ---------------------------------------------------------------------------------------------
# Admission


def admit_job(
    s: Session,
    *,
    budget: str,
    initiative: str,
    queue: str,
    params: dict[str, Any],
    estimate_micros: int,
    max_attempts: int,
    idempotency_key: Optional[str] = None,
    rank: int = 0,
    after: Sequence[str] = (),
) -> tuple[JobView, bool]:
    """Reserve ``estimate_micros`` and write the job with its reserve entry.

    Returns ``(job, created)``. With a key already used in this budget, returns that job and
    ``created=False``, reserving nothing. Raises ``BudgetExhausted`` saying what is left. A
    refused admission leaves nothing behind, even inside a caller's larger transaction.
    """
    check_name(queue, what="queue")
    check_rank(rank)
    if idempotency_key is not None:
        check_text(idempotency_key, what="idempotency key", longest=KEY_LENGTH)
    job = dict(
        id=uuid.uuid4().hex, initiative=initiative, queue=queue, params=params, status="admitted", rank=rank,
        estimate_micros=estimate_micros, reserved_micros=estimate_micros, charged_micros=0, metered_micros=0,
        last_charge_micros=0, last_release_micros=0, attempts=0, max_attempts=max_attempts,
        cancel_requested=False, idempotency_key=idempotency_key,
    )
    admit = _admit_in_one_statement if _dialect(s) == "postgresql" else _admit_step_by_step
    created = admit(s, budget=budget, job=job, now=utcnow())
    if not created:
        existing = _job_by_key(s, budget=budget, key=idempotency_key) if idempotency_key is not None else None
        if existing is not None:
            return existing, False
        _raise_exhausted(s, budget=budget, amount=estimate_micros)
    for dep in after:
        _add_dependency(s, job_id=job["id"], after_job_id=dep)
    view = JobView(
        budget=budget, worker=None, lease_until=None, error=None, stop_reason=None, started_at=None, finished_at=None,
        after=tuple(after), created_at=job["created_at"], **{k: v for k, v in job.items() if k in JobView.__dataclass_fields__ and k != "created_at"},
    )
    return view, True


# On PostgreSQL the whole admission is one statement: insert the job if the budget fits (or find
# its key taken), reserve with the guarded UPDATE, and append the reserve entry. Under Read
# Committed the UPDATE re-checks its guard on the latest row, so if a racing admission took the
# money in between, the job row is inserted but nothing is reserved; admit_job then raises and
# the caller's transaction rolls the row back.
_ADMIT_PG = text("""
WITH admitted AS (
  INSERT INTO jobs (id, budget_id, initiative, queue, params, status, rank, estimate_micros, reserved_micros,
                    charged_micros, metered_micros, last_charge_micros, last_release_micros, attempts,
                    max_attempts, cancel_requested, idempotency_key, created_at, updated_at)
  SELECT :id, b.id, :initiative, :queue, CAST(:params AS JSON), 'admitted', :rank, :x, :x, 0, 0, 0, 0, 0,
         :max_attempts, false, :key, :now, :now
  FROM budgets b WHERE b.name = :budget AND b.spent_micros + b.reserved_micros + :x <= b.total_micros
  ON CONFLICT (budget_id, idempotency_key) DO NOTHING
  RETURNING id, budget_id
), reserved AS (
  UPDATE budgets SET reserved_micros = reserved_micros + :x
  WHERE id IN (SELECT budget_id FROM admitted) AND spent_micros + reserved_micros + :x <= total_micros
  RETURNING id
), entry AS (
  INSERT INTO ledger_entries (budget_id, job_id, attempt, kind, amount_micros, created_at)
  SELECT budget_id, id, 0, 'reserve', :x, :now FROM admitted WHERE EXISTS (SELECT 1 FROM reserved)
)
SELECT (SELECT count(*) FROM admitted) AS inserted, (SELECT count(*) FROM reserved) AS reserved
""")


def _admit_in_one_statement(s: Session, *, budget: str, job: dict[str, Any], now: datetime) -> bool:
    job.update(created_at=now, updated_at=now)
    inserted, reserved = s.execute(_ADMIT_PG, dict(
        id=job["id"], initiative=job["initiative"], queue=job["queue"], params=json.dumps(job["params"]),
        rank=job["rank"], x=job["estimate_micros"], max_attempts=job["max_attempts"],
        key=job["idempotency_key"], now=now, budget=budget,
    )).one()
    if inserted and not reserved:
        raise BudgetExhausted(f"budget {budget!r} was spent by a concurrent admission; try again", left_micros=0)
    return bool(inserted)


def _admit_step_by_step(s: Session, *, budget: str, job: dict[str, Any], now: datetime) -> bool:
    """SQLite: the transaction holds the write lock (BEGIN IMMEDIATE), so the steps cannot race."""
    budget_id = _budget_id(s, name=budget)
    if job["idempotency_key"] is not None and _job_by_key(s, budget=budget, key=job["idempotency_key"]):
        return False
    fitted = s.execute(
        update(budgets_t)
        .where(budgets_t.c.id == budget_id)
        .where(budgets_t.c.spent_micros + budgets_t.c.reserved_micros + job["estimate_micros"] <= budgets_t.c.total_micros)
        .values(reserved_micros=budgets_t.c.reserved_micros + job["estimate_micros"])
        .returning(budgets_t.c.id)
    ).scalar_one_or_none()
    if fitted is None:
        return False
    job.update(budget_id=budget_id, created_at=now, updated_at=now)
    s.execute(insert(jobs_t).values(**job))
    _append(s, budget_id=budget_id, job_id=job["id"], attempt=0, kind="reserve", amount=job["estimate_micros"], now=now)
    return True


def _budget_id(s: Session, *, name: str) -> int:
    budget_id = s.scalar(select(Budget.id).where(Budget.name == name))
    if budget_id is None:
        raise NotFound(f"no budget named {name!r}; create it with `budgetq budget create {name} --total 1.00`")
    return budget_id


def _raise_exhausted(s: Session, *, budget: str, amount: int) -> None:
    current = get_budget(s, name=budget)  # raises NotFound
    raise BudgetExhausted(
        f"budget {budget!r} has {format_micros(current.left_micros)} left, not enough for {format_micros(amount)};"
        f" lower the estimate or create a larger budget",
        left_micros=current.left_micros,
    )


def _add_dependency(s: Session, *, job_id: str, after_job_id: str) -> None:
    if s.get(Job, after_job_id) is None:
        raise NotFound(f"no job {after_job_id!r} to run after; check `budgetq jobs list`")
    s.execute(insert(JobDependency).values(job_id=job_id, after_job_id=after_job_id))


def mark_published(s: Session, *, job_ids: Iterable[str]) -> None:
    """Record that a message was sent for each job again (a requeue, a re-send), and count it."""
    ids = list(job_ids)
    if ids:
        s.execute(update(jobs_t).where(Job.id.in_(ids)).values(published_at=utcnow(), publications=jobs_t.c.publications + 1))


# ---------------------------------------------------------------------------------------------
# Running an attempt


_dep = jobs_t.alias("dep")
_deps_t = JobDependency.__table__


def _some_dependency(job_id_column: Any, status_test: Any) -> Any:
    """SQL: the job has a dependency whose status passes ``status_test``."""
    return exists(
        select(1)
        .select_from(_deps_t.join(_dep, _dep.c.id == _deps_t.c.after_job_id))
        .where(_deps_t.c.job_id == job_id_column, status_test)
    )


def _deps_unmet(job_id_column: Any) -> Any:
    """SQL: some dependency of the job has not succeeded."""
    return _some_dependency(job_id_column, _dep.c.status != "succeeded")


# The hot paths (claim, heartbeat, settle) run statements built once, here, with their values
# bound per call: building a statement costs more Python than sending it.
_NOW = bindparam("now", type_=jobs_t.c.updated_at.type)

_CLAIM = (
    update(jobs_t)
    .where(
        jobs_t.c.id == bindparam("job_id"),
        jobs_t.c.status.in_(CLAIMABLE),
        # Preempted claims cost the job no attempt: only the others count against max_attempts.
        jobs_t.c.attempts - jobs_t.c.preemptions < jobs_t.c.max_attempts,
        jobs_t.c.cancel_requested.is_(False),
        ~_deps_unmet(jobs_t.c.id),
    )
    .values(
        status="running", attempts=jobs_t.c.attempts + 1, worker=bindparam("owner"),
        lease_until=bindparam("lease_end", type_=jobs_t.c.lease_until.type), metered_micros=0, progress=None,
        checkpoint_micros=0, preempt_requested=False, started_at=_NOW, updated_at=_NOW,
    )
    .returning(jobs_t.c.attempts, jobs_t.c.max_attempts, jobs_t.c.initiative, jobs_t.c.params, jobs_t.c.reserved_micros,
               jobs_t.c.preemptions)
)


def claim_job(s: Session, *, job_id: str, worker: str, lease_seconds: float) -> Claim:
    """Move an admitted or requeued job to running, count the attempt and take a lease.

    A second claim (a duplicate delivery), a cancelled job or one whose dependencies have not
    succeeded raises ``ClaimRefused``.
    """
    now = utcnow()
    lease_until = now + timedelta(seconds=lease_seconds)
    row = s.execute(_CLAIM, {"job_id": job_id, "owner": worker, "lease_end": lease_until, "now": now}).one_or_none()
    if row is None:
        raise ClaimRefused(_why_unclaimable(s, job_id))
    return Claim(job_id, row.attempts, row.initiative, dict(row.params), row.reserved_micros, lease_until, row.max_attempts,
                 row.preemptions)


def _why_unclaimable(s: Session, job_id: str) -> str:
    job = s.get(Job, job_id)
    if job is None:
        return f"no job {job_id!r}"
    if job.status in CLAIMABLE and s.scalar(select(_deps_unmet(literal(job_id)))):
        return f"job {job_id} waits for its dependencies"
    return f"job {job_id} is {job.status} (attempt {job.attempts}); not claimable"


_METERED = bindparam("metered", type_=BigInteger)
_CHECKPOINTED = bindparam("checkpointed", type_=BigInteger)
_HEARTBEAT = (
    update(jobs_t)
    .where(
        jobs_t.c.id == bindparam("job_id"), jobs_t.c.attempts == bindparam("attempt"),
        jobs_t.c.status == "running", jobs_t.c.worker == bindparam("owner"),
    )
    .values(
        metered_micros=case((jobs_t.c.reserved_micros < _METERED, jobs_t.c.reserved_micros), else_=_METERED),
        checkpoint_micros=case((jobs_t.c.reserved_micros < _CHECKPOINTED, jobs_t.c.reserved_micros), else_=_CHECKPOINTED),
        lease_until=bindparam("lease_end", type_=jobs_t.c.lease_until.type), updated_at=_NOW,
        progress=bindparam("progress", type_=jobs_t.c.progress.type),
    )
    .returning(jobs_t.c.reserved_micros, jobs_t.c.cancel_requested, jobs_t.c.preempt_requested)
)


def heartbeat(
    s: Session, *, job_id: str, attempt: int, worker: str, metered_micros: int, lease_seconds: float, checkpoint_micros: int = 0,
    progress: Optional[dict[str, Any]] = None,
) -> Beat:
    """Record the cost metered so far (and at the last durable checkpoint), extend the lease; say whether to stop.

    The metered cost is capped at the reservation in SQL. ``progress`` (the payload's last step,
    total, loss and stage, or None) rides along for displays. ``LeaseLost`` means the attempt was
    reaped or the job settled elsewhere. A cancel outranks a spent reservation, which outranks a
    preemption (a job out of money is stopped, not moved).
    """
    now = utcnow()
    row = s.execute(_HEARTBEAT, {
        "job_id": job_id, "attempt": attempt, "owner": worker, "metered": metered_micros,
        "checkpointed": min(checkpoint_micros, metered_micros), "lease_end": now + timedelta(seconds=lease_seconds), "now": now,
        "progress": progress,
    }).one_or_none()
    if row is None:
        raise LeaseLost(f"job {job_id} attempt {attempt} is no longer held by {worker}")
    if row.cancel_requested:
        return Beat(StopReason.CANCEL)
    if metered_micros >= row.reserved_micros:
        return Beat(StopReason.BUDGET)
    if row.preempt_requested:
        return Beat(StopReason.PREEMPTION)
    return Beat(None)


def request_preemption(s: Session, *, worker: str) -> int:
    """Tell every attempt ``worker`` runs to checkpoint and stop: its machine is being reclaimed.

    The worker signals its pool processes directly; this is the fallback its heartbeats read.
    Returns how many running attempts were told.
    """
    done = s.execute(
        update(jobs_t).where(jobs_t.c.worker == worker, jobs_t.c.status == "running").values(preempt_requested=True)
    )
    return done.rowcount or 0


def _closing_update(
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
            finished_at=case((final, _NOW), else_=None),
            updated_at=_NOW,
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
    moved = (
        update(budgets_t)
        .where(budgets_t.c.id == per_budget.c.budget_id)
        .values(spent_micros=budgets_t.c.spent_micros + per_budget.c.charge,
                reserved_micros=budgets_t.c.reserved_micros - per_budget.c.charge - per_budget.c.release)
        .cte("moved")
    )

    def entries(kind: str, amount):
        return select(closed.c.budget_id, closed.c.id, closed.c.attempts, literal(kind, String), amount, _NOW)

    rows = union_all(
        entries("charge", closed.c.last_charge_micros),
        entries("release", closed.c.last_release_micros).where(closed.c.status.in_(FINAL)),
    )
    appended = insert(entries_t).from_select(
        ["budget_id", "job_id", "attempt", "kind", "amount_micros", "created_at"], rows
    ).cte("appended")
    return select(closed).add_cte(moved, appended)


@dataclass(frozen=True)
class _Closing:
    """An attempt-closing statement in its two forms: alone (SQLite) and with its effects (PostgreSQL)."""

    alone: Any
    with_effects: Any

    @classmethod
    def build(cls, **kw: Any) -> "_Closing":
        closing = _closing_update(**kw)
        return cls(closing, _with_budget_and_entries(closing))


def _or_kept(column: Any) -> Any:
    """SET column = the bound value, or keep the column's value when NULL is bound."""
    return func.coalesce(bindparam(f"usage_{column.name}", type_=column.type), column)


_SETTLE = _Closing.build(
    guard=and_(jobs_t.c.id == bindparam("job_id"), jobs_t.c.attempts == bindparam("attempt"),
               jobs_t.c.status == "running", jobs_t.c.worker == bindparam("owner")),
    charge=bindparam("charge", type_=BigInteger),
    status=bindparam("new_status", type_=String),
    error=bindparam("error", type_=Text),
    reason=bindparam("reason", type_=String),
    preempted=bindparam("preempted", type_=Integer),
    also={c.name: _or_kept(c) for c in (jobs_t.c.device, jobs_t.c.rate_micros_per_hour, jobs_t.c.work_steps)},
)


def settle_job(
    s: Session,
    *,
    job_id: str,
    attempt: int,
    worker: str,
    status: JobStatus,
    cost_micros: int,
    stop: Optional[Stop] = None,
    metrics: Iterable[Any] = (),
    artifacts: Iterable[Any] = (),
    failures: Iterable[Any] = (),
    notes: Iterable[str] = (),
    usage: Optional[Usage] = None,
    checkpoint_micros: int = 0,
) -> Closed:
    """Close an attempt: charge its cost (at most the reservation), write results and the status.

    ``status`` (from ``core.status.next_status``) is final (succeeded, failed, budget_stopped,
    cancelled), releasing the rest of the reservation, or ``requeued``, keeping it for the next
    attempt; ``stop`` says why the attempt ended early. ``usage`` (where it ran, what it did) is
    recorded on the job for cost forecasts. A preempted attempt (``stop.reason`` is preemption)
    counts in ``preemptions``, so it costs the job no attempt, and is recorded with what it lost:
    its charge beyond ``checkpoint_micros``, the metered cost at its last durable checkpoint.
    Calling it again for the same attempt returns the first outcome and changes nothing.
    """
    if status not in set(JobStatus) or status not in FINAL_STATUSES | {JobStatus.REQUEUED}:
        raise InvalidInput(f"cannot settle a job as {status!r}")
    status = JobStatus(status)
    if cost_micros < 0 or checkpoint_micros < 0:
        raise InvalidInput("a cost cannot be negative")
    preempted = stop is not None and stop.reason is StopReason.PREEMPTION and status is JobStatus.REQUEUED
    closed = _close_attempt(s, _SETTLE, {
        "job_id": job_id, "attempt": attempt, "owner": worker, "charge": cost_micros, "new_status": status.value,
        "error": describe(stop) if stop else None, "reason": stop.reason.value if stop else None, "preempted": int(preempted),
        "usage_device": usage.device if usage else None,
        "usage_rate_micros_per_hour": usage.rate_micros_per_hour if usage else None,
        "usage_work_steps": usage.work_steps if usage else None,
    })
    if not closed:
        return _replayed_or_lost(s, job_id=job_id, attempt=attempt, worker=worker)
    (result,) = closed
    _write_results(s, job_id=job_id, attempt=attempt, metrics=metrics, artifacts=artifacts, failures=failures, notes=notes)
    if preempted:
        lost = result.charge_micros - min(checkpoint_micros, result.charge_micros)
        s.execute(insert(Preemption).values(job_id=job_id, attempt=attempt, worker=worker, charged_micros=result.charge_micros,
                                            lost_micros=lost, created_at=utcnow()))
    return result


def _close_attempt(s: Session, closing: _Closing, params: dict[str, Any]) -> list[Closed]:
    """Run a closing statement; move the budget and append the entries its rows imply.

    On PostgreSQL that is the same statement; on SQLite, where the transaction holds the write
    lock, it is the statements after it.
    """
    now = utcnow()
    params = {**params, "now": now}
    if _dialect(s) == "postgresql":
        rows = s.execute(closing.with_effects, params).all()
    else:
        rows = s.execute(closing.alone, params).all()
        for row in rows:
            _move_budget(s, budget_id=row.budget_id, charge=row.last_charge_micros, release=row.last_release_micros)
            _append(s, budget_id=row.budget_id, job_id=row.id, attempt=row.attempts, kind="charge", amount=row.last_charge_micros, now=now)
            if row.status in FINAL:
                _append(s, budget_id=row.budget_id, job_id=row.id, attempt=row.attempts, kind="release", amount=row.last_release_micros, now=now)
    closed = _with_crossings(s, [Closed(r.id, r.attempts, r.status, r.last_charge_micros, r.last_release_micros) for r in rows],
                             {r.id: r.budget_id for r in rows})
    if any(c.status in FINAL and c.status != JobStatus.SUCCEEDED for c in closed):
        cancel_orphans(s)
    return closed


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


def _move_budget(s: Session, *, budget_id: int, charge: int, release: int) -> None:
    """Charge moves money from reserved to spent; release returns it to what is left."""
    s.execute(
        update(budgets_t)
        .where(budgets_t.c.id == budget_id)
        .values(spent_micros=budgets_t.c.spent_micros + charge, reserved_micros=budgets_t.c.reserved_micros - charge - release)
    )


def _replayed_or_lost(s: Session, *, job_id: str, attempt: int, worker: str) -> Closed:
    job = s.get(Job, job_id)
    if job is None:
        raise NotFound(f"no job {job_id!r}")
    if job.attempts == attempt and job.status != "running" and job.worker == worker:
        return Closed(job_id, attempt, job.status, job.last_charge_micros, job.last_release_micros, replayed=True)
    raise LeaseLost(f"job {job_id} attempt {attempt} is {job.status} at attempt {job.attempts}; this settlement is refused")


def _write_results(s: Session, *, job_id: str, attempt: int, metrics, artifacts, failures, notes=()) -> None:
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

_REAP_ONE = _Closing.build(
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
        closed += _close_attempt(s, _REAP_ONE, {
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


# A job that never started has no attempt to count; next_status still decides what a cancel means.
_CANCELLED = next_status(Stop(StopReason.CANCEL), attempts=0, max_attempts=1).value
_CANCEL_QUEUED = _Closing.build(
    guard=and_(jobs_t.c.id == bindparam("job_id"), jobs_t.c.status.in_(CLAIMABLE)),
    charge=literal(0, BigInteger), status=literal(_CANCELLED, String), error=literal(describe(Stop(StopReason.CANCEL)), Text),
    reason=literal(StopReason.CANCEL.value, String),
)


def cancel_job(s: Session, *, job_id: str) -> JobView:
    """Cancel a job: a queued one releases its reservation now; a running one is told to stop."""
    _close_attempt(s, _CANCEL_QUEUED, {"job_id": job_id})
    s.execute(
        update(jobs_t).where(Job.id == job_id, Job.status == "running").values(cancel_requested=True, updated_at=utcnow())
    )
    return get_job(s, job_id=job_id)


_CANCEL_ORPHANS = _Closing.build(
    guard=and_(
        jobs_t.c.status.in_(CLAIMABLE),
        _some_dependency(jobs_t.c.id, _dep.c.status.in_([s.value for s in DEAD_ENDS])),
    ),
    charge=literal(0, BigInteger), status=literal(_CANCELLED, String), error=literal("a dependency did not succeed", Text),
    reason=literal(StopReason.CANCEL.value, String),
)


def cancel_orphans(s: Session) -> list[Closed]:
    """Cancel queued jobs whose dependency ended without success, down the whole chain."""
    # _close_attempt calls back here when it cancels something, which walks the chain.
    return _close_attempt(s, _CANCEL_ORPHANS, {})


def ready_to_publish(
    s: Session, *, older_than_seconds: float = 0, job_ids: Optional[Sequence[str]] = None, after_job: Optional[str] = None
) -> list[Ready]:
    """Queued jobs whose dependencies succeeded, not published (or admitted) in the last while.

    ``job_ids`` narrows to those jobs; ``after_job`` to the jobs that wait on that one.
    """
    cutoff = utcnow() - timedelta(seconds=older_than_seconds)
    query = (
        select(Job.id, Job.queue, Job.reserved_micros)
        .where(Job.status.in_(CLAIMABLE), ~_deps_unmet(Job.id), Job.cancel_requested.is_(False))
        # Neither published nor changed (requeued, which publishes after its commit) lately.
        .where(func.coalesce(Job.published_at, Job.created_at) <= cutoff, Job.updated_at <= cutoff)
        .order_by(Job.rank, Job.created_at)
    )
    if job_ids is not None:
        query = query.where(Job.id.in_(list(job_ids)))
    if after_job is not None:
        query = query.where(Job.id.in_(select(JobDependency.job_id).where(JobDependency.after_job_id == after_job)))
    return [Ready(*row) for row in s.execute(query)]


# ---------------------------------------------------------------------------------------------
# Workers


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


# ---------------------------------------------------------------------------------------------
# Helpers


def _append(s: Session, *, budget_id: int, job_id: Optional[str], attempt: int, kind: str, amount: int, now: datetime) -> None:
    s.execute(
        insert(entries_t).values(
            budget_id=budget_id, job_id=job_id, attempt=attempt, kind=kind, amount_micros=amount, created_at=now
        )
    )


