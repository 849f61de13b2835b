"""Plain frozen views of ledger rows: what callers hold instead of ORM objects."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Optional

from core.money import format_share
from core.status import StopReason
from models.schema import Budget, Job


@dataclass(frozen=True)
class BudgetView:
    id: int
    name: str
    total_micros: int
    spent_micros: int
    reserved_micros: int

    @property
    def left_micros(self) -> int:
        return self.total_micros - self.spent_micros - self.reserved_micros


@dataclass(frozen=True)
class JobView:
    id: str
    budget: str
    initiative: str
    queue: str
    params: dict[str, Any]
    status: str
    rank: int
    estimate_micros: int
    reserved_micros: int
    charged_micros: int
    metered_micros: int
    attempts: int
    max_attempts: int
    worker: Optional[str]
    lease_until: Optional[datetime]
    idempotency_key: Optional[str]
    error: Optional[str]
    created_at: datetime
    stop_reason: Optional[str]
    started_at: Optional[datetime]
    finished_at: Optional[datetime]
    after: tuple[str, ...] = ()
    device: Optional[str] = None
    rate_micros_per_hour: Optional[int] = None
    work_steps: Optional[int] = None
    progress: Optional[dict[str, Any]] = None  # the running attempt's last reported step, total, loss and stage
    preemptions: int = 0


@dataclass(frozen=True)
class Claim:
    job_id: str
    attempt: int
    initiative: str
    params: dict[str, Any]
    reserved_micros: int
    lease_until: datetime
    max_attempts: int = 1
    preemptions: int = 0  # earlier claims that ended in a preemption (they cost no attempt)


@dataclass(frozen=True)
class Beat:
    """What a heartbeat heard back: None, or why the attempt must stop now."""

    stop: Optional[StopReason]


@dataclass(frozen=True)
class ArtifactRow:
    name: str
    uri: str
    sha256: str
    bytes: int


@dataclass(frozen=True)
class MetricView:
    """One logged metric as read back: which attempt logged it, under which slice and step."""

    name: str
    value: float
    slice: Optional[str]
    step: Optional[int]
    attempt: int


@dataclass(frozen=True)
class FailureView:
    """One misprediction a job reported."""

    perturbation: str
    slice: Optional[str]
    text: str
    expected: str
    predicted: str


@dataclass(frozen=True)
class Closed:
    """The outcome of closing an attempt: what it charged, what it released, where the job went."""

    job_id: str
    attempt: int
    status: str
    charge_micros: int
    release_micros: int
    replayed: bool = False
    crossed: tuple["BudgetEvent", ...] = ()  # thresholds this close made the budget's spending cross


@dataclass(frozen=True)
class Usage:
    """Where an attempt ran and what it did, recorded on the job at settle for cost forecasts."""

    device: str  # ``cuda:<name>`` or ``cpu``
    rate_micros_per_hour: int  # the worker's price / its slots: what this job was metered at
    work_steps: Optional[int] = None  # optimizer steps its training runs reached; None: no training


@dataclass(frozen=True)
class BudgetEvent:
    """Spending crossed ``threshold_ppm`` of the budget's total (recorded once per threshold)."""

    budget: str
    threshold_ppm: int
    spent_micros: int
    total_micros: int
    job_id: Optional[str]
    created_at: datetime

    @property
    def threshold(self) -> str:
        """The share as an exact percentage: ``50%``, ``12.5%``."""
        return format_share(self.threshold_ppm)


@dataclass(frozen=True)
class Ready:
    """A job that may be published: what the message needs."""

    id: str
    queue: str
    reserved_micros: int


@dataclass(frozen=True)
class PreemptionSummary:
    """What preemptions cost a budget: attempts moved elsewhere, what they charged, what they threw away."""

    budget: str
    attempts: int
    charged_micros: int
    lost_micros: int  # work done after the last durable checkpoint (the whole attempt if none)


@dataclass(frozen=True)
class RejectedView:
    received_at: datetime
    worker: str
    queue: Optional[str]
    task: Optional[str]
    message_id: Optional[str]
    content_type: Optional[str]
    bytes: int
    reason: str


@dataclass(frozen=True)
class AuditProblem:
    subject: str
    detail: str


@dataclass(frozen=True)
class ImprovementRow:
    """One job as the improvement summary reads it: its cost, and the summary metrics it logged."""

    job_id: str
    initiative: str
    status: str
    charged_micros: int
    idempotency_key: Optional[str]
    metrics: dict[str, float]


def budget_view(b: Budget) -> BudgetView:
    return BudgetView(b.id, b.name, b.total_micros, b.spent_micros, b.reserved_micros)


def job_view(j: Job, budget_name: str, after: tuple[str, ...]) -> JobView:
    return JobView(
        id=j.id, budget=budget_name, initiative=j.initiative, queue=j.queue, params=dict(j.params), status=j.status,
        rank=j.rank, estimate_micros=j.estimate_micros, reserved_micros=j.reserved_micros,
        charged_micros=j.charged_micros, metered_micros=j.metered_micros, attempts=j.attempts,
        max_attempts=j.max_attempts, worker=j.worker, lease_until=j.lease_until, idempotency_key=j.idempotency_key,
        error=j.error, created_at=j.created_at, stop_reason=j.stop_reason, started_at=j.started_at, finished_at=j.finished_at, after=after,
        device=j.device, rate_micros_per_hour=j.rate_micros_per_hour, work_steps=j.work_steps,
        progress=dict(j.progress) if j.progress else None,
        preemptions=j.preemptions,
    )
