"""The statements that move a budget's money, and the ledger entry each move appends.

One definition each, in SQLAlchemy Core, serving PostgreSQL and SQLite alike. Every move is one
guarded UPDATE whose missing row means the money is not there; the caller's transaction then
appends the entry, so the entries always sum to the budget row.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Optional

from sqlalchemy import BigInteger, Integer, bindparam, insert, update
from sqlalchemy.orm import Session

from models.schema import Budget, LedgerEntry

budgets_t, entries_t = Budget.__table__, LedgerEntry.__table__
AMOUNT = bindparam("x", type_=BigInteger)

# The transitions that run on PostgreSQL as one statement of data-modifying CTEs, composed from the
# same Core statements, instead of those statements one by one (SQLite has no DML in CTEs).
# bench/ledger.py measures each against the portable path (docs/BENCHMARKS.md, "Ledger throughput").
# Both kept: on 2026-11-26 close gave +13/+9/+15% cycles/s at 1/4/8 processes, admit +6/+4/+8%, so
# the portable path is slower on PostgreSQL at every count (and was in two earlier runs that day).
ONE_STATEMENT_ON_POSTGRES = {"admit", "close"}


def fits(budget: Any, amount: Any = AMOUNT) -> Any:
    """SQL: the budget row has ``amount`` left beside what it spent and reserved."""
    return budget.c.spent_micros + budget.c.reserved_micros + amount <= budget.c.total_micros


def reserving(which: Any) -> Any:
    """UPDATE: reserve :x on the budgets ``which`` selects that have it left, RETURNING their ids."""
    return (
        update(budgets_t)
        .where(which, fits(budgets_t))
        .values(reserved_micros=budgets_t.c.reserved_micros + AMOUNT)
        .returning(budgets_t.c.id)
    )


RESERVE = reserving(budgets_t.c.id == bindparam("budget_id", type_=Integer))


def reserve(s: Session, *, budget_id: int, amount: int) -> bool:
    """Reserve ``amount`` on the budget if it fits; False if it does not (nothing changed)."""
    return s.execute(RESERVE, {"budget_id": budget_id, "x": amount}).scalar_one_or_none() is not None


def moving(which: Any, *, charge: Any, release: Any) -> Any:
    """UPDATE: charge moves money from reserved to spent; release returns it to what is left.

    Unguarded in SQL: the reservation it draws on is the closed attempt's, and the CHECK backs it.
    """
    return (
        update(budgets_t)
        .where(which)
        .values(spent_micros=budgets_t.c.spent_micros + charge, reserved_micros=budgets_t.c.reserved_micros - charge - release)
    )


def move_budget(s: Session, *, budget_id: int, charge: int, release: int) -> None:
    """Charge ``charge`` (reserved to spent) and release ``release`` (reserved to left) on the budget."""
    s.execute(moving(budgets_t.c.id == budget_id, charge=charge, release=release))


def append_entry(s: Session, *, budget_id: int, job_id: Optional[str], attempt: int, kind: str, amount: int, now: datetime) -> None:
    append_entries(s, [dict(budget_id=budget_id, job_id=job_id, attempt=attempt, kind=kind, amount_micros=amount, created_at=now)])


def append_entries(s: Session, entries: list[dict[str, Any]]) -> None:
    """Append ledger entries (dicts of their columns) in one statement."""
    if entries:
        s.execute(insert(entries_t), entries)
