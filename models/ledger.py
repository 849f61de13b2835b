"""Every state change of the ledger, each one transaction of guarded statements.

Callers open the transaction (``with ledger.session() as s:``) and pass the session in, so a
plan can admit many jobs all-or-nothing. No function here reads a counter into Python and
writes it back: each change is an ``UPDATE ... WHERE <guard>`` whose missing row means the
transition was not allowed, and every change to a budget appends ledger entries that sum to it.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from datetime import timedelta
from typing import Any, Optional

from sqlalchemy import BigInteger, Integer, String, Text, and_, bindparam, case, exists, func, insert, literal, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from core.errors import BudgetExhausted, ClaimRefused, InvalidInput, LeaseLost, NotFound
from core.limits import KEY_LENGTH, check_name, check_rank, check_text
from core.money import format_micros
from core.status import FINAL_STATUSES, JobStatus, Stop, StopReason, describe
from models.closing import (
    CLAIMABLE,
    NOW,
    Closing,
    close_attempt,
    deps_unmet,
    dialect,
    jobs_t,
    utcnow,
    write_results,
)
from models.moves import AMOUNT, ONE_STATEMENT_ON_POSTGRES, append_entry, budgets_t, entries_t, fits, reserve, reserving
from models.queries import get_budget, job_by_key
from models.schema import Job, JobDependency, Preemption
from models.views import Beat, Claim, Closed, JobView, Ready, Usage


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
    now = utcnow()
    job = dict(
        id=uuid.uuid4().hex, initiative=initiative, queue=queue, params=params, status="admitted", rank=rank,
        estimate_micros=estimate_micros, reserved_micros=estimate_micros, charged_micros=0, metered_micros=0,
        last_charge_micros=0, last_release_micros=0, attempts=0, max_attempts=max_attempts,
        cancel_requested=False, idempotency_key=idempotency_key, created_at=now, updated_at=now,
    )
    if not _admit(s, budget=budget, job=job):
        existing = job_by_key(s, budget=budget, key=idempotency_key) if idempotency_key is not None else None
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


# Admission is three guarded statements: insert the job if its budget has the money left (or find
# its key taken in that budget: nothing inserted), reserve with the guarded UPDATE, and append the
# reserve entry. The INSERT's test only spares a refused job a row; the UPDATE's guard decides.
# Under PostgreSQL's Read Committed a racing admission may take the money between the two (SQLite's
# write lock rules that out): the job row is then inserted but nothing reserved, and admit_job
# raises so the caller's transaction rolls the row back.

_JOB_COLUMNS = (
    "id", "initiative", "queue", "params", "status", "rank", "estimate_micros", "reserved_micros", "charged_micros",
    "metered_micros", "last_charge_micros", "last_release_micros", "attempts", "max_attempts", "cancel_requested",
    "idempotency_key", "created_at", "updated_at",
)


def _admission(dialect_insert: Any) -> Any:
    """INSERT the job (bound as :new_<column>) if the budget named :budget has :x left; RETURNING its budget.

    The prefix keeps the values apart from column names: SQLAlchemy would add a parameter named like
    a column of the budget UPDATE below to its SET list.
    """
    row = (
        select(*(bindparam(f"new_{name}", type_=jobs_t.c[name].type) for name in _JOB_COLUMNS), budgets_t.c.id)
        .where(budgets_t.c.name == bindparam("budget", type_=String), fits(budgets_t))
    )
    return (
        dialect_insert(jobs_t)
        .from_select([*_JOB_COLUMNS, "budget_id"], row, include_defaults=False)  # the rest have server defaults
        .on_conflict_do_nothing(index_elements=["budget_id", "idempotency_key"])
        .returning(jobs_t.c.id, jobs_t.c.budget_id)
    )


def _admission_in_one_statement(admission: Any) -> Any:
    """PostgreSQL: the same three statements as one, of data-modifying CTEs."""
    admitted = admission.cte("admitted")
    reserved = reserving(budgets_t.c.id.in_(select(admitted.c.budget_id))).cte("reserved")
    entry = insert(entries_t).from_select(
        ["budget_id", "job_id", "attempt", "kind", "amount_micros", "created_at"],
        select(admitted.c.budget_id, admitted.c.id, literal(0, Integer), literal("reserve", String), AMOUNT,
               bindparam("new_created_at", type_=entries_t.c.created_at.type))
        .where(exists(select(reserved.c.id))),
    ).cte("entry")

    def count(rows: Any) -> Any:
        return select(func.count()).select_from(rows).scalar_subquery()

    return select(count(admitted).label("inserted"), count(reserved).label("reserved")).add_cte(entry)


_ADMIT = {"postgresql": _admission(postgresql.insert), "sqlite": _admission(sqlite.insert)}
_ADMIT_IN_ONE = _admission_in_one_statement(_ADMIT["postgresql"])  # PostgreSQL only, kept because it pays: see ONE_STATEMENT_ON_POSTGRES


def _admit(s: Session, *, budget: str, job: dict[str, Any]) -> bool:
    """Insert the job, reserve its estimate and append the entry; False if the budget lacks it or the key is taken."""
    params = {**{f"new_{k}": v for k, v in job.items()}, "budget": budget, "x": job["estimate_micros"]}
    name = dialect(s)
    if name == "postgresql" and "admit" in ONE_STATEMENT_ON_POSTGRES:
        inserted, reserved = s.execute(_ADMIT_IN_ONE, params).one()
    else:
        admitted = s.execute(_ADMIT[name], params).one_or_none()
        inserted = admitted is not None
        reserved = inserted and reserve(s, budget_id=admitted.budget_id, amount=job["estimate_micros"])
        if reserved:
            append_entry(s, budget_id=admitted.budget_id, job_id=job["id"], attempt=0, kind="reserve",
                         amount=job["estimate_micros"], now=job["created_at"])
    if inserted and not reserved:
        raise BudgetExhausted(f"budget {budget!r} was spent by a concurrent admission; try again", left_micros=0)
    return bool(inserted)


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


# The hot paths (claim, heartbeat, settle) run statements built once, here, with their values
# bound per call: building a statement costs more Python than sending it.

_CLAIM = (
    update(jobs_t)
    .where(
        jobs_t.c.id == bindparam("job_id"),
        jobs_t.c.status.in_(CLAIMABLE),
        # Preempted claims cost the job no attempt: only the others count against max_attempts.
        jobs_t.c.attempts - jobs_t.c.preemptions < jobs_t.c.max_attempts,
        jobs_t.c.cancel_requested.is_(False),
        ~deps_unmet(jobs_t.c.id),
    )
    .values(
        status="running", attempts=jobs_t.c.attempts + 1, worker=bindparam("owner"),
        lease_until=bindparam("lease_end", type_=jobs_t.c.lease_until.type), metered_micros=0, progress=None,
        checkpoint_micros=0, preempt_requested=False, started_at=NOW, updated_at=NOW,
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
    if job.status in CLAIMABLE and s.scalar(select(deps_unmet(literal(job_id)))):
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
        lease_until=bindparam("lease_end", type_=jobs_t.c.lease_until.type), updated_at=NOW,
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


def _or_kept(column: Any) -> Any:
    """SET column = the bound value, or keep the column's value when NULL is bound."""
    return func.coalesce(bindparam(f"usage_{column.name}", type_=column.type), column)


_SETTLE = Closing.build(
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
    closed = close_attempt(s, _SETTLE, {
        "job_id": job_id, "attempt": attempt, "owner": worker, "charge": cost_micros, "new_status": status.value,
        "error": describe(stop) if stop else None, "reason": stop.reason.value if stop else None, "preempted": int(preempted),
        "usage_device": usage.device if usage else None,
        "usage_rate_micros_per_hour": usage.rate_micros_per_hour if usage else None,
        "usage_work_steps": usage.work_steps if usage else None,
    })
    if not closed:
        return _replayed_or_lost(s, job_id=job_id, attempt=attempt, worker=worker)
    (result,) = closed
    write_results(s, job_id=job_id, attempt=attempt, metrics=metrics, artifacts=artifacts, failures=failures, notes=notes)
    if preempted:
        lost = result.charge_micros - min(checkpoint_micros, result.charge_micros)
        s.execute(insert(Preemption).values(job_id=job_id, attempt=attempt, worker=worker, charged_micros=result.charge_micros,
                                            lost_micros=lost, created_at=utcnow()))
    return result


def _replayed_or_lost(s: Session, *, job_id: str, attempt: int, worker: str) -> Closed:
    job = s.get(Job, job_id)
    if job is None:
        raise NotFound(f"no job {job_id!r}")
    if job.attempts == attempt and job.status != "running" and job.worker == worker:
        return Closed(job_id, attempt, job.status, job.last_charge_micros, job.last_release_micros, replayed=True)
    raise LeaseLost(f"job {job_id} attempt {attempt} is {job.status} at attempt {job.attempts}; this settlement is refused")


def ready_to_publish(
    s: Session, *, older_than_seconds: float = 0, job_ids: Optional[Sequence[str]] = None, after_job: Optional[str] = None
) -> list[Ready]:
    """Queued jobs whose dependencies succeeded, not published (or admitted) in the last while.

    ``job_ids`` narrows to those jobs; ``after_job`` to the jobs that wait on that one.
    """
    cutoff = utcnow() - timedelta(seconds=older_than_seconds)
    query = (
        select(Job.id, Job.queue, Job.reserved_micros)
        .where(Job.status.in_(CLAIMABLE), ~deps_unmet(Job.id), Job.cancel_requested.is_(False))
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


# ---------------------------------------------------------------------------------------------
# Helpers


