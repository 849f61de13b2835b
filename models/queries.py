"""Reads of the ledger: budgets, jobs, results, the audit and the per-initiative summary.

Nothing here writes; every state change lives in ``models.ledger``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Optional

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from core.errors import NotFound
from core.status import FINAL_STATUSES
from models.schema import Artifact, Budget, FailureCase, Job, JobDependency, JobNote, LedgerEntry, Metric, Preemption, RejectedMessage
from models.views import (
    ArtifactRow,
    AuditProblem,
    BudgetView,
    FailureView,
    ImprovementRow,
    JobView,
    MetricView,
    PreemptionSummary,
    RejectedView,
    budget_view,
    job_view,
)

_FINAL = tuple(s.value for s in FINAL_STATUSES)


def get_budget(s: Session, *, name: str) -> BudgetView:
    row = s.scalars(select(Budget).where(Budget.name == name)).one_or_none()
    if row is None:
        raise NotFound(f"no budget named {name!r}; create it with `budgetq budget create {name} --total 1.00`")
    return budget_view(row)


def list_budgets(s: Session) -> list[BudgetView]:
    return [budget_view(b) for b in s.scalars(select(Budget).order_by(Budget.name))]


def get_job(s: Session, *, job_id: str) -> JobView:
    row = s.execute(
        select(Job, Budget.name).join(Budget, Budget.id == Job.budget_id).where(Job.id == job_id)
    ).one_or_none()
    if row is None:
        raise NotFound(f"no job {job_id!r}; list jobs with `budgetq jobs list`")
    after = tuple(s.scalars(select(JobDependency.after_job_id).where(JobDependency.job_id == job_id)))
    return job_view(row[0], row[1], after)


def list_jobs(
    s: Session, *, budget: Optional[str] = None, status: Optional[str] = None, initiative: Optional[str] = None, limit: int = 200
) -> list[JobView]:
    query = select(Job, Budget.name).join(Budget, Budget.id == Job.budget_id)
    if budget:
        query = query.where(Budget.name == budget)
    if status:
        query = query.where(Job.status == status)
    if initiative:
        query = query.where(Job.initiative == initiative)
    rows = s.execute(query.order_by(Job.created_at.desc(), Job.rank).limit(limit)).all()
    return [job_view(job, name, ()) for job, name in rows]


def job_results(s: Session, *, job_id: str) -> tuple[list[MetricView], list[ArtifactRow]]:
    """A job's metrics in the order logged, and its artifacts."""
    metrics = [MetricView(*row) for row in s.execute(
        select(Metric.name, Metric.value, Metric.slice, Metric.step, Metric.attempt).where(Metric.job_id == job_id).order_by(Metric.id))]
    artifacts = [ArtifactRow(*row) for row in s.execute(
        select(Artifact.name, Artifact.uri, Artifact.sha256, Artifact.bytes).where(Artifact.job_id == job_id).order_by(Artifact.id))]
    return metrics, artifacts


def any_running(s: Session, *, queues: list[str]) -> bool:
    """Whether some job on one of ``queues`` is running now."""
    return s.scalar(select(Job.id).where(Job.queue.in_(queues), Job.status == "running").limit(1)) is not None


def latest_succeeded(s: Session, *, initiative: str, limit: int = 50) -> list[JobView]:
    ids = s.scalars(
        select(Job.id)
        .where(Job.initiative == initiative, Job.status == "succeeded")
        .order_by(Job.finished_at.desc())
        .limit(limit)
    )
    return [get_job(s, job_id=i) for i in ids]


def audit(s: Session) -> list[AuditProblem]:
    """Check that the entries sum to every budget row and every job's charged amount."""
    problems: list[AuditProblem] = []
    sums = {
        (row.budget_id, row.kind): row.total
        for row in s.execute(
            select(LedgerEntry.budget_id, LedgerEntry.kind, func.sum(LedgerEntry.amount_micros).label("total"))
            .group_by(LedgerEntry.budget_id, LedgerEntry.kind)
        )
    }
    for b in s.scalars(select(Budget)):
        got = lambda kind: int(sums.get((b.id, kind), 0) or 0)  # noqa: E731
        expected = {
            "total": got("fund"),
            "spent": got("charge"),
            "reserved": got("reserve") - got("release") - got("charge"),
        }
        actual = {"total": b.total_micros, "spent": b.spent_micros, "reserved": b.reserved_micros}
        for field_name, value in expected.items():
            if value != actual[field_name]:
                problems.append(AuditProblem(f"budget {b.name}", f"{field_name} is {actual[field_name]} but entries sum to {value}"))
        if b.spent_micros + b.reserved_micros > b.total_micros:
            problems.append(AuditProblem(f"budget {b.name}", "spent + reserved exceeds total"))
    job_sums = {
        (row.job_id, row.kind): int(row.total)
        for row in s.execute(
            select(LedgerEntry.job_id, LedgerEntry.kind, func.sum(LedgerEntry.amount_micros).label("total"))
            .where(LedgerEntry.job_id.is_not(None))
            .group_by(LedgerEntry.job_id, LedgerEntry.kind)
        )
    }
    preempted = dict(s.execute(select(Preemption.job_id, func.count()).group_by(Preemption.job_id)).all())
    for job in s.scalars(select(Job)):
        if preempted.get(job.id, 0) != job.preemptions:
            problems.append(AuditProblem(f"job {job.id}", f"preemptions is {job.preemptions} but {preempted.get(job.id, 0)} are recorded"))
        charged = job_sums.get((job.id, "charge"), 0)
        held = job_sums.get((job.id, "reserve"), 0) - job_sums.get((job.id, "release"), 0) - charged
        if charged != job.charged_micros:
            problems.append(AuditProblem(f"job {job.id}", f"charged is {job.charged_micros} but charge entries sum to {charged}"))
        if held != job.reserved_micros:
            problems.append(AuditProblem(f"job {job.id}", f"reserved is {job.reserved_micros} but entries leave {held}"))
    return problems


SUMMARY_METRICS = ("improvement", "improvement.ci_low", "improvement.ci_high", "overall.accuracy_delta",
                   "overall.macro_f1_delta", "tradeoff")


def improvement_rows(s: Session, *, budget: str) -> list[ImprovementRow]:
    """Every job of ``budget`` with what it cost and, if it logged them, its summary metrics."""
    jobs = s.execute(
        select(Job.id, Job.initiative, Job.status, Job.charged_micros, Job.idempotency_key)
        .join(Budget, Budget.id == Job.budget_id)
        .where(Budget.name == budget)
        .order_by(Job.created_at, Job.rank)
    ).all()
    values: dict[str, dict[str, float]] = {}
    found = s.execute(
        select(Metric.job_id, Metric.name, Metric.value)
        .join(Job, Job.id == Metric.job_id)
        .join(Budget, Budget.id == Job.budget_id)
        .where(Budget.name == budget, Metric.name.in_(SUMMARY_METRICS), Metric.slice.is_(None), Metric.step.is_(None))
        .order_by(Metric.id)
    )
    for job_id, name, value in found:
        values.setdefault(job_id, {})[name] = value  # the last one logged wins
    return [ImprovementRow(j.id, j.initiative, j.status, j.charged_micros, j.idempotency_key, values.get(j.id, {})) for j in jobs]


def latest_budget(s: Session) -> Optional[str]:
    """The most recently created budget's name, if any."""
    return s.scalar(select(Budget.name).order_by(Budget.created_at.desc(), Budget.id.desc()).limit(1))


def job_by_key(s: Session, *, budget: str, key: str) -> Optional[JobView]:
    job_id = s.scalar(
        select(Job.id).join(Budget, Budget.id == Job.budget_id).where(Budget.name == budget, Job.idempotency_key == key)
    )
    return None if job_id is None else get_job(s, job_id=job_id)


def job_failures(s: Session, *, job_id: str, limit: int = 20) -> tuple[int, list[FailureView]]:
    """How many mispredictions a job reported, and the first ``limit`` of them."""
    count = s.scalar(select(func.count()).select_from(FailureCase).where(FailureCase.job_id == job_id)) or 0
    rows = s.execute(
        select(FailureCase.perturbation, FailureCase.slice, FailureCase.text, FailureCase.expected, FailureCase.predicted)
        .where(FailureCase.job_id == job_id).order_by(FailureCase.id).limit(limit))
    return count, [FailureView(*row) for row in rows]


def jobs_in_play(s: Session, *, queues: list[str], since: datetime) -> list[JobView]:
    """Jobs on ``queues`` that wait or run now, or finished since ``since``: what a worker's display follows."""
    rows = s.execute(
        select(Job, Budget.name)
        .join(Budget, Budget.id == Job.budget_id)
        .where(Job.queue.in_(queues), or_(Job.status.not_in(_FINAL), Job.finished_at >= since))
        .order_by(Job.created_at, Job.rank)
    ).all()
    return [job_view(job, name, ()) for job, name in rows]


def job_notes(s: Session, *, job_ids: list[str]) -> dict[str, list[str]]:
    """The warnings each job recorded (a skipped step, a carved split), oldest first."""
    notes: dict[str, list[str]] = {}
    for job_id, text in s.execute(select(JobNote.job_id, JobNote.text).where(JobNote.job_id.in_(job_ids)).order_by(JobNote.id)):
        notes.setdefault(job_id, []).append(text)
    return notes
def preemption_summary(s: Session, *, budget: str) -> PreemptionSummary:
    """How many attempts of ``budget``'s jobs were preempted, what they charged, and what they lost."""
    row = s.execute(
        select(func.count(Preemption.id), func.coalesce(func.sum(Preemption.charged_micros), 0),
               func.coalesce(func.sum(Preemption.lost_micros), 0))
        .select_from(Preemption)
        .join(Job, Job.id == Preemption.job_id)
        .join(Budget, Budget.id == Job.budget_id)
        .where(Budget.name == budget)
    ).one()
    return PreemptionSummary(budget, int(row[0]), int(row[1]), int(row[2]))


def rejected_messages(s: Session, *, limit: int = 100) -> list[RejectedView]:
    """The newest queue messages workers acknowledged without running them."""
    rows = s.scalars(select(RejectedMessage).order_by(RejectedMessage.id.desc()).limit(limit))
    return [RejectedView(r.received_at, r.worker, r.queue, r.task, r.message_id, r.content_type, r.bytes, r.reason) for r in rows]
