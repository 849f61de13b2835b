"""The ``JobContext`` a payload runs with in the worker, backed by the ledger and the stores.

It buffers metrics, failure cases, artifacts and notes so they are written with the settlement, in
one transaction; it passes the payload's progress to the heartbeat (and, off a terminal, to the
worker log at a readable cadence); it reads earlier jobs' results, waiting out a database outage.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any, Callable, Optional, TypeVar

from core.errors import BackendUnavailable, BudgetStop, PermanentError
from core.money import format_micros
from core.settings import Settings
from core.status import StopReason
from models import queries, views
from models.db import Ledger
from models.views import Claim
from worker import preemption
from worker.context import FailureRow, MetricRow, PriorResult
from worker.heartbeat import CostMeter, Heartbeat
from worker.storage import Checkpoints, Store, fetch_artifact, store_artifact

# The job's story in the worker log (the same logger as the runtime's start and end lines).
jobs_log = logging.getLogger("budgetq.jobs")
T = TypeVar("T")


class WorkerContext:
    """The ``JobContext`` a payload runs with, backed by the ledger and the artifact/checkpoint stores."""

    def __init__(self, *, store: Ledger, settings: Settings, claim: Claim, meter: CostMeter, heartbeat: Heartbeat,
                 checkpoints: Checkpoints, artifact_store: Store) -> None:
        self.store, self.settings, self.claim, self.meter, self.heartbeat = store, settings, claim, meter, heartbeat
        self.checkpoints, self.artifact_store = checkpoints, artifact_store
        self.job_id, self.attempt, self.initiative = claim.job_id, claim.attempt, claim.initiative
        self.metrics: list[MetricRow] = []
        self.failures: list[FailureRow] = []
        self.artifacts: list[views.ArtifactRow] = []
        self.warnings: list[str] = []
        self.progress_log = ProgressLog(claim, every_seconds=settings.progress_log_seconds)
        self.checkpointed = False  # a durable checkpoint was saved in this attempt
        self.stop_seen = False  # should_stop() answered True to the payload

    # The folders are made when a payload first asks for them: most jobs never do.
    @property
    def checkpoint_dir(self) -> Path:
        return _made(self.checkpoints.local)

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
        uri, sha, size = store_artifact(self.artifact_store, Path(path), job_id=self.job_id, attempt=self.attempt, name=name)
        self.artifacts.append(views.ArtifactRow(name=name, uri=uri, sha256=sha, bytes=size))
        return uri

    def fetch_artifact(self, prior: PriorResult, name: str) -> Path:
        """A local path to ``prior``'s artifact ``name``, downloaded if need be, its sha256 checked."""
        if name not in prior.artifacts:
            raise PermanentError(f"job {prior.job_id} ({prior.initiative}) stored no {name!r} artifact")
        return fetch_artifact(prior.artifacts[name], prior.sha256.get(name), cache=self.settings.home / "cache" / "artifacts",
                              options=self.settings.storage_options)

    def checkpoint_saved(self, path: Path) -> None:
        """The payload saved a checkpoint folder under ``checkpoint_dir``: make it durable, note its cost."""
        try:
            self.checkpoints.upload(Path(path))
        except Exception as exc:  # noqa: BLE001 - training goes on; the checkpoint just is not durable
            self.warn(f"checkpoint {Path(path).name} could not be uploaded ({type(exc).__name__}: {exc})")
            return
        self.checkpointed = True
        self.heartbeat.checkpoint_micros = self.cost_micros()

    def cost_micros(self) -> int:
        return min(self.meter.cost_micros(), self.claim.reserved_micros)

    def reserved_micros(self) -> int:
        return self.claim.reserved_micros

    def should_stop(self) -> bool:
        if self.meter.cost_micros() >= self.claim.reserved_micros:
            self.heartbeat.stop(StopReason.BUDGET)
        if preemption.noticed():
            self.heartbeat.stop(StopReason.PREEMPTION)
        stopped = self.heartbeat.stopped.is_set()
        self.stop_seen = self.stop_seen or stopped
        return stopped

    def lost_micros(self, charged: int) -> int:
        """What a preemption now would throw away: the work since the last durable checkpoint."""
        return charged - min(self.heartbeat.checkpoint_micros, charged) if self.checkpointed else charged

    def prior(self, job_id: str) -> PriorResult:
        def read() -> PriorResult:
            with self.store.session() as s:
                mine, other = queries.get_job(s, job_id=self.job_id), queries.get_job(s, job_id=job_id)
                if other.budget != mine.budget:
                    raise PermanentError(f"job {job_id} belongs to budget {other.budget!r}, not {mine.budget!r}")
                return _prior(s, other)

        return _when_reachable(read, self.should_stop)

    def dependencies(self) -> list[PriorResult]:
        def read() -> list[PriorResult]:
            with self.store.session() as s:
                job = queries.get_job(s, job_id=self.job_id)
                return [_prior(s, queries.get_job(s, job_id=dep)) for dep in job.after]

        return _when_reachable(read, self.should_stop)


def _when_reachable(read: Callable[[], T], should_stop: Callable[[], bool]) -> T:
    """Run a ledger read, waiting out a database outage (capped backoff) unless the job is told to stop."""
    delay = 0.5
    while True:
        try:
            return read()
        except BackendUnavailable:
            if should_stop():
                raise BudgetStop("stopped while waiting for the database") from None
            time.sleep(delay)
            delay = min(delay * 2, 10.0)


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
        sha256={a.name: a.sha256 for a in artifacts},
    )
