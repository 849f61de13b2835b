"""Budgets: creating one, and steering it after admission: top-ups, resuming a budget-stopped job, thresholds.

Each change to a budget's money is one guarded UPDATE followed, in the same transaction, by the
ledger entry it implies (``models.moves``), on PostgreSQL and SQLite alike, so ``budget audit``
stays clean. Neither is on the ledger benchmark's hot path, so neither has a PostgreSQL-only form.
A threshold crossing is an INSERT ... SELECT that writes its event only when spending has reached
the threshold, and at most once (a unique key).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timezone
from typing import Optional

from sqlalchemy import DateTime, Integer, String, and_, bindparam, exists, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from core.errors import BudgetExhausted, InvalidInput
from core.money import MAX_DOLLARS, MICROS_PER_DOLLAR, format_micros
from core.status import JobStatus
from models.moves import append_entry, budgets_t, fits, reserve
from models.queries import get_budget, get_job
from models.schema import Budget, BudgetEvent, BudgetThreshold, Job, LedgerEntry, WorkerRow
from models.views import BudgetEvent as EventView
from models.views import BudgetView, JobView

MAX_TOTAL_MICROS = int(MAX_DOLLARS) * MICROS_PER_DOLLAR
jobs_t = Job.__table__
thresholds_t, events_t = BudgetThreshold.__table__, BudgetEvent.__table__


def create_budget(s: Session, *, name: str, total_micros: int) -> BudgetView:
    """Create a budget and its ``fund`` entry. A second budget of the same name is refused."""
    if not name or len(name) > 100 or not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
        raise InvalidInput(f"budget name {name!r} must be 1-100 letters, digits, '-', '_' or '.'")
    now = _now()
    try:
        with s.begin_nested():
            budget_id = s.execute(
                insert(Budget)
                .values(name=name, total_micros=total_micros, spent_micros=0, reserved_micros=0, created_at=now)
                .returning(Budget.id)
            ).scalar_one()
    except IntegrityError:
        raise InvalidInput(f"budget {name!r} already exists; pick another name or use it as it is") from None
    append_entry(s, budget_id=budget_id, job_id=None, attempt=0, kind="fund", amount=total_micros, now=now)
    return BudgetView(budget_id, name, total_micros, 0, 0)


def _now() -> datetime:
    return datetime.now(timezone.utc)


# ---------------------------------------------------------------------------------------------
# Top-ups

def topup_budget(s: Session, *, name: str, add_micros: int) -> BudgetView:
    """Add ``add_micros`` to a budget's total (one guarded UPDATE) and append its ``fund`` entry."""
    if add_micros <= 0:
        raise InvalidInput("--add must be more than $0.00; a top-up adds money")
    funded = s.execute(
        update(budgets_t)
        .where(budgets_t.c.name == name, budgets_t.c.total_micros + add_micros <= MAX_TOTAL_MICROS)
        .values(total_micros=budgets_t.c.total_micros + add_micros)
        .returning(budgets_t.c.id)
    ).scalar_one_or_none()
    if funded is None:
        current = get_budget(s, name=name)  # raises NotFound with the fix
        raise InvalidInput(
            f"budget {name!r} holds {format_micros(current.total_micros)}; adding {format_micros(add_micros)} would pass"
            f" the ${MAX_DOLLARS} a budget may hold"
        )
    append_entry(s, budget_id=funded, job_id=None, attempt=0, kind="fund", amount=add_micros, now=_now())
    return get_budget(s, name=name)


# ---------------------------------------------------------------------------------------------
# Resuming a budget-stopped job

# Resuming is admission's three statements again: the guarded job UPDATE (still budget-stopped, and
# its budget has the money left), the guarded reservation, the reserve entry. Under PostgreSQL's Read
# Committed a racing admission may take the money between the first two (SQLite's write lock rules
# that out); resume_job then raises so the caller's transaction rolls the job back.


def _resumed_values(x: int, more: int, now) -> dict:
    """The job row a resume writes."""
    return dict(
        status=JobStatus.ADMITTED.value, reserved_micros=x, estimate_micros=jobs_t.c.estimate_micros + x,
        max_attempts=jobs_t.c.attempts + more, metered_micros=0, last_charge_micros=0, last_release_micros=0,
        stop_reason=None, error=None, lease_until=None, finished_at=None, cancel_requested=False,
        published_at=now, updated_at=now,
    )


def resume_job(s: Session, *, job_id: str, max_attempts: int, estimate_micros: Optional[int] = None) -> JobView:
    """Re-admit a ``budget_stopped`` job: reserve anew and return it to the queue.

    The reservation defaults to the job's original estimate. The job's estimate grows by the new
    reservation in the same statement, so ``charged + reserved <= estimate`` stays true; it may take
    ``max_attempts`` more attempts. Its checkpoints are keyed by its id, so it continues from the
    last one. Raises ``BudgetExhausted`` when the reservation does not fit (nothing written).
    """
    job = get_job(s, job_id=job_id)  # NotFound with the fix
    if job.status != JobStatus.BUDGET_STOPPED:
        raise InvalidInput(f"job {job_id} is {job.status}; only a budget_stopped job can be resumed")
    x = estimate_micros if estimate_micros is not None else original_estimate(s, job_id=job_id, fallback=job.estimate_micros)
    if x <= 0:
        raise InvalidInput("--estimate must be more than $0.00; a resumed job needs money to run")
    now = _now()
    resumed = s.execute(
        update(jobs_t)
        .where(jobs_t.c.id == job_id, jobs_t.c.status == JobStatus.BUDGET_STOPPED.value,
               exists().where(budgets_t.c.id == jobs_t.c.budget_id, fits(budgets_t, x)))
        .values(**_resumed_values(x, max_attempts, now))
        .returning(jobs_t.c.budget_id, jobs_t.c.attempts)
    ).one_or_none()
    if resumed is None:
        _why_not_resumed(s, job_id=job_id, budget=job.budget, amount=x)
    if not reserve(s, budget_id=resumed.budget_id, amount=x):
        raise BudgetExhausted(f"budget {job.budget!r} was spent by a concurrent admission; try again", left_micros=0)
    append_entry(s, budget_id=resumed.budget_id, job_id=job_id, attempt=resumed.attempts, kind="reserve", amount=x, now=now)
    return get_job(s, job_id=job_id)


def _why_not_resumed(s: Session, *, job_id: str, budget: str, amount: int) -> None:
    job = get_job(s, job_id=job_id)
    if job.status != JobStatus.BUDGET_STOPPED:  # another resume won the race
        raise InvalidInput(f"job {job_id} is {job.status}; only a budget_stopped job can be resumed")
    left = get_budget(s, name=budget).left_micros
    raise BudgetExhausted(
        f"budget {budget!r} has {format_micros(left)} left, not enough to resume job {job_id} with {format_micros(amount)};"
        f" top it up with `budgetq budget topup {budget} --add ...` or pass a smaller --estimate",
        left_micros=left,
    )


def original_estimate(s: Session, *, job_id: str, fallback: int) -> int:
    """What the job reserved when it was first admitted (its attempt-0 reserve entry)."""
    amount = s.scalar(select(LedgerEntry.amount_micros).where(
        LedgerEntry.job_id == job_id, LedgerEntry.attempt == 0, LedgerEntry.kind == "reserve"))
    return fallback if amount is None else int(amount)


# ---------------------------------------------------------------------------------------------
# Thresholds


def set_thresholds(s: Session, *, budget: str, thresholds_ppm: Iterable[int]) -> list[EventView]:
    """Replace a budget's warning thresholds; record those its spending has already crossed."""
    budget_id = get_budget(s, name=budget).id
    ppms = sorted(set(thresholds_ppm))
    if any(not 0 < p <= 1_000_000 for p in ppms):
        raise InvalidInput("--warn-at takes a share of the budget above 0 and at most 1, like 0.5 or 80%")
    s.execute(thresholds_t.delete().where(thresholds_t.c.budget_id == budget_id))
    if ppms:
        s.execute(thresholds_t.insert(), [{"budget_id": budget_id, "threshold_ppm": p} for p in ppms])
    return record_crossings(s, budget_id=budget_id, job_id=None)


def _crossing(dialect_insert) -> object:
    """INSERT an event for every threshold of the budget that spending has reached, once each.

    ``spent >= ppm * total / 10^6`` in exact integers without overflowing BIGINT for the largest
    budgets: the total is split into whole dollars and the remainder, and the remainder's share is
    rounded up.
    """
    t, b, e = thresholds_t, budgets_t, events_t
    need = (t.c.threshold_ppm * (b.c.total_micros // MICROS_PER_DOLLAR)
            + (t.c.threshold_ppm * (b.c.total_micros % MICROS_PER_DOLLAR) + (MICROS_PER_DOLLAR - 1)) // MICROS_PER_DOLLAR)
    crossed = (
        select(b.c.id, t.c.threshold_ppm, b.c.spent_micros, b.c.total_micros,
               bindparam("job_id", type_=String), bindparam("now", type_=DateTime(timezone=True)))
        .select_from(t.join(b, b.c.id == t.c.budget_id))
        .where(t.c.budget_id == bindparam("budget_id", type_=Integer), b.c.spent_micros >= need)
        .where(~exists().where(and_(e.c.budget_id == t.c.budget_id, e.c.threshold_ppm == t.c.threshold_ppm)))
    )
    return (
        dialect_insert(events_t)
        .from_select(["budget_id", "threshold_ppm", "spent_micros", "total_micros", "job_id", "created_at"], crossed)
        .on_conflict_do_nothing(index_elements=["budget_id", "threshold_ppm"])
        .returning(events_t.c.threshold_ppm, events_t.c.spent_micros, events_t.c.total_micros, events_t.c.job_id,
                   events_t.c.created_at)
    )


_CROSSING = {"postgresql": _crossing(postgresql.insert), "sqlite": _crossing(sqlite.insert)}


def record_crossings(s: Session, *, budget_id: int, job_id: Optional[str]) -> list[EventView]:
    """Record each threshold the budget's spending has crossed and no event records yet.

    Runs in the transaction that charged the money (settle, reap), so the event commits with it.
    """
    rows = s.execute(_CROSSING[s.get_bind().dialect.name],
                     {"budget_id": budget_id, "job_id": job_id, "now": _now()}).all()
    if not rows:
        return []
    name = s.scalar(select(Budget.name).where(Budget.id == budget_id))
    return sorted((EventView(name, r.threshold_ppm, r.spent_micros, r.total_micros, r.job_id, r.created_at) for r in rows),
                  key=lambda e: e.threshold_ppm)


def budget_thresholds(s: Session, *, budget: str) -> list[int]:
    budget_id = get_budget(s, name=budget).id
    return list(s.scalars(select(BudgetThreshold.threshold_ppm).where(BudgetThreshold.budget_id == budget_id)
                          .order_by(BudgetThreshold.threshold_ppm)))


def budget_events(s: Session, *, budget: Optional[str] = None) -> list[EventView]:
    """Every recorded crossing (of one budget, or all), oldest first."""
    query = select(BudgetEvent, Budget.name).join(Budget, Budget.id == BudgetEvent.budget_id)
    if budget is not None:
        get_budget(s, name=budget)  # NotFound with the fix
        query = query.where(Budget.name == budget)
    rows = s.execute(query.order_by(BudgetEvent.created_at, BudgetEvent.threshold_ppm)).all()
    return [EventView(name, e.threshold_ppm, e.spent_micros, e.total_micros, e.job_id, e.created_at) for e, name in rows]


# ---------------------------------------------------------------------------------------------
# Workers


def set_worker_device(s: Session, *, name: str, device: str) -> None:
    """Record the device a worker's jobs run on (its pool process knows it; the main process must not touch CUDA)."""
    s.execute(update(WorkerRow.__table__).where(WorkerRow.name == name).values(device=device))

