"""One exception tree for budgetq. The type decides the handling.

Each error maps to one CLI exit code (``exit_code``) and one worker action (``requeue``).
A shutdown signal is not an ``Exception``: see ``BudgetStop``.
"""

from __future__ import annotations


class BudgetqError(Exception):
    """Base of every error budgetq raises on purpose."""

    exit_code = 1


class InvalidInput(BudgetqError):
    """The user typed something malformed: a money string, a plan, a parameter."""

    exit_code = 2


class ConfigError(BudgetqError):
    """A setting is missing or malformed, or the database is not at the expected revision."""

    exit_code = 2


class BudgetExhausted(BudgetqError):
    """An admission did not fit in what is left of the budget."""

    exit_code = 3

    def __init__(self, message: str, *, left_micros: int = 0) -> None:
        super().__init__(message)
        self.left_micros = left_micros


class NotFound(BudgetqError):
    exit_code = 4


class BackendUnavailable(BudgetqError):
    """The database or the broker cannot be reached."""

    exit_code = 5


class JobsUnfinished(BudgetqError):
    """A run ended but some of its jobs did not succeed (``budgetq demo``)."""

    exit_code = 6


class WorkerStopped(BudgetqError):
    """The worker stopped without being asked to (its consumer gave up): exit non-zero so a supervisor restarts it."""

    exit_code = 7


class ClaimRefused(BudgetqError):
    """A job is not claimable: a duplicate delivery, a cancelled job, or unmet dependencies."""


class LeaseLost(BudgetqError):
    """This worker no longer owns the attempt (it was reaped or cancelled)."""


class RetryableError(BudgetqError):
    """A payload failure worth another attempt (a preempted node, a flaky download)."""


class PermanentError(BudgetqError):
    """A payload failure that another attempt would repeat (bad data, a bad model path)."""


class BudgetStop(BaseException):
    """Raised inside a payload when its reservation is spent and it must stop now.

    A ``BaseException``, like ``SystemExit``, so a payload's broad ``except Exception`` cannot
    swallow it.
    """
