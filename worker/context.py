"""What a payload sees of the queue: the ``JobContext`` protocol.

Payloads (``worker/initiatives/*``) depend on this protocol only, never on Celery or the ledger,
so each runs and tests without a broker. The worker's implementation (``worker.ledger_context``)
meters cost, heartbeats, buffers metrics and artifacts, and writes them when the job settles.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Protocol


@dataclass(frozen=True)
class MetricRow:
    name: str
    value: float
    slice: Optional[str] = None
    step: Optional[int] = None


@dataclass(frozen=True)
class FailureRow:
    perturbation: str
    slice: Optional[str]
    text: str
    expected: str
    predicted: str


@dataclass(frozen=True)
class PriorResult:
    """A settled job as later jobs read it from the results DB."""

    job_id: str
    initiative: str
    status: str
    params: dict[str, Any]
    metrics: tuple[MetricRow, ...] = ()
    artifacts: dict[str, str] = field(default_factory=dict)  # name -> where it is stored (a path or a URL)
    sha256: dict[str, str] = field(default_factory=dict)  # name -> its sha256, checked when it is fetched

    def metric(self, name: str, slice: Optional[str] = None) -> Optional[float]:
        """The last value logged under ``name`` (and ``slice``), or None."""
        found = [m.value for m in self.metrics if m.name == name and m.slice == slice]
        return found[-1] if found else None

    def by_slice(self, name: str) -> dict[str, float]:
        return {m.slice: m.value for m in self.metrics if m.name == name and m.slice is not None}


class JobContext(Protocol):
    job_id: str
    attempt: int
    initiative: str
    # Survives across attempts of this job: a resumed attempt finds the last checkpoint here.
    checkpoint_dir: Path
    # Scratch space for this attempt only.
    work_dir: Path

    def log_metric(self, name: str, value: float, *, slice: Optional[str] = None, step: Optional[int] = None) -> None:
        """Record a metric; it is written with the job's settlement (partial metrics survive a budget stop)."""

    def log_failures(self, rows: Iterable[FailureRow]) -> None:
        """Record mispredictions for the failure report."""

    def warn(self, message: str) -> None:
        """Record a warning on the job (a skipped step, a carved split); ``results`` and the report show it."""

    def save_artifact(self, name: str, path: Path) -> str:
        """Copy a file or folder into the artifact store; return where it is stored. Weights must be safetensors."""

    def fetch_artifact(self, prior: PriorResult, name: str) -> Path:
        """A local path holding ``prior``'s artifact ``name`` (downloaded if need be), its sha256 checked."""

    def checkpoint_saved(self, path: Path) -> None:
        """Call after saving a checkpoint folder under ``checkpoint_dir``: it is made durable (uploaded
        to the shared store, if any), and later work is what a preemption would lose."""

    def progress(self, *, step: int, total: int, loss: Optional[float] = None, stage: str = "") -> None:
        """Say how far the job is (a training loop calls it every step): the heartbeat carries the last
        report to the ledger for the live display, and off a terminal the worker logs it now and then."""

    def should_stop(self) -> bool:
        """True once the reservation is spent, the job is cancelled, its machine is being reclaimed
        (checkpoint now), or its lease is lost. Check between steps."""

    def cost_micros(self) -> int:
        """What this attempt has cost so far, in micro-dollars."""

    def reserved_micros(self) -> int:
        """What this attempt may spend in all."""

    def prior(self, job_id: str) -> PriorResult:
        """A settled job of this job's budget, by id (``PermanentError`` for another budget's job)."""

    def dependencies(self) -> list[PriorResult]:
        """The settled jobs this one ran ``after``."""
