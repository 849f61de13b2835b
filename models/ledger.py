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
from core.status import CLAIMABLE_STATUSES, DEAD_ENDS, FINAL_STATUSES, JobStatus, Stop, StopReason, describe
from models.queries import _job_by_key, get_budget, get_job
from models.schema import (
    Artifact,
    Budget,
    FailureCase,
    Job,
    JobDependency,
    JobNote,
    LedgerEntry,
    Metric,
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
    ids = list(job_ids)
    if ids:
        s.execute(update(jobs_t).where(Job.id.in_(ids)).values(published_at=utcnow()))


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
        jobs_t.c.attempts < jobs_t.c.max_attempts,
        jobs_t.c.cancel_requested.is_(False),
        ~_deps_unmet(jobs_t.c.id),
    )
    .values(
        status="running", attempts=jobs_t.c.attempts + 1, worker=bindparam("owner"),
        lease_until=bindparam("lease_end", type_=jobs_t.c.lease_until.type), metered_micros=0, progress=None,
        started_at=_NOW, updated_at=_NOW,
    )
    .returning(jobs_t.c.attempts, jobs_t.c.max_attempts, jobs_t.c.initiative, jobs_t.c.params, jobs_t.c.reserved_micros)
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
    return Claim(job_id, row.attempts, row.initiative, dict(row.params), row.reserved_micros, lease_until, row.max_attempts)


def _why_unclaimable(s: Session, job_id: str) -> str:
    job = s.get(Job, job_id)
    if job is None:
        return f"no job {job_id!r}"
    if job.status in CLAIMABLE and s.scalar(select(_deps_unmet(literal(job_id)))):
        return f"job {job_id} waits for its dependencies"
    return f"job {job_id} is {job.status} (attempt {job.attempts}); not claimable"


_METERED = bindparam("metered", type_=BigInteger)
_HEARTBEAT = (
    update(jobs_t)
    .where(
        jobs_t.c.id == bindparam("job_id"), jobs_t.c.attempts == bindparam("attempt"),
        jobs_t.c.status == "running", jobs_t.c.worker == bindparam("owner"),
    )
    .values(
        metered_micros=case((jobs_t.c.reserved_micros < _METERED, jobs_t.c.reserved_micros), else_=_METERED),
        lease_until=bindparam("lease_end", type_=jobs_t.c.lease_until.type), updated_at=_NOW,
        progress=bindparam("progress", type_=jobs_t.c.progress.type),
    )
    .returning(jobs_t.c.reserved_micros, jobs_t.c.cancel_requested)
)


def heartbeat(s: Session, *, job_id: str, attempt: int, worker: str, metered_micros: int, lease_seconds: float,
              progress: Optional[dict[str, Any]] = None) -> Beat:
    """Record the cost metered so far and extend the lease; say whether the worker must stop.

    The metered cost is capped at the reservation in SQL. ``progress`` (the payload's last step,
    total, loss and stage, or None) rides along for displays. ``LeaseLost`` means the attempt was
    reaped or the job settled elsewhere.
    """
    now = utcnow()
    row = s.execute(_HEARTBEAT, {
        "job_id": job_id, "attempt": attempt, "owner": worker, "metered": metered_micros,
        "lease_end": now + timedelta(seconds=lease_seconds), "now": now, "progress": progress,
    }).one_or_none()
    if row is None:
        raise LeaseLost(f"job {job_id} attempt {attempt} is no longer held by {worker}")
    if row.cancel_requested:
        return Beat(StopReason.CANCEL)
    if metered_micros >= row.reserved_micros:
        return Beat(StopReason.BUDGET)
    return Beat(None)


def _closing_update(*, guard: Any, charge: Any, status: Any, error: Any, reason: Any, keep_worker: bool = True,
                    also: Optional[dict[str, Any]] = None) -> Any:
    """The one guarded UPDATE that ends attempts, returning what it charged and released.

    Every SET expression reads the row as it was before the UPDATE (SQL semantics on both
    PostgreSQL and SQLite), so ``reserved_micros`` below is the reservation being closed.
    ``also`` sets more columns in the same statement (settle records where the attempt ran).
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
) -> Closed:
    """Close an attempt: charge its cost (at most the reservation), write results and the status.

    ``status`` (from ``core.status.next_status``) is final (succeeded, failed, budget_stopped,
    cancelled), releasing the rest of the reservation, or ``requeued``, keeping it for the next
    attempt; ``stop`` says why the attempt ended early. ``usage`` (where it ran, what it did) is
    recorded on the job for cost forecasts. Calling it again for the same attempt returns the first
    outcome and changes nothing.
    """
    if status not in set(JobStatus) or status not in FINAL_STATUSES | {JobStatus.REQUEUED}:
        raise InvalidInput(f"cannot settle a job as {status!r}")
    status = JobStatus(status)
    if cost_micros < 0:
        raise InvalidInput("a cost cannot be negative")
    closed = _close_attempt(s, _SETTLE, {
        "job_id": job_id, "attempt": attempt, "owner": worker, "charge": cost_micros, "new_status": status.value,
        "error": describe(stop) if stop else None, "reason": stop.reason.value if stop else None,
        "usage_device": usage.device if usage else None,
        "usage_rate_micros_per_hour": usage.rate_micros_per_hour if usage else None,
        "usage_work_steps": usage.work_steps if usage else None,
    })
    if not closed:
        return _replayed_or_lost(s, job_id=job_id, attempt=attempt, worker=worker)
    (result,) = closed
    _write_results(s, job_id=job_id, attempt=attempt, metrics=metrics, artifacts=artifacts, failures=failures, notes=notes)
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


_REAP = _Closing.build(
    guard=and_(jobs_t.c.status == "running", jobs_t.c.lease_until < bindparam("expired_before", type_=jobs_t.c.lease_until.type)),
    charge=jobs_t.c.metered_micros,
    status=case(
        (jobs_t.c.metered_micros >= jobs_t.c.reserved_micros, "budget_stopped"),
        (jobs_t.c.attempts < jobs_t.c.max_attempts, "requeued"),
        else_="failed",
    ),
    error=case(
        (jobs_t.c.metered_micros >= jobs_t.c.reserved_micros, "lease expired after the reservation was spent"),
        else_=literal("lease expired: worker ") + func.coalesce(jobs_t.c.worker, "?") + " stopped heartbeating",
    ),
    reason=case((jobs_t.c.metered_micros >= jobs_t.c.reserved_micros, StopReason.BUDGET.value), else_=StopReason.LOST.value),
    # The dead worker loses the attempt: a late settlement from it is refused (LeaseLost).
    keep_worker=False,
)


def reap_expired(s: Session, *, now: Optional[datetime] = None) -> list[Closed]:
    """Close every running attempt whose lease ran out (its worker died).

    It is charged what was metered up to its last heartbeat. The job then stops as
    budget_stopped if that spent its reservation, is requeued if attempts are left, or fails.
    """
    return _close_attempt(s, _REAP, {"expired_before": now or utcnow()})


_CANCEL_QUEUED = _Closing.build(
    guard=and_(jobs_t.c.id == bindparam("job_id"), jobs_t.c.status.in_(CLAIMABLE)),
    charge=literal(0, BigInteger), status=literal("cancelled", String), error=literal(describe(Stop(StopReason.CANCEL)), Text),
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
    charge=literal(0, BigInteger), status=literal("cancelled", String), error=literal("a dependency did not succeed", Text),
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
        .where(func.coalesce(Job.published_at, Job.created_at) <= cutoff)
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


# ---------------------------------------------------------------------------------------------
# Helpers


def _append(s: Session, *, budget_id: int, job_id: Optional[str], attempt: int, kind: str, amount: int, now: datetime) -> None:
    s.execute(
        insert(entries_t).values(
            budget_id=budget_id, job_id=job_id, attempt=attempt, kind=kind, amount_micros=amount, created_at=now
        )
    )


