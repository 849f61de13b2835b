"""The one task: a thin adapter from a Celery message to ``Runtime.execute``."""

from __future__ import annotations

import logging

from celery.worker.request import Request

from core.queue import RUN_JOB, default_app
from worker.runtime import runtime

log = logging.getLogger("budgetq.worker")


class BudgetedRequest(Request):
    """A request whose Celery time limits come from the job's reservation at this worker's price.

    The worker's main process reads them from the ledger when it hands the message to a pool
    process, so the hard limit holds even for a payload stuck in native code. Nothing in the
    message decides them: a forged ``timelimit`` (or any other header) changes nothing.
    """

    _limits: tuple | None = None

    @property
    def time_limits(self):
        if self._limits is None:
            try:
                self._limits = runtime().time_limits(self.args[0])
            except Exception as exc:  # noqa: BLE001 - an unknown job is refused by its claim; a DB outage by its wait
                log.warning("no Celery time limit for %s (%s); the pool process sets the soft limit from its claim", self.args, exc)
                self._limits = (None, None)
        return self._limits

    @time_limits.setter
    def time_limits(self, value) -> None:
        # Celery sets this from the message's `timelimit` header: ignored, the ledger decides.
        pass


@default_app().task(name=RUN_JOB, Request=BudgetedRequest, ignore_result=True)
def run_job(job_id: str) -> str:
    return runtime().execute(job_id)
