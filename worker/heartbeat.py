"""What an attempt costs and how it hears "stop": ``CostMeter`` and the ``Heartbeat`` thread.

The heartbeat records the metered cost in the ledger every few seconds, extends the lease, and
learns from the answer (or a preemption notice) whether the job should stop, and why.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Optional

from core.errors import LeaseLost
from core.settings import Settings
from core.status import StopReason
from models import ledger
from models.db import Ledger
from models.views import Claim
from worker import preemption

log = logging.getLogger("budgetq.worker")


class CostMeter:
    """Cost = price per hour x wall time / slots, in integer micro-dollars."""

    def __init__(self, *, price_micros_per_hour: int, slots: int) -> None:
        self.price = price_micros_per_hour
        self.slots = slots
        self.started = time.monotonic_ns()

    def cost_micros(self) -> int:
        elapsed_ns = time.monotonic_ns() - self.started
        return self.price * elapsed_ns // (3_600_000_000_000 * self.slots)

    def seconds_for(self, micros: int) -> Optional[float]:
        """How long ``micros`` lasts at this price, or None when the worker is free."""
        return None if self.price == 0 else micros * 3600 * self.slots / self.price


class Heartbeat(threading.Thread):
    """Every few seconds: record the metered cost, extend the lease, learn whether to stop."""

    def __init__(self, *, store: Ledger, settings: Settings, claim: Claim, meter: CostMeter) -> None:
        super().__init__(name=f"heartbeat-{claim.job_id}", daemon=True)
        self.store, self.settings, self.claim, self.meter = store, settings, claim, meter
        self.progress: Optional[dict[str, Any]] = None  # the payload's last report; replaced whole, never mutated
        self.stop_reason: Optional[StopReason] = None
        self.stopped = threading.Event()
        # Metered cost when the payload last saved a durable checkpoint (set by the context).
        self.checkpoint_micros = 0
        self._done = threading.Event()
        self._failing_since: Optional[float] = None

    def run(self) -> None:
        while not self._done.wait(self.settings.heartbeat_seconds):
            self.beat()

    def beat(self) -> None:
        if preemption.noticed():
            self.stop(StopReason.PREEMPTION)
        try:
            with self.store.session() as s:
                beat = ledger.heartbeat(
                    s, job_id=self.claim.job_id, attempt=self.claim.attempt, worker=self.settings.worker_name,
                    metered_micros=self.meter.cost_micros(), lease_seconds=self.settings.lease_seconds,
                    progress=self.progress,
                    checkpoint_micros=self.checkpoint_micros,
                )
        except LeaseLost:
            self.stop(StopReason.LOST)
            return
        except Exception as exc:  # noqa: BLE001 - a DB outage must not kill the job; it beats again once it is back
            if self._failing_since is None:
                self._failing_since = time.monotonic()
                log.warning("heartbeat for job %s failed; the job runs on and beats again when the database answers: %s",
                            self.claim.job_id, exc)
            return
        if self._failing_since is not None:
            log.warning("heartbeat for job %s is back after %.1fs", self.claim.job_id, time.monotonic() - self._failing_since)
            self._failing_since = None
        if beat.stop is not None:
            self.stop(beat.stop)

    def stop(self, reason: StopReason) -> None:
        if self.stop_reason is None:
            self.stop_reason = reason
        self.stopped.set()

    def close(self) -> None:
        self._done.set()
