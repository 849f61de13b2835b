"""Steering a budget after admission: top-ups, resuming a budget-stopped job, spending thresholds.

Each change to a budget's money is one guarded statement on PostgreSQL (a CTE that moves the
budget and appends its ledger entry) and the same steps under SQLite's write lock, exactly as
admission does, so ``budget audit`` stays clean. A threshold crossing is an INSERT ... SELECT that
writes its event only when spending has reached the threshold, and at most once (a unique key).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timezone
from typing import Optional

from sqlalchemy import DateTime, Integer, String, and_, bindparam, exists, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from core.errors import BudgetExhausted, InvalidInput
from core.money import MAX_DOLLARS, MICROS_PER_DOLLAR, format_micros
from core.status import JobStatus
from models.queries import get_budget, get_job
from models.schema import Budget, BudgetEvent, BudgetThreshold, Job, LedgerEntry, WorkerRow
from models.views import BudgetEvent as EventView
from models.views import BudgetView, JobView

MAX_TOTAL_MICROS = int(MAX_DOLLARS) * MICROS_PER_DOLLAR
budgets_t, jobs_t, entries_t = Budget.__table__, Job.__table__, LedgerEntry.__table__
thresholds_t, events_t = BudgetThreshold.__table__, BudgetEvent.__table__


def _now() -> datetime:
    return datetime.now(timezone.utc)


# ---------------------------------------------------------------------------------------------
# Top-ups

_TOPUP_PG = text("""
WITH funded AS (
  UPDATE budgets SET total_micros = total_micros + :x
  WHERE name = :budget AND total_micros + :x <= :most
  RETURNING id
)
INSERT INTO ledger_entries (budget_id, job_id, attempt, kind, amount_micros, created_at)
SELECT id, NULL, 0, 'fund', :x, :now FROM funded
RETURNING budget_id
""")


def topup_budget(s: Session, *, name: str, add_micros: int) -> BudgetView:
    """Add ``add_micros`` to a budget's total with its ``fund`` entry, in one guarded statement."""
    if add_micros <= 0:
        raise InvalidInput("--add must be more than $0.00; a top-up adds money")
    params = {"x": add_micros, "budget": name, "most": MAX_TOTAL_MICROS, "now": _now()}
    if s.get_bind().dialect.name == "postgresql":
        funded = s.execute(_TOPUP_PG, params).scalar_one_or_none()
    else:  # SQLite: the transaction holds the write lock, so the two steps cannot race
        funded = s.execute(
            update(budgets_t)
            .where(budgets_t.c.name == name, budgets_t.c.total_micros + add_micros <= MAX_TOTAL_MICROS)
            .values(total_micros=budgets_t.c.total_micros + add_micros)
            .returning(budgets_t.c.id)
        ).scalar_one_or_none()
        if funded is not None:
            s.execute(entries_t.insert().values(budget_id=funded, job_id=None, attempt=0, kind="fund",
                                                amount_micros=add_micros, created_at=params["now"]))
    if funded is None:
        current = get_budget(s, name=name)  # raises NotFound with the fix
        raise InvalidInput(
            f"budget {name!r} holds {format_micros(current.total_micros)}; adding {format_micros(add_micros)} would pass"
            f" the ${MAX_DOLLARS} a budget may hold"
        )
    return get_budget(s, name=name)


# ---------------------------------------------------------------------------------------------
# Resuming a budget-stopped job

# The job row, the budget and the reserve entry in one statement, as admission does. Under Read
# Committed the budget UPDATE re-checks its guard on the latest row; if a racing admission took the
# money in between, the job is updated but nothing reserved, and resume_job raises so the caller's
# transaction rolls the job back.
_RESUME_PG = text("""
WITH resumed AS (
  UPDATE jobs SET status = 'admitted', reserved_micros = :x, estimate_micros = estimate_micros + :x,
         max_attempts = attempts + :more, metered_micros = 0, last_charge_micros = 0, last_release_micros = 0,
         stop_reason = NULL, error = NULL, lease_until = NULL, finished_at = NULL, cancel_requested = false,
         published_at = :now, updated_at = :now
  WHERE id = :job_id AND status = 'budget_stopped'
    AND EXISTS (SELECT 1 FROM budgets b WHERE b.id = jobs.budget_id AND b.spent_micros + b.reserved_micros + :x <= b.total_micros)
  RETURNING id, budget_id, attempts
), reserved AS (
  UPDATE budgets SET reserved_micros = reserved_micros + :x
  WHERE id IN (SELECT budget_id FROM resumed) AND spent_micros + reserved_micros + :x <= total_micros
  RETURNING id
), entry AS (
  INSERT INTO ledger_entries (budget_id, job_id, attempt, kind, amount_micros, created_at)
  SELECT budget_id, id, attempts, 'reserve', :x, :now FROM resumed WHERE EXISTS (SELECT 1 FROM reserved)
)
SELECT (SELECT count(*) FROM resumed) AS resumed, (SELECT count(*) FROM reserved) AS reserved
""")


def _resumed_values(x: int, more: int, now) -> dict:
    """The job row a resume writes (SQLite form of _RESUME_PG's SET list)."""
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
    if s.get_bind().dialect.name == "postgresql":
        resumed, reserved = s.execute(_RESUME_PG, {"x": x, "more": max_attempts, "job_id": job_id, "now": now}).one()
        if resumed and not reserved:
            raise BudgetExhausted(f"budget {job.budget!r} was spent by a concurrent admission; try again", left_micros=0)
    else:
        reserved = _reserve_for(s, job_id=job_id, x=x)
        if reserved is not None:
            s.execute(update(jobs_t).where(jobs_t.c.id == job_id, jobs_t.c.status == JobStatus.BUDGET_STOPPED.value)
                      .values(**_resumed_values(x, max_attempts, now)))
            s.execute(entries_t.insert().values(budget_id=reserved, job_id=job_id, attempt=job.attempts, kind="reserve",
                                                amount_micros=x, created_at=now))
        resumed = reserved is not None
    if not resumed:
        _why_not_resumed(s, job_id=job_id, budget=job.budget, amount=x)
    return get_job(s, job_id=job_id)


def _reserve_for(s: Session, *, job_id: str, x: int) -> Optional[int]:
    """SQLite: the guarded reservation for a budget-stopped job; its budget's id, or None."""
    stopped = select(jobs_t.c.budget_id).where(jobs_t.c.id == job_id, jobs_t.c.status == JobStatus.BUDGET_STOPPED.value)
    return s.execute(
        update(budgets_t)
        .where(budgets_t.c.id == stopped.scalar_subquery(),
               budgets_t.c.spent_micros + budgets_t.c.reserved_micros + x <= budgets_t.c.total_micros)
        .values(reserved_micros=budgets_t.c.reserved_micros + x)
        .returning(budgets_t.c.id)
    ).scalar_one_or_none()


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

