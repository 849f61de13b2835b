"""``budgetq worker`` and ``budgetq demo``: run jobs on this machine (the worker imports torch; this module does not)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from core.errors import InvalidInput
from core.limits import check_name
from core.settings import load_settings
from producer.cli_support import open_ledger

LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


def worker(
    burst: bool = typer.Option(False, "--burst", help="Exit once the queues are drained."),
    queues: Optional[str] = typer.Option(None, "--queues", "-Q", help="Comma-separated queues (default: all)."),
    concurrency: Optional[int] = typer.Option(None, "--concurrency", "-c", min=1, max=1024, help="Job slots (default WORKER_CONCURRENCY)."),
    loglevel: str = typer.Option("info", help=f"Log level: {', '.join(LOG_LEVELS)}."),
    progress: Optional[bool] = typer.Option(
        None, "--progress/--no-progress",
        help="A live display of jobs, dollars and the running job's step and loss (default: with --burst on a terminal).",
    ),
) -> None:
    """Run a worker: pull jobs, run their initiatives, settle them in the ledger."""
    from worker.service import default_queues, run_worker

    if loglevel.lower() not in LOG_LEVELS:
        raise InvalidInput(f"--loglevel {loglevel!r} is not a log level; use one of {', '.join(LOG_LEVELS)}")
    settings = load_settings()
    chosen = [q.strip() for q in queues.split(",") if q.strip()] if queues else default_queues(settings)
    if not chosen:
        raise InvalidInput("--queues names no queue; write it like --queues calibrate,baseline")
    for queue in chosen:
        check_name(queue, what="--queues: queue")
    display = progress if progress is not None else burst and sys.stderr.isatty()
    run_worker(settings, queues=chosen, burst=burst, concurrency=concurrency or settings.concurrency,
               loglevel=loglevel.lower(), display=display)


def demo(
    plan: Optional[Path] = typer.Option(None, help="The plan to run (default: examples/demo.yaml)."),
) -> None:
    """Run a plan end to end on this machine (migrating the ledger first) and print its impact and cost.

    Exits 6 when a job did not succeed, after a line per such job with its status and error.
    """
    from producer.demo import examples_dir, run_demo

    settings, store = open_ledger(at_head=False)
    store.upgrade()
    run_demo(settings, store, plan_path=plan or examples_dir() / "demo.yaml")
