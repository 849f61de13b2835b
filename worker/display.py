"""The live display of a burst worker on a terminal, drawn from the ledger about once a second.

It shows the jobs done of the total this worker follows (those on its queues that were waiting or
running when it started, and any admitted since), the dollars spent of their budgets, and each
running job's stage, step and loss: the payload reports them (``ctx.progress``), the heartbeat
carries the last report to the job row, and this thread reads it back. A line is printed above the
display as each job settles: its real outcome, its charge, its error and its notes.
"""

from __future__ import annotations

import sys
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Optional

from rich.console import Console, Group
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from core.money import format_micros
from core.status import FINAL_STATUSES
from models import queries
from models.db import Ledger
from models.views import BudgetView, JobView

_FINAL = {s.value for s in FINAL_STATUSES}
POLL_SECONDS = 1.0


@dataclass(frozen=True)
class Snapshot:
    """What the display shows at one moment."""

    jobs: list[JobView]
    budgets: list[BudgetView]

    @property
    def done(self) -> int:
        return sum(j.status in _FINAL for j in self.jobs)

    @property
    def spent_micros(self) -> int:
        """Settled charges plus what the running attempts have metered so far."""
        return sum(b.spent_micros for b in self.budgets) + sum(j.metered_micros for j in self.jobs if j.status == "running")

    @property
    def cap_micros(self) -> int:
        return sum(b.total_micros for b in self.budgets)


def read_snapshot(store: Ledger, *, queues: list[str], since: datetime) -> Snapshot:
    with store.session() as s:
        jobs = queries.jobs_in_play(s, queues=queues, since=since)
        budgets = [queries.get_budget(s, name=name) for name in sorted({j.budget for j in jobs})]
    return Snapshot(jobs, budgets)


def render(snapshot: Snapshot, *, log_path: Optional[Path] = None) -> Group:
    """The display: a jobs bar, a dollars bar, then one row per running job."""
    budgets = snapshot.budgets
    which = f"budget {budgets[0].name}" if len(budgets) == 1 else f"{len(budgets)} budgets"
    head = Table.grid(padding=(0, 1))
    for _ in range(3):
        head.add_column()
    total = len(snapshot.jobs)
    head.add_row("jobs", ProgressBar(total=max(total, 1), completed=snapshot.done, width=30), f"{snapshot.done}/{total} done")
    head.add_row("spent", ProgressBar(total=max(snapshot.cap_micros, 1), completed=snapshot.spent_micros, width=30),
                 f"{format_micros(snapshot.spent_micros)} of {format_micros(snapshot.cap_micros)} ({which})")
    running = Table.grid(padding=(0, 1))
    for _ in range(5):
        running.add_column()
    for job in (j for j in snapshot.jobs if j.status == "running"):
        running.add_row(*_running_row(job))
    waiting = sum(j.status not in _FINAL and j.status != "running" for j in snapshot.jobs)
    parts = [head, running, Text(f"{waiting} waiting" if waiting else "", style="dim")]
    if log_path is not None:
        parts.append(Text(f"worker log: {log_path}", style="dim"))
    return Group(*parts)


def _running_row(job: JobView) -> list:
    progress = job.progress or {}
    step, steps = progress.get("step"), progress.get("total")
    bar = ProgressBar(total=steps, completed=step, width=20) if step is not None and steps else Text("running", style="dim")
    where = f"{progress.get('stage') or ''} step {step}/{steps}".strip() if step is not None else ""
    loss = f"loss {progress['loss']:.4f}" if progress.get("loss") is not None else ""
    cost = f"{format_micros(job.metered_micros)} of {format_micros(job.estimate_micros)}"
    return [Text(f"▶ {job.initiative} {job.id[:8]}", style="bold"), bar, where, loss, cost]


def outcome_line(job: JobView, notes: list[str]) -> Text:
    """The line printed once a job settles: its real status, charge and wall time, its error and notes."""
    ok = job.status == "succeeded"
    wall = (job.finished_at - job.started_at).total_seconds() if job.finished_at and job.started_at else None
    line = Text("✓ " if ok else "✗ ", style="green" if ok else "red")
    line.append(f"{job.initiative} {job.id[:8]} {job.status}", style="bold")
    line.append(f", charged {format_micros(job.charged_micros)}" + (f" in {wall:.1f}s" if wall is not None else ""))
    if job.error and not ok:
        line.append(f": {job.error.removeprefix(job.status + ': ')}")
    for note in notes:
        line.append(f"\n    note: {note}", style="yellow")
    return line


class LiveDisplay(threading.Thread):
    """Polls the ledger and redraws; prints each job's outcome above the display as it settles."""

    def __init__(self, *, store: Ledger, queues: list[str], log_path: Optional[Path] = None) -> None:
        super().__init__(name="budgetq-display", daemon=True)
        self.store, self.queues, self.log_path = store, queues, log_path
        # A job that finished a moment before the worker started is not this worker's.
        self.since = datetime.now(timezone.utc) - timedelta(seconds=1)
        self.announced: set[str] = set()
        self._done = threading.Event()
        # The real terminal: Celery redirects sys.stdout and sys.stderr into its log.
        self.console = Console(file=sys.__stderr__, highlight=False)

    def run(self) -> None:
        with Live(console=self.console, refresh_per_second=4, redirect_stdout=False, redirect_stderr=False) as live:
            while True:
                stopping = self._done.wait(POLL_SECONDS)
                try:
                    self._update(live)
                except Exception:  # noqa: BLE001 - a display must never take the worker down; the log has the rest
                    pass
                if stopping:
                    break

    def _update(self, live: Live) -> None:
        snapshot = read_snapshot(self.store, queues=self.queues, since=self.since)
        settled = [j for j in snapshot.jobs if j.status in _FINAL and j.id not in self.announced]
        if settled:
            with self.store.session() as s:
                notes = queries.job_notes(s, job_ids=[j.id for j in settled])
            for job in settled:
                live.console.print(outcome_line(job, notes.get(job.id, [])))
                self.announced.add(job.id)
        live.update(render(snapshot, log_path=self.log_path))

    def close(self) -> None:
        """Draw once more (the last outcomes) and stop."""
        self._done.set()
        self.join(timeout=10)
