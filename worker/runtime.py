"""Running one delivery of ``run_job``: claim, run the payload with its context, settle.

The cross-cutting pieces each sit in one small class: ``CostMeter`` (what the attempt has cost),
``Heartbeat`` (tells the ledger, extends the lease, hears "stop"), and ``WorkerContext`` (what the
payload sees; it buffers results so they are written with the settlement, in one transaction).
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any, Optional

from celery.exceptions import SoftTimeLimitExceeded

import specs
from core.errors import BudgetStop, ClaimRefused, LeaseLost, PermanentError, RetryableError
from core.money import format_micros
from core.queue import publish_after_commit
from core.settings import Settings, current_settings
from core.status import Stop, StopReason, describe, next_status
from models import ledger, queries, spend, views
from models.db import Ledger
from models.views import Claim, Usage
from worker.context import FailureRow, MetricRow, PriorResult
from worker.initiatives import load_payload
from worker.usage import loaded_device, work_steps

log = logging.getLogger("budgetq.worker")
# A job's story in the worker log: started, progress now and then, and its real outcome. The worker
# keeps this logger at INFO whatever Celery's level, so these lines show in every log.
jobs_log = logging.getLogger("budgetq.jobs")


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
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.wait(self.settings.heartbeat_seconds):
            self.beat()

    def beat(self) -> None:
        try:
            with self.store.session() as s:
                beat = ledger.heartbeat(
                    s, job_id=self.claim.job_id, attempt=self.claim.attempt, worker=self.settings.worker_name,
                    metered_micros=self.meter.cost_micros(), lease_seconds=self.settings.lease_seconds,
                    progress=self.progress,
                )
        except LeaseLost:
            self.stop(StopReason.LOST)
            return
        except Exception:  # a DB blip must not kill the job; the lease has slack for a missed beat
            log.exception("heartbeat for job %s failed", self.claim.job_id)
            return
        if beat.stop is not None:
            self.stop(beat.stop)

    def stop(self, reason: StopReason) -> None:
        if self.stop_reason is None:
            self.stop_reason = reason
        self.stopped.set()

    def close(self) -> None:
        self._done.set()


class WorkerContext:
    """The ``JobContext`` a payload runs with, backed by the ledger."""

    def __init__(self, *, store: Ledger, settings: Settings, claim: Claim, meter: CostMeter, heartbeat: Heartbeat) -> None:
        self.store, self.settings, self.claim, self.meter, self.heartbeat = store, settings, claim, meter, heartbeat
        self.job_id, self.attempt, self.initiative = claim.job_id, claim.attempt, claim.initiative
        self.metrics: list[MetricRow] = []
        self.failures: list[FailureRow] = []
        self.artifacts: list[views.ArtifactRow] = []
        self.warnings: list[str] = []
        self.progress_log = ProgressLog(claim, every_seconds=settings.progress_log_seconds)

    # The folders are made when a payload first asks for them: most jobs never do.
    @property
    def checkpoint_dir(self) -> Path:
        return _made(self.settings.checkpoint_dir / self.job_id)

    @property
    def work_path(self) -> Path:
        return self.settings.home / "work" / self.job_id / str(self.attempt)

    @property
    def work_dir(self) -> Path:
        return _made(self.work_path)

    def log_metric(self, name: str, value: float, *, slice: Optional[str] = None, step: Optional[int] = None) -> None:
        self.metrics.append(MetricRow(name, float(value), slice, step))

    def log_failures(self, rows) -> None:
        self.failures.extend(rows)

    def warn(self, message: str) -> None:
        jobs_log.warning("job %s (%s) note: %s", self.job_id, self.initiative, message)
        self.warnings.append(message)

    def progress(self, *, step: int, total: int, loss: Optional[float] = None, stage: str = "") -> None:
        finite = loss is not None and math.isfinite(loss)
        report = {"step": int(step), "total": int(total), "loss": round(float(loss), 6) if finite else None, "stage": str(stage)[:40]}
        self.heartbeat.progress = report  # the next beat writes it to the job row
        self.progress_log.report(report, cost_micros=self.cost_micros())

    def save_artifact(self, name: str, path: Path) -> str:
        dest = self.settings.artifact_dir / self.job_id / str(self.attempt) / name
        if dest.exists():
            shutil.rmtree(dest) if dest.is_dir() else dest.unlink()
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(path, dest) if Path(path).is_dir() else shutil.copy2(path, dest)
        digest, size = _digest(dest)
        self.artifacts.append(views.ArtifactRow(name=name, uri=str(dest), sha256=digest, bytes=size))
        return str(dest)

    def cost_micros(self) -> int:
        return min(self.meter.cost_micros(), self.claim.reserved_micros)

    def reserved_micros(self) -> int:
        return self.claim.reserved_micros

    def should_stop(self) -> bool:
        if self.meter.cost_micros() >= self.claim.reserved_micros:
            self.heartbeat.stop(StopReason.BUDGET)
        return self.heartbeat.stopped.is_set()

    def prior(self, job_id: str) -> PriorResult:
        with self.store.session() as s:
            mine, other = queries.get_job(s, job_id=self.job_id), queries.get_job(s, job_id=job_id)
            if other.budget != mine.budget:
                raise PermanentError(f"job {job_id} belongs to budget {other.budget!r}, not {mine.budget!r}")
            return _prior(s, other)

    def dependencies(self) -> list[PriorResult]:
        with self.store.session() as s:
            job = queries.get_job(s, job_id=self.job_id)
            return [_prior(s, queries.get_job(s, job_id=dep)) for dep in job.after]


class ProgressLog:
    """Off a terminal, a running job's step, loss and cost in the worker log, at a readable cadence:
    a line once ``every_seconds`` have passed AND another 10% of the steps are done (the rarer of
    the two), counted afresh for each stage (an augment arm, a curriculum run)."""

    def __init__(self, claim: Claim, *, every_seconds: float) -> None:
        self.claim, self.every_seconds = claim, every_seconds
        self.last_time, self.last_step, self.stage = time.monotonic(), 0, None

    def report(self, report: dict[str, Any], *, cost_micros: int) -> None:
        if report["stage"] != self.stage:
            self.stage, self.last_step = report["stage"], 0
        now = time.monotonic()
        if now - self.last_time < self.every_seconds or report["step"] - self.last_step < max(1, report["total"] / 10):
            return
        self.last_time, self.last_step = now, report["step"]
        stage = f" {report['stage']}" if report["stage"] else ""
        loss = f", loss {report['loss']:.4f}" if report["loss"] is not None else ""
        jobs_log.info(
            "job %s (%s)%s step %d/%d%s; spent %s of %s", self.claim.job_id, self.claim.initiative, stage, report["step"],
            report["total"], loss, format_micros(cost_micros), format_micros(self.claim.reserved_micros),
        )


def _made(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _prior(s, job: views.JobView) -> PriorResult:
    metrics, artifacts = queries.job_results(s, job_id=job.id)
    return PriorResult(
        job_id=job.id, initiative=job.initiative, status=job.status, params=job.params,
        metrics=tuple(MetricRow(m.name, m.value, m.slice, m.step) for m in metrics),
        artifacts={a.name: a.uri for a in artifacts},
    )


def _digest(path: Path) -> tuple[str, int]:
    """sha256 of a file, or of a folder's sorted relative paths and contents; and the byte count."""
    sha, size = hashlib.sha256(), 0
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        sha.update(str(file.relative_to(path)).encode() if file != path else b"")
        with open(file, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                sha.update(chunk)
                size += len(chunk)
    return sha.hexdigest(), size


class Runtime:
    """What one worker process needs, built once per process (after the fork)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.store = Ledger(settings.database_url)
        self.pid = os.getpid()
        self._device: Optional[str] = None  # learned from the first job that loads torch
        self._device_recorded = False

    def time_limits(self, job_id: str, reserved: Optional[int] = None) -> tuple[Optional[float], Optional[float]]:
        """Hard and soft limits from what is still reserved, at this worker's price.

        The heartbeat stops a job cooperatively when its reservation is spent; the soft limit
        interrupts a payload that ignores ``should_stop()``; the hard limit kills its process.
        """
        if reserved is None:
            with self.store.session() as s:
                reserved = queries.get_job(s, job_id=job_id).reserved_micros
        seconds = CostMeter(price_micros_per_hour=self.settings.price_micros_per_hour, slots=self.settings.concurrency).seconds_for(reserved)
        if seconds is None:
            return None, None
        soft = seconds + max(2.0, 2 * self.settings.heartbeat_seconds)
        return soft + 10.0, soft

    def execute(self, job_id: str) -> str:
        """Claim, run and settle one job. Returns the status it settled with."""
        try:
            with self.store.session() as s:
                claim = ledger.claim_job(s, job_id=job_id, worker=self.settings.worker_name, lease_seconds=self.settings.lease_seconds)
        except ClaimRefused as refused:
            log.info("not running %s: %s", job_id, refused)
            return "refused"
        jobs_log.info("job %s (%s) attempt %d/%d started; it may spend %s", claim.job_id, claim.initiative, claim.attempt,
                      claim.max_attempts, format_micros(claim.reserved_micros))
        meter = CostMeter(price_micros_per_hour=self.settings.price_micros_per_hour, slots=self.settings.concurrency)
        beat = Heartbeat(store=self.store, settings=self.settings, claim=claim, meter=meter)
        ctx = WorkerContext(store=self.store, settings=self.settings, claim=claim, meter=meter, heartbeat=beat)
        beat.start()
        try:
            stop = self._run_payload(claim, ctx)
        finally:
            beat.close()
        return self._settle(claim, ctx, stop)

    def _run_payload(self, claim: Claim, ctx: WorkerContext) -> Optional[Stop]:
        """Run the payload; return why it stopped early (None: it finished)."""
        try:
            spec = specs.get(claim.initiative, self.settings.extra_initiatives)
            load_payload(spec).run(specs.parse_params(claim.initiative, claim.params, self.settings.extra_initiatives), ctx)
        except BudgetStop as stop:
            # The payload stopped because it was told to: the heartbeat knows why (budget, cancel, ...).
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
        return Stop(reason) if reason in (StopReason.CANCEL, StopReason.BUDGET) else None

    def _settle(self, claim: Claim, ctx: WorkerContext, stop: Optional[Stop]) -> str:
        status = next_status(stop, attempts=claim.attempt, max_attempts=claim.max_attempts)
        usage = self._usage(ctx)
        try:
            with self.store.session() as s:
                closed = ledger.settle_job(
                    s, job_id=claim.job_id, attempt=claim.attempt, worker=self.settings.worker_name, status=status,
                    cost_micros=ctx.meter.cost_micros(), stop=stop, metrics=ctx.metrics, artifacts=ctx.artifacts,
                    failures=ctx.failures, notes=ctx.warnings, usage=usage,
                )
                if self._device and not self._device_recorded:  # once per process, with a settlement
                    spend.set_worker_device(s, name=self.settings.worker_name, device=self._device)
                # What to publish next: the job itself if requeued, or the dependents it unblocked.
                if closed.status == "requeued":
                    ready = ledger.ready_to_publish(s, job_ids=[claim.job_id])
                else:
                    ready = ledger.ready_to_publish(s, after_job=claim.job_id) if closed.status == "succeeded" else []
        except LeaseLost as lost:
            log.warning("%s", lost)
            return "lease_lost"
        self._device_recorded = self._device is not None
        # The job's last line states its real outcome (Celery's own "Task ... succeeded" line is
        # silenced: the task returns normally even when the job failed).
        jobs_log.log(
            logging.INFO if closed.status == "succeeded" else logging.WARNING,
            "job %s (%s) attempt %d/%d ended %s%s; charged %s of %s", claim.job_id, claim.initiative, claim.attempt,
            claim.max_attempts, closed.status, _why(stop), format_micros(closed.charge_micros), format_micros(claim.reserved_micros),
        )
        log_crossings(closed)
        shutil.rmtree(ctx.work_path, ignore_errors=True)
        if ready:
            publish_after_commit(self.store, ready)
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
