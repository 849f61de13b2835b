"""Reads of what jobs cost and reported, for forecasts and for the spend report. Nothing here writes."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Optional

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from core.status import JobStatus
from models.queries import get_budget, list_budgets, list_jobs
from models.schema import Budget, FailureCase, Job, JobNote, LedgerEntry, Metric, WorkerRow
from models.spend import budget_events
from models.views import BudgetEvent, BudgetView, JobView


@dataclass(frozen=True)
class CostPoint:
    """A settled job of the initiative: what it cost, what it was asked to do, and what it did."""

    job_id: str
    charged_micros: int
    params: dict[str, Any]
    work_steps: Optional[int]


def cost_history(s: Session, *, initiative: str, device: str, rate_micros_per_hour: int, limit: int = 20) -> list[CostPoint]:
    """The latest jobs of ``initiative`` that ran on ``device`` at this rate and finished their work.

    Succeeded jobs, and budget-stopped ones that recorded how far they got (their charge bought
    exactly those steps).
    """
    rows = s.execute(
        select(Job.id, Job.charged_micros, Job.params, Job.work_steps)
        .where(Job.initiative == initiative, Job.device == device, Job.rate_micros_per_hour == rate_micros_per_hour)
        .where((Job.status == JobStatus.SUCCEEDED.value)
               | ((Job.status == JobStatus.BUDGET_STOPPED.value) & Job.work_steps.is_not(None)))
        .order_by(Job.finished_at.desc())
        .limit(limit)
    ).all()
    return [CostPoint(r.id, r.charged_micros, dict(r.params), r.work_steps) for r in rows]


def fleet_rate(s: Session) -> Optional[tuple[str, int]]:
    """The device and per-slot hourly rate jobs run at now: the most recently seen worker that
    reported its device, else the most recently settled job that recorded one."""
    worker = s.execute(
        select(WorkerRow.device, WorkerRow.price_micros_per_hour, WorkerRow.slots)
        .where(WorkerRow.device.is_not(None)).order_by(WorkerRow.last_seen.desc()).limit(1)
    ).one_or_none()
    if worker is not None:
        return worker.device, worker.price_micros_per_hour // max(1, worker.slots)
    job = s.execute(
        select(Job.device, Job.rate_micros_per_hour).where(Job.device.is_not(None), Job.rate_micros_per_hour.is_not(None))
        .order_by(Job.finished_at.desc()).limit(1)
    ).one_or_none()
    return None if job is None else (job.device, job.rate_micros_per_hour)


def job_notes(s: Session, *, job_id: str) -> list[tuple[int, str]]:
    """A job's warnings as (attempt, text), oldest first."""
    return [(n.attempt, n.text) for n in s.scalars(select(JobNote).where(JobNote.job_id == job_id).order_by(JobNote.id))]


# ---------------------------------------------------------------------------------------------
# The spend report


@dataclass(frozen=True)
class EntryPoint:
    budget: str
    kind: str
    amount_micros: int
    created_at: datetime
    job_id: Optional[str]


@dataclass(frozen=True)
class MetricPoint:
    job_id: str
    attempt: int
    name: str
    value: float
    slice: Optional[str]
    step: Optional[int]


@dataclass(frozen=True)
class FailurePoint:
    job_id: str
    perturbation: str
    slice: Optional[str]
    text: str
    expected: str
    predicted: str


@dataclass(frozen=True)
class NotePoint:
    job_id: str
    attempt: int
    text: str
    created_at: datetime


@dataclass(frozen=True)
class ReportData:
    """Everything the spend report draws, read in one transaction."""

    budgets: tuple[BudgetView, ...]
    entries: tuple[EntryPoint, ...]
    events: tuple[BudgetEvent, ...]
    jobs: tuple[JobView, ...]
    metrics: tuple[MetricPoint, ...]
    failure_counts: dict[str, int]
    failures: tuple[FailurePoint, ...]
    notes: tuple[NotePoint, ...]


def report_data(s: Session, *, budget: Optional[str] = None, failures_per_job: int = 20) -> ReportData:
    """The budgets (one, or all), their ledger entries and events, and their jobs' results."""
    budgets = (get_budget(s, name=budget),) if budget else tuple(list_budgets(s))
    names = [b.name for b in budgets]
    entries = s.execute(
        select(Budget.name, LedgerEntry.kind, LedgerEntry.amount_micros, LedgerEntry.created_at, LedgerEntry.job_id)
        .join(Budget, Budget.id == LedgerEntry.budget_id).where(Budget.name.in_(names))
        .order_by(LedgerEntry.created_at, LedgerEntry.id)
    ).all()
    jobs = tuple(j for name in names for j in list_jobs(s, budget=name, limit=1_000_000))
    ids = [j.id for j in jobs]
    metrics = s.execute(
        select(Metric.job_id, Metric.attempt, Metric.name, Metric.value, Metric.slice, Metric.step)
        .where(Metric.job_id.in_(ids)).order_by(Metric.id)
    ).all() if ids else []
    counts = dict(s.execute(
        select(FailureCase.job_id, func.count()).where(FailureCase.job_id.in_(ids)).group_by(FailureCase.job_id)
    ).all()) if ids else {}
    return ReportData(
        budgets=budgets,
        entries=tuple(EntryPoint(*row) for row in entries),
        events=tuple(e for name in names for e in budget_events(s, budget=name)),
        jobs=jobs,
        metrics=tuple(MetricPoint(*row) for row in metrics),
        failure_counts={k: int(v) for k, v in counts.items()},
        failures=tuple(_first_failures(s, [i for i in ids if i in counts], failures_per_job)),
        notes=tuple(NotePoint(n.job_id, n.attempt, n.text, n.created_at) for n in s.scalars(
            select(JobNote).where(JobNote.job_id.in_(ids)).order_by(JobNote.id))) if ids else (),
    )


def _first_failures(s: Session, job_ids: list[str], limit: int) -> list[FailurePoint]:
    out = []
    for job_id in job_ids:
        rows = s.scalars(select(FailureCase).where(FailureCase.job_id == job_id).order_by(FailureCase.id).limit(limit))
        out += [FailurePoint(f.job_id, f.perturbation, f.slice, f.text, f.expected, f.predicted) for f in rows]
    return out
