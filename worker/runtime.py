"""Running one delivery of ``run_job``: claim, run the payload with its context, settle.

This module is the worker's part of a job's path: ``Runtime.execute`` claims it
(``ledger.claim_job``), runs its payload (``_run_payload``) and settles it (``_settle``, then
``settle_and_publish``). The cross-cutting pieces each sit in one small class beside it:
``CostMeter`` and ``Heartbeat`` (``worker.heartbeat``: what the attempt has cost; tells the ledger,
extends the lease, hears "stop"), and ``WorkerContext`` (``worker.ledger_context``: what the payload
sees; it buffers results so they are written with the settlement, in one transaction).

A fleet of spot machines loses things in ordinary ways, and each has its answer here: the database
going away (the claim waits for it, heartbeats skip a beat, a finished result is spooled to local
disk and settled later, never run again), a preemption notice (``worker.preemption``: the payload
checkpoints, the attempt is settled as preempted and requeued at once), and machines that share no
disk (``worker.storage``: checkpoints and artifacts in object storage).
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import threading
import time
from contextlib import contextmanager
from typing import Iterator, Optional

from celery.exceptions import SoftTimeLimitExceeded

import specs
from core.errors import BackendUnavailable, BudgetStop, ClaimRefused, LeaseLost, PermanentError, RetryableError
from core.money import format_micros
from core.queue import publish_after_commit
from core.settings import Settings, current_settings
from core.status import JobStatus, Stop, StopReason, describe, next_status
from models import ledger, queries, spend, views
from models.db import Ledger
from models.views import Claim, Closed, Usage
from worker import preemption
from worker.heartbeat import CostMeter, Heartbeat
from worker.initiatives import load_payload
from worker.ledger_context import WorkerContext
from worker.spool import Settlement, Spool
from worker.storage import Checkpoints, Store
from worker.usage import loaded_device, work_steps

log = logging.getLogger("budgetq.worker")
# A job's story in the worker log: started, progress now and then, and its real outcome. The worker
# keeps this logger at INFO whatever Celery's level, so these lines show in every log.
jobs_log = logging.getLogger("budgetq.jobs")


class Runtime:
    """What one worker process needs, built once per process (after the fork)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.store = Ledger(settings.database_url)
        self.spool = Spool(settings.spool_dir)
        self.pid = os.getpid()
        self._device: Optional[str] = None  # learned from the first job that loads torch
        self._stores: dict[str, Store] = {}

    def storage(self, which: str) -> Store:
        """The artifact or checkpoint store (built on first use: the main process rarely needs one)."""
        if which not in self._stores:
            location, variable = ((self.settings.artifact_url, "ARTIFACT_DIR") if which == "artifacts"
                                  else (self.settings.checkpoint_url, "CHECKPOINT_DIR"))
            self._stores[which] = Store(location, self.settings.storage_options, variable=variable)
        return self._stores[which]

    def limits_for(self, reserved: int) -> tuple[Optional[float], Optional[float]]:
        """Hard and soft limits for a reservation at this worker's price (None, None when free).

        The heartbeat stops a job cooperatively when its reservation is spent; the soft limit
        interrupts a payload that ignores ``should_stop()``; the hard limit kills its process.
        """
        seconds = CostMeter(price_micros_per_hour=self.settings.price_micros_per_hour, slots=self.settings.concurrency).seconds_for(reserved)
        if seconds is None:
            return None, None
        soft = seconds + max(2.0, 2 * self.settings.heartbeat_seconds)
        return soft + 10.0, soft

    def time_limits(self, job_id: str) -> tuple[Optional[float], Optional[float]]:
        """The limits for a job, from what the ledger still reserves for it (never from the message)."""

        def read() -> tuple[Optional[float], Optional[float]]:
            with self.store.session() as s:
                return self.limits_for(queries.get_job(s, job_id=job_id).reserved_micros)

        try:
            return read()
        except BackendUnavailable:
            return read()  # after a database restart a pooled connection may be dead; the pool starts afresh

    def execute(self, job_id: str) -> str:
        """Claim, run and settle one job. Returns the status it settled with."""
        preemption.listen()
        if preemption.noticed():
            return self._hand_back(job_id)
        claim = self._claim(job_id)
        if claim is None:
            return "handed back" if preemption.noticed() else "refused"
        jobs_log.info("job %s (%s) attempt %d/%d started; it may spend %s", claim.job_id, claim.initiative, claim.attempt,
                      claim.max_attempts, format_micros(claim.reserved_micros))
        meter = CostMeter(price_micros_per_hour=self.settings.price_micros_per_hour, slots=self.settings.concurrency)
        beat = Heartbeat(store=self.store, settings=self.settings, claim=claim, meter=meter)
        checkpoints = Checkpoints(self.storage("checkpoints"), claim.job_id, self.settings.checkpoint_dir / claim.job_id)
        ctx = WorkerContext(store=self.store, settings=self.settings, claim=claim, meter=meter, heartbeat=beat,
                            checkpoints=checkpoints, artifact_store=self.storage("artifacts"))
        beat.start()
        try:
            with _soft_time_limit(self.limits_for(claim.reserved_micros)[1]):
                stop = self._restore(ctx) or self._run_payload(claim, ctx)
        finally:
            beat.close()
        return self._settle(claim, ctx, stop)

    def _claim(self, job_id: str) -> Optional[Claim]:
        """Claim the job, waiting out a database outage; None if refused (or preempted while waiting)."""
        delay, waited = 0.5, 0.0
        while True:
            try:
                with self.store.session() as s:
                    return ledger.claim_job(s, job_id=job_id, worker=self.settings.worker_name, lease_seconds=self.settings.lease_seconds)
            except ClaimRefused as refused:
                log.info("not running %s: %s", job_id, refused)
                return None
            except BackendUnavailable as exc:
                if preemption.noticed():
                    self._hand_back(job_id)
                    return None
                if waited == 0:
                    log.warning("claim of job %s waits for the database: %s", job_id, exc)
                time.sleep(delay)
                waited += delay
                delay = min(delay * 2, 10.0)

    def _hand_back(self, job_id: str) -> str:
        """Preempted before claiming: publish the job again (its message was taken) for another worker."""
        try:
            with self.store.session() as s:
                ready = ledger.ready_to_publish(s, job_ids=[job_id])
            if ready:
                publish_after_commit(self.store, ready)
        except BackendUnavailable as exc:  # the upkeep leader re-sends it once the backends are back
            log.warning("could not hand job %s back: %s", job_id, exc)
        return "handed back"

    def _restore(self, ctx: WorkerContext) -> Optional[Stop]:
        """Fill the local checkpoint cache from the shared store; a store that fails is worth a retry."""
        try:
            fetched = ctx.checkpoints.restore()
        except Exception as exc:  # noqa: BLE001 - starting over would waste what the checkpoint saved
            return Stop(StopReason.ERROR, f"could not fetch checkpoints ({type(exc).__name__}: {_one_line(exc)})", retryable=True)
        if fetched:
            log.info("job %s resumes from %s", ctx.job_id, ", ".join(fetched))
        return None

    def _run_payload(self, claim: Claim, ctx: WorkerContext) -> Optional[Stop]:
        """Run the payload; return why it stopped early (None: it finished)."""
        try:
            spec = specs.get(claim.initiative, self.settings.extra_initiatives)
            load_payload(spec).run(specs.parse_params(claim.initiative, claim.params, self.settings.extra_initiatives), ctx)
        except BudgetStop as stop:
            # The payload stopped because it was told to: the heartbeat knows why (budget, cancel, preemption...).
            return Stop(ctx.heartbeat.stop_reason or StopReason.BUDGET, _one_line(stop))
        except SoftTimeLimitExceeded:
            return Stop(StopReason.TIME_LIMIT)
        except RetryableError as exc:
            return Stop(StopReason.ERROR, _one_line(exc), retryable=True)
        except PermanentError as exc:  # raised on purpose, with its reason: no traceback in the log
            return Stop(StopReason.ERROR, f"{type(exc).__name__}: {_one_line(exc)}")
        except Exception as exc:  # noqa: BLE001 - any other payload error fails the job, with its reason
            log.exception("job %s failed", claim.job_id)
            return Stop(StopReason.ERROR, f"{type(exc).__name__}: {_one_line(exc)}")
        reason = ctx.heartbeat.stop_reason
        # Told to stop but finished anyway: a cancel still cancels; a spent reservation still stops it.
        if reason in (StopReason.CANCEL, StopReason.BUDGET):
            return Stop(reason)
        # A payload that heard "preempted" and returned early (calibrate cuts its timing short) did not finish.
        if reason is StopReason.PREEMPTION and ctx.stop_seen:
            return Stop(reason, "the payload returned early")
        return None

    def _settle(self, claim: Claim, ctx: WorkerContext, stop: Optional[Stop]) -> str:
        cost = ctx.meter.cost_micros()
        if stop is not None and stop.reason is StopReason.PREEMPTION and cost >= claim.reserved_micros:
            stop = Stop(StopReason.BUDGET, "the reservation was spent when the preemption came")
        status = next_status(stop, attempts=claim.attempt, max_attempts=claim.max_attempts, preemptions=claim.preemptions)
        settlement = Settlement(
            job_id=claim.job_id, attempt=claim.attempt, worker=self.settings.worker_name, initiative=claim.initiative,
            status=status, cost_micros=cost, stop=stop,
            # The money a preemption loses is what was spent after the last durable checkpoint.
            checkpoint_micros=min(cost, claim.reserved_micros) - ctx.lost_micros(min(cost, claim.reserved_micros)),
            metrics=ctx.metrics, artifacts=ctx.artifacts, failures=ctx.failures, notes=ctx.warnings,
            usage=self._usage(ctx),
        )
        for delay in (0.5, 1.0, 2.0, None):
            try:
                closed = settle_and_publish(self.store, settlement)
                break
            except LeaseLost as lost:
                log.warning("job %s attempt %s finished as %s but is no longer ours: %s", claim.job_id, claim.attempt, status.value, lost)
                return "lease_lost"
            except BackendUnavailable as exc:
                if delay is None:
                    path = self.spool.put(settlement)
                    log.warning("job %s attempt %s finished (%s) while the database is unreachable (%s); spooled to %s,"
                                " settled once it is back", claim.job_id, claim.attempt, status.value, exc, path)
                    return "spooled"
                time.sleep(delay)
        # The job's last line states its real outcome (Celery's own "Task ... succeeded" line is
        # silenced: the task returns normally even when the job failed).
        jobs_log.log(
            logging.INFO if closed.status == "succeeded" else logging.WARNING,
            "job %s (%s) attempt %d/%d ended %s%s; charged %s of %s", claim.job_id, claim.initiative, claim.attempt,
            claim.max_attempts, closed.status, _why(stop), format_micros(closed.charge_micros), format_micros(claim.reserved_micros),
        )
        shutil.rmtree(ctx.work_path, ignore_errors=True)
        return closed.status

    def _usage(self, ctx: WorkerContext) -> Usage:
        """Where the attempt ran and the training it did (the device: from the first job that loads torch)."""
        self._device = self._device or loaded_device()
        rate = self.settings.price_micros_per_hour // self.settings.concurrency
        return Usage(self._device or "cpu", rate, work_steps(ctx.metrics))


def log_crossings(closed: views.Closed) -> None:
    """Warn about each spending threshold a settlement or a reap crossed (recorded once in the ledger)."""
    for event in closed.crossed:
        log.warning("budget %s: spending reached %s of its total (%s of %s) with job %s", event.budget, event.threshold,
                    format_micros(event.spent_micros), format_micros(event.total_micros), closed.job_id)


def _why(stop: Optional[Stop]) -> str:
    if stop is None:
        return ""
    return f" ({stop.detail or 'error'})" if stop.reason == StopReason.ERROR else f" ({describe(stop)})"


_recorded_device: dict[str, str] = {}


def settle_and_publish(store: Ledger, settlement: Settlement) -> Closed:
    """Settle one attempt and, after the commit, publish what it makes ready (the job itself if
    requeued, or the dependents it unblocked). Used by the pool process and by the spool flush."""
    with store.session() as s:
        closed = ledger.settle_job(
            s, job_id=settlement.job_id, attempt=settlement.attempt, worker=settlement.worker, status=settlement.status,
            cost_micros=settlement.cost_micros, stop=settlement.stop, metrics=settlement.metrics,
            artifacts=settlement.artifacts, failures=settlement.failures, notes=settlement.notes,
            checkpoint_micros=settlement.checkpoint_micros, usage=settlement.usage,
        )
        if settlement.usage is not None and settlement.usage.device != _recorded_device.get(settlement.worker):
            spend.set_worker_device(s, name=settlement.worker, device=settlement.usage.device)
            _recorded_device[settlement.worker] = settlement.usage.device  # once per process and device
        if closed.status == JobStatus.REQUEUED:
            ready = ledger.ready_to_publish(s, job_ids=[settlement.job_id])
        else:
            ready = ledger.ready_to_publish(s, after_job=settlement.job_id) if closed.status == JobStatus.SUCCEEDED else []
    log_crossings(closed)
    if ready:
        try:
            publish_after_commit(store, ready)
        except BackendUnavailable as exc:  # settled all the same; the upkeep leader re-sends missing messages
            log.warning("settled job %s but could not publish %s: %s", settlement.job_id, [r.id for r in ready], exc)
    return closed


@contextmanager
def _soft_time_limit(seconds: Optional[float]) -> Iterator[None]:
    """The soft time limit again, inside the pool process, a second after Celery's own.

    Celery's limits are set by the main process when it hands the message over; if it could not
    read the reservation then (the database was down), this one, from the claim, still holds.
    """
    if seconds is None or threading.current_thread() is not threading.main_thread():
        yield
        return

    def fire(_signum, _frame):
        raise SoftTimeLimitExceeded()

    previous = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds + 1.0)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


_runtime: Optional[Runtime] = None
_settings: Optional[Settings] = None


def configure(settings: Settings) -> None:
    """Set the settings this process and the pool processes forked from it run with."""
    global _settings
    _settings = settings


def runtime() -> Runtime:
    """This process's runtime, rebuilt after a fork so no DB connection crosses processes."""
    global _runtime
    if _runtime is None or _runtime.pid != os.getpid():
        _runtime = Runtime(_settings or current_settings())
    return _runtime
