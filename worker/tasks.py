"""The one task: a thin adapter from a Celery message to ``Runtime.execute``."""

from __future__ import annotations

import logging

from celery.worker.request import Request

from core.queue import RUN_JOB, default_app
from worker.runtime import runtime

log = logging.getLogger("budgetq.worker")


class BudgetedRequest(Request):
    """A request whose Celery time limits come from the job's reservation at this worker's price.

    The worker's main process reads them when it hands the message to a pool process, so the
    hard limit holds even for a payload stuck in native code.
    """

    _limits: tuple | None = None

    @property
    def time_limits(self):
        if self._limits is None:
            try:
                reserved = self._request_dict.get("budgetq_reserved_micros")
                self._limits = runtime().time_limits(self.args[0], reserved)
            except Exception:  # noqa: BLE001 - an unknown job is refused by its claim, not here
                log.warning("no time limit for %s", self.args, exc_info=True)
                self._limits = (None, None)
        return self._limits

    @time_limits.setter
    def time_limits(self, value) -> None:
        # Every message carries a `timelimit` header, [None, None] unless the sender set one;
        # only a real limit from the sender overrides the one derived from the reservation.
        if value and any(limit is not None for limit in value):
            self._limits = tuple(value)


@default_app().task(name=RUN_JOB, Request=BudgetedRequest, acks_late=True, ignore_result=True)
def run_job(job_id: str) -> str:
    return runtime().execute(job_id)
