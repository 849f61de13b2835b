"""The ledger schema: typed SQLAlchemy 2.0 models.

Money columns are BIGINT micro-dollars. The invariant ``spent + reserved <= total`` is a CHECK
constraint, so no code path, ours or a hand-written SQL session, can overspend a budget.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Optional

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from core.status import JobStatus, StopReason

JOB_STATUSES = tuple(s.value for s in JobStatus)
STOP_REASONS = tuple(r.value for r in StopReason)
ENTRY_KINDS = ("fund", "reserve", "release", "charge")


class Base(DeclarativeBase):
    pass


class Budget(Base):
    __tablename__ = "budgets"
    __table_args__ = (
        CheckConstraint(
            "total_micros >= 0 AND spent_micros >= 0 AND reserved_micros >= 0"
            " AND spent_micros + reserved_micros <= total_micros",
            name="budget_never_overspent",
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    total_micros: Mapped[int] = mapped_column(BigInteger)
    spent_micros: Mapped[int] = mapped_column(BigInteger, default=0)
    reserved_micros: Mapped[int] = mapped_column(BigInteger, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        UniqueConstraint("budget_id", "idempotency_key", name="job_key_unique_per_budget"),
        CheckConstraint(
            "charged_micros >= 0 AND reserved_micros >= 0 AND metered_micros >= 0"
            " AND charged_micros + reserved_micros <= estimate_micros",
            name="job_never_charged_past_estimate",
        ),
        CheckConstraint("status IN ('" + "','".join(JOB_STATUSES) + "')", name="job_status_known"),
        CheckConstraint("stop_reason IS NULL OR stop_reason IN ('" + "','".join(STOP_REASONS) + "')", name="job_stop_reason_known"),
        CheckConstraint("preemptions >= 0 AND preemptions <= attempts", name="job_preemptions_within_attempts"),
        Index("jobs_by_status", "status", "lease_until"),
        Index("jobs_by_budget", "budget_id", "created_at"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    budget_id: Mapped[int] = mapped_column(ForeignKey("budgets.id"))
    initiative: Mapped[str] = mapped_column(String(100))
    queue: Mapped[str] = mapped_column(String(100))
    params: Mapped[dict[str, Any]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(20))
    rank: Mapped[int] = mapped_column(Integer, default=0)
    estimate_micros: Mapped[int] = mapped_column(BigInteger)
    reserved_micros: Mapped[int] = mapped_column(BigInteger)
    charged_micros: Mapped[int] = mapped_column(BigInteger, default=0)
    # Cost of the running attempt as of its last heartbeat: what the reaper charges if it dies.
    metered_micros: Mapped[int] = mapped_column(BigInteger, default=0)
    # What the last closed attempt charged and released; written by the same guarded UPDATE that
    # closes the attempt, so the budget row and the ledger entries follow without a read-back.
    last_charge_micros: Mapped[int] = mapped_column(BigInteger, default=0)
    last_release_micros: Mapped[int] = mapped_column(BigInteger, default=0)
    # Every claim counts here (it keys idempotency); the claims that ended in a preemption also
    # count in ``preemptions``, and only ``attempts - preemptions`` is held against max_attempts.
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    preemptions: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    max_attempts: Mapped[int] = mapped_column(Integer)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    # The worker's machine is being reclaimed: its heartbeat tells the payload to checkpoint and stop
    # (a fallback for the signal its worker sends the pool processes).
    preempt_requested: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # Metered cost of the running attempt when it last saved a durable checkpoint (heartbeat-reported).
    checkpoint_micros: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    # Messages published for this job after its admission's own (requeues, re-sends): with ``attempts``
    # it counts the duplicates the queue carried.
    publications: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    worker: Mapped[Optional[str]] = mapped_column(String(200))
    lease_until: Mapped[Optional[datetime]] = mapped_column(DateTime(timezone=True))
    idempotency_key: Mapped[Optional[str]] = mapped_column(String(200))
    error: Mapped[Optional[str]] = mapped_column(Text)
    # Why the last attempt ended early (budget, cancel, preemption, time_limit, error, lost); NULL if it finished.
    stop_reason: Mapped[Optional[str]] = mapped_column(String(20))
    # The running attempt's progress as of its last heartbeat ({"step", "total", "loss", "stage"}); NULL
    # until the payload reports some. For displays only: nothing decides anything on it.
    progress: Mapped[Optional[dict[str, Any]]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    published_at: Mapped[Optional[datetime]] = mapped_column(DateTime(timezone=True))
    started_at: Mapped[Optional[datetime]] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[Optional[datetime]] = mapped_column(DateTime(timezone=True))
    # Where the last settled attempt ran and what it did, for cost forecasts: the device
    # (``cuda:<name>`` or ``cpu``), the hourly rate it was metered at (its worker's price / slots),
    # and the optimizer steps its training runs reached (NULL: it trains nothing).
    device: Mapped[Optional[str]] = mapped_column(String(100))
    rate_micros_per_hour: Mapped[Optional[int]] = mapped_column(BigInteger)
    work_steps: Mapped[Optional[int]] = mapped_column(BigInteger)


class JobDependency(Base):
    """``job_id`` may start only once ``after_job_id`` has succeeded."""

    __tablename__ = "job_dependencies"

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"), primary_key=True)
    after_job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"), primary_key=True)


class LedgerEntry(Base):
    """Append-only. Per budget: total = Σfund, spent = Σcharge, reserved = Σreserve − Σrelease − Σcharge."""

    __tablename__ = "ledger_entries"
    __table_args__ = (
        UniqueConstraint("job_id", "attempt", "kind", name="entry_once_per_attempt"),
        CheckConstraint("amount_micros >= 0", name="entry_amount_not_negative"),
        CheckConstraint("kind IN ('" + "','".join(ENTRY_KINDS) + "')", name="entry_kind_known"),
        Index("entries_by_budget", "budget_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    budget_id: Mapped[int] = mapped_column(ForeignKey("budgets.id"))
    job_id: Mapped[Optional[str]] = mapped_column(ForeignKey("jobs.id"))
    attempt: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(10))
    amount_micros: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Metric(Base):
    __tablename__ = "metrics"
    __table_args__ = (Index("metrics_by_job", "job_id", "name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"))
    attempt: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(String(200))
    value: Mapped[float]
    slice: Mapped[Optional[str]] = mapped_column(String(200))
    step: Mapped[Optional[int]] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Artifact(Base):
    __tablename__ = "artifacts"
    __table_args__ = (UniqueConstraint("job_id", "attempt", "name", name="artifact_once_per_attempt"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"))
    attempt: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(String(200))
    uri: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64))
    bytes: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class FailureCase(Base):
    """One misprediction from an evaluation or robustness report, for users and for ``augment``."""

    __tablename__ = "failure_cases"
    __table_args__ = (Index("failures_by_job", "job_id", "slice"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"))
    attempt: Mapped[int] = mapped_column(Integer)
    perturbation: Mapped[str] = mapped_column(String(100))
    slice: Mapped[Optional[str]] = mapped_column(String(200))
    text: Mapped[str] = mapped_column(Text)
    expected: Mapped[str] = mapped_column(String(200))
    predicted: Mapped[str] = mapped_column(String(200))


class JobNote(Base):
    """A warning a payload recorded about its attempt: a step it skipped, a split it carved."""

    __tablename__ = "job_notes"
    __table_args__ = (Index("notes_by_job", "job_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"))
    attempt: Mapped[int] = mapped_column(Integer)
    text: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class WorkerRow(Base):
    __tablename__ = "workers"

    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    host: Mapped[str] = mapped_column(String(200))
    price_micros_per_hour: Mapped[int] = mapped_column(BigInteger)
    spot: Mapped[bool] = mapped_column(Boolean)
    instance_type: Mapped[str] = mapped_column(String(100))
    slots: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_seen: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # ``cuda:<name>`` or ``cpu``, written by the worker's first job (the pool process that owns the device).
    device: Mapped[Optional[str]] = mapped_column(String(100))


class BudgetThreshold(Base):
    """Warn once spending (charged) reaches this share of the budget's total, in parts per million."""

    __tablename__ = "budget_thresholds"
    __table_args__ = (CheckConstraint("threshold_ppm > 0 AND threshold_ppm <= 1000000", name="threshold_is_a_share"),)

    budget_id: Mapped[int] = mapped_column(ForeignKey("budgets.id"), primary_key=True)
    threshold_ppm: Mapped[int] = mapped_column(Integer, primary_key=True)


class BudgetEvent(Base):
    """A threshold the budget's spending crossed; the unique key records each crossing exactly once."""

    __tablename__ = "budget_events"
    __table_args__ = (UniqueConstraint("budget_id", "threshold_ppm", name="event_once_per_threshold"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    budget_id: Mapped[int] = mapped_column(ForeignKey("budgets.id"))
    threshold_ppm: Mapped[int] = mapped_column(Integer)
    spent_micros: Mapped[int] = mapped_column(BigInteger)  # as the crossing statement saw them
    total_micros: Mapped[int] = mapped_column(BigInteger)
    job_id: Mapped[Optional[str]] = mapped_column(ForeignKey("jobs.id"))  # the settlement that crossed it, if any
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Preemption(Base):
    """An attempt that ended because its worker's machine was reclaimed; it cost the job no attempt.

    ``lost_micros`` is what the attempt spent after its last durable checkpoint (all of it for a
    payload that does not checkpoint): the money the preemption threw away.
    """

    __tablename__ = "preemptions"
    __table_args__ = (
        UniqueConstraint("job_id", "attempt", name="preemption_once_per_attempt"),
        CheckConstraint("charged_micros >= 0 AND lost_micros >= 0 AND lost_micros <= charged_micros", name="preemption_loss_within_charge"),
        Index("preemptions_by_job", "job_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"))
    attempt: Mapped[int] = mapped_column(Integer)
    worker: Mapped[str] = mapped_column(String(200))
    charged_micros: Mapped[int] = mapped_column(BigInteger)
    lost_micros: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class RejectedMessage(Base):
    """A queue message a worker acknowledged without running it, and why (malformed, forged, unknown)."""

    __tablename__ = "rejected_messages"
    __table_args__ = (Index("rejected_by_time", "received_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    worker: Mapped[str] = mapped_column(String(200))
    queue: Mapped[Optional[str]] = mapped_column(String(200))
    task: Mapped[Optional[str]] = mapped_column(String(200))
    message_id: Mapped[Optional[str]] = mapped_column(String(200))
    content_type: Mapped[Optional[str]] = mapped_column(String(200))
    bytes: Mapped[int] = mapped_column(BigInteger)
    reason: Mapped[str] = mapped_column(Text)
    excerpt: Mapped[str] = mapped_column(Text)


class Lease(Base):
    """A named role one worker holds at a time until ``expires_at`` (the upkeep leader)."""

    __tablename__ = "leases"

    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    holder: Mapped[str] = mapped_column(String(200))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
