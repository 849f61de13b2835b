"""Settlements that finished while the database was unreachable, kept on the worker's disk.

A job that finished its work must not run again because the ledger was down at that moment. The
pool process writes everything the settlement needs to ``$BUDGETQ_HOME/spool/<job>-<attempt>.json``
(written whole, then renamed) and moves on; the worker's upkeep settles the spooled files as soon
as the database answers, before it does anything else, and removes each once it is settled.
Settlement is idempotent per (job, attempt), so a file settled twice changes nothing.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

from core.status import JobStatus, Stop, StopReason
from models.views import ArtifactRow, Usage
from worker.context import FailureRow, MetricRow

log = logging.getLogger("budgetq.worker")


@dataclass(frozen=True)
class Settlement:
    """Everything ``ledger.settle_job`` needs for one attempt, plain enough to write as JSON."""

    job_id: str
    attempt: int
    worker: str
    initiative: str
    status: JobStatus
    cost_micros: int
    stop: Optional[Stop] = None
    checkpoint_micros: int = 0
    metrics: list[MetricRow] = field(default_factory=list)
    artifacts: list[ArtifactRow] = field(default_factory=list)
    failures: list[FailureRow] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    usage: Optional[Usage] = None  # where the attempt ran and the training it did, for forecasts

    def to_json(self) -> str:
        data = asdict(self)
        data["status"] = self.status.value
        data["stop"] = None if self.stop is None else {**asdict(self.stop), "reason": self.stop.reason.value}
        return json.dumps(data)

    @classmethod
    def from_json(cls, text: str) -> "Settlement":
        data: dict[str, Any] = json.loads(text)
        stop = data.pop("stop")
        usage = data.pop("usage", None)
        return cls(
            **{k: v for k, v in data.items() if k not in ("status", "metrics", "artifacts", "failures")},
            status=JobStatus(data["status"]),
            stop=None if stop is None else Stop(StopReason(stop["reason"]), stop["detail"], stop["retryable"]),
            usage=None if usage is None else Usage(**usage),
            metrics=[MetricRow(**m) for m in data["metrics"]],
            artifacts=[ArtifactRow(**a) for a in data["artifacts"]],
            failures=[FailureRow(**f) for f in data["failures"]],
        )


class Spool:
    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def put(self, settlement: Settlement) -> Path:
        """Write the settlement durably (fsync, then rename): it survives the worker process."""
        self.folder.mkdir(parents=True, exist_ok=True)
        final = self.folder / f"{settlement.job_id}-{settlement.attempt}.json"
        partial = final.with_suffix(".partial")
        with open(partial, "w") as handle:
            handle.write(settlement.to_json())
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(partial, final)
        return final

    def pending(self) -> list[tuple[Path, Settlement]]:
        found = []
        for path in sorted(self.folder.glob("*.json")) if self.folder.is_dir() else ():
            try:
                found.append((path, Settlement.from_json(path.read_text())))
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.error("spooled settlement %s is unreadable (%s); moving it aside", path, exc)
                path.rename(path.with_suffix(".unreadable"))
        return found

    def remove(self, path: Path) -> None:
        path.unlink(missing_ok=True)

    def __len__(self) -> int:
        return len(list(self.folder.glob("*.json"))) if self.folder.is_dir() else 0
