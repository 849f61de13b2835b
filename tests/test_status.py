"""One owner for a job's outcome: every stop reason, with the attempt count, maps to one next status."""

import pytest

from core.status import JobStatus, Stop, StopReason, describe, next_status


@pytest.mark.parametrize("stop, attempts, expected", [
    (None, 1, JobStatus.SUCCEEDED),
    (Stop(StopReason.BUDGET), 1, JobStatus.BUDGET_STOPPED),
    (Stop(StopReason.TIME_LIMIT), 3, JobStatus.BUDGET_STOPPED),
    (Stop(StopReason.CANCEL), 1, JobStatus.CANCELLED),
    (Stop(StopReason.PREEMPTION), 3, JobStatus.REQUEUED),
    (Stop(StopReason.ERROR, "bad data"), 1, JobStatus.FAILED),
    (Stop(StopReason.ERROR, "flaky download", retryable=True), 2, JobStatus.REQUEUED),
    (Stop(StopReason.ERROR, "flaky download", retryable=True), 3, JobStatus.FAILED),
    (Stop(StopReason.LOST), 2, JobStatus.REQUEUED),
    (Stop(StopReason.LOST), 3, JobStatus.FAILED),
])
def test_each_stop_reason_and_attempt_count_decides_the_next_status(stop, attempts, expected):
    assert next_status(stop, attempts=attempts, max_attempts=3) is expected


def test_preemptions_cost_no_attempt():
    # Three claims, two of them preempted: one attempt used of three, so a lost worker requeues again.
    assert next_status(Stop(StopReason.LOST), attempts=3, max_attempts=3, preemptions=2) is JobStatus.REQUEUED


@pytest.mark.parametrize("stop, attempts, preemptions, expected", [
    (Stop(StopReason.PREEMPTION), 7, 6, JobStatus.REQUEUED),  # however often: a preemption always moves the job
    (Stop(StopReason.ERROR, "flaky", retryable=True), 4, 2, JobStatus.REQUEUED),  # 2 of 3 attempts used
    (Stop(StopReason.ERROR, "flaky", retryable=True), 5, 2, JobStatus.FAILED),  # 3 of 3
    (Stop(StopReason.LOST), 4, 1, JobStatus.FAILED),
    (Stop(StopReason.CANCEL), 4, 3, JobStatus.CANCELLED),
    (Stop(StopReason.BUDGET), 2, 1, JobStatus.BUDGET_STOPPED),
])
def test_only_attempts_that_were_not_preempted_count_against_max_attempts(stop, attempts, preemptions, expected):
    assert next_status(stop, attempts=attempts, max_attempts=3, preemptions=preemptions) is expected


def test_a_cancel_is_described_as_a_cancel_not_as_a_spent_reservation():
    assert describe(Stop(StopReason.CANCEL)) == "cancelled by user"
    assert "reservation" in describe(Stop(StopReason.BUDGET))
    assert describe(Stop(StopReason.ERROR, "ValueError: x")) == "failed: ValueError: x"
