"""A job's statuses, the reasons an attempt stops, and the one function that decides what comes next.

Every place that ends an attempt (the worker settling its own job, the reaper closing a dead
worker's, a cancel) names a ``StopReason``; ``next_status`` alone turns that reason and the job's
attempt count into the job's next status. A cancel is therefore recorded as ``cancelled``, a spent
reservation as ``budget_stopped``, and a spot preemption as a requeue that costs no attempt.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Optional


class JobStatus(StrEnum):
    ADMITTED = "admitted"  # reserved and published, waiting for a worker
    RUNNING = "running"  # claimed: a worker holds its lease
    REQUEUED = "requeued"  # an attempt ended and another may follow; the reservation is kept
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    BUDGET_STOPPED = "budget_stopped"  # the reservation was spent before the payload finished
    CANCELLED = "cancelled"


FINAL_STATUSES: frozenset[JobStatus] = frozenset(
    {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.BUDGET_STOPPED, JobStatus.CANCELLED}
)
CLAIMABLE_STATUSES: tuple[JobStatus, ...] = (JobStatus.ADMITTED, JobStatus.REQUEUED)
# A dependency that ended in one of these can never succeed: the jobs waiting on it are cancelled.
DEAD_ENDS: tuple[JobStatus, ...] = (JobStatus.FAILED, JobStatus.BUDGET_STOPPED, JobStatus.CANCELLED)


class StopReason(StrEnum):
    """Why an attempt ended before its payload returned."""

    BUDGET = "budget"  # the metered cost reached the reservation
    CANCEL = "cancel"  # a user cancelled the job
    PREEMPTION = "preemption"  # the (spot) machine is going away; the job moves elsewhere
    TIME_LIMIT = "time_limit"  # the time limit derived from the reservation fired
    ERROR = "error"  # the payload raised
    LOST = "lost"  # the worker stopped heartbeating (killed, crashed, cut off) and was reaped


@dataclass(frozen=True)
class Stop:
    """An attempt's end: its reason, one line of detail, and whether another attempt could succeed."""

    reason: StopReason
    detail: str = ""
    retryable: bool = False


def next_status(stop: Optional[Stop], *, attempts: int, max_attempts: int, preemptions: int = 0) -> JobStatus:
    """The job's status once an attempt ends with ``stop`` (None: the payload finished).

    ``attempts`` counts claims, this one included; ``preemptions`` of them were preemptions, which
    cost the job no attempt. A retryable error or a lost worker requeues the job while attempts
    are left, and fails it on the last one.
    """
    if stop is None:
        return JobStatus.SUCCEEDED
    if stop.reason in (StopReason.BUDGET, StopReason.TIME_LIMIT):
        return JobStatus.BUDGET_STOPPED
    if stop.reason is StopReason.CANCEL:
        return JobStatus.CANCELLED
    if stop.reason is StopReason.PREEMPTION:
        return JobStatus.REQUEUED
    retry = stop.retryable or stop.reason is StopReason.LOST
    return JobStatus.REQUEUED if retry and attempts - preemptions < max_attempts else JobStatus.FAILED


def describe(stop: Stop) -> str:
    """The line recorded as the job's error: the reason, then the detail."""
    summary = {
        StopReason.BUDGET: "stopped: the reservation was spent",
        StopReason.CANCEL: "cancelled by user",
        StopReason.PREEMPTION: "preempted: the worker's machine was reclaimed",
        StopReason.TIME_LIMIT: "stopped: the time limit derived from the reservation fired",
        StopReason.ERROR: "failed",
        StopReason.LOST: "lost: the worker stopped heartbeating",
    }[stop.reason]
    return f"{summary}: {stop.detail}" if stop.detail else summary
