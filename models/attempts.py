"""Reads per attempt, for checking a fleet after the fact: who runs what, and what each attempt charged.

The chaos benchmark and the queue benchmark read the ledger through these (nothing outside
``models/`` writes SQL). Nothing here writes.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Optional

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from models.schema import Job, LedgerEntry, Preemption, RejectedMessage


@dataclass(frozen=True)
class Outcome:
    """One job as a fleet audit sees it."""

    id: str
    initiative: str
    status: str
    attempts: int
    preemptions: int
    publications: int
    stop_reason: Optional[str]
    charged_micros: int


@dataclass(frozen=True)
class FleetAudit:
    jobs: tuple[Outcome, ...]
    charges_per_attempt: dict[tuple[str, int], int]  # (job, attempt): how many charge entries it has
    preempted: frozenset[tuple[str, int]]  # (job, attempt) pairs that ended as a preemption
    rejected_messages: int
    preemptions_by_initiative: dict[str, tuple[int, int, int]]  # initiative: (attempts, charged, lost micros)


def count_jobs(s: Session, *, statuses: Iterable[str]) -> int:
    """How many jobs are in one of ``statuses``."""
    return s.scalar(select(func.count()).select_from(Job).where(Job.status.in_(list(statuses))))


def running_attempts(s: Session, *, worker: str) -> list[tuple[str, int]]:
    """The (job, attempt) pairs the ledger says ``worker`` is running."""
    rows = s.execute(select(Job.id, Job.attempts).where(Job.worker == worker, Job.status == "running"))
    return [(job_id, attempt) for job_id, attempt in rows]


def fleet_audit(s: Session) -> FleetAudit:
    """Every job's outcome, the charge entries per attempt, the preempted attempts and the rejected messages."""
    jobs = tuple(Outcome(*row) for row in s.execute(
        select(Job.id, Job.initiative, Job.status, Job.attempts, Job.preemptions, Job.publications, Job.stop_reason,
               Job.charged_micros)))
    charges = s.execute(select(LedgerEntry.job_id, LedgerEntry.attempt, func.count()).where(LedgerEntry.kind == "charge")
                        .group_by(LedgerEntry.job_id, LedgerEntry.attempt))
    preempted = frozenset((p.job_id, p.attempt) for p in s.execute(select(Preemption.job_id, Preemption.attempt)))
    by_initiative = s.execute(
        select(Job.initiative, func.count(), func.sum(Preemption.charged_micros), func.sum(Preemption.lost_micros))
        .join(Job, Job.id == Preemption.job_id).group_by(Job.initiative))
    return FleetAudit(
        jobs=jobs, charges_per_attempt={(job_id, attempt): n for job_id, attempt, n in charges}, preempted=preempted,
        rejected_messages=s.scalar(select(func.count()).select_from(RejectedMessage)),
        preemptions_by_initiative={name: (n, int(charged), int(lost)) for name, n, charged, lost in by_initiative})
