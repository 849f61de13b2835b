"""``budgetq demo``: a plan run end to end on this machine, then a table of impact and cost."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from models import queries
from models.db import Ledger
from core.errors import ConfigError, JobsUnfinished
from core.money import format_micros
from core.settings import Settings, mask_url
from producer.admission import run_plan
from producer.plan import Plan, load_plan
from producer.render import improvement_tables, say, table
from producer.summary import summarize


def examples_dir() -> Path:
    """The example plans: ``producer/examples`` in an installed package, the top-level ``examples/`` in a checkout."""
    here = Path(__file__).resolve().parent
    for folder in (here / "examples", here.parent / "examples"):
        if (folder / "demo.yaml").is_file():
            return folder
    raise ConfigError(f"budgetq's example plans are missing (looked in {here / 'examples'}); pass --plan PLAN.yaml or reinstall budgetq")


def run_demo(settings: Settings, store: Ledger, *, plan_path: Path) -> None:
    """Admit the plan under a fresh budget, drain it with a burst worker, print what it bought.

    Raises ``JobsUnfinished`` (exit 6) after a line per job that did not succeed.
    """
    plan = load_plan(plan_path, extra_initiatives=settings.extra_initiatives)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    plan = Plan(name=f"{plan.name}-{stamp}", budget=f"{plan.budget}-{stamp}", total_micros=plan.total_micros,
                entries=plan.entries, max_attempts=plan.max_attempts)
    decisions = run_plan(store, settings, plan, partial=True)
    say(f"admitted {sum(d.admitted for d in decisions)} of {len(decisions)} jobs against budget {plan.budget}")
    started = time.monotonic()
    worker = subprocess.run([sys.executable, "-m", "producer", "worker", "--burst", "--loglevel", "warning"], env=os.environ.copy())
    say(f"worker drained the queue in {time.monotonic() - started:.1f}s")
    jobs = _report(store, plan.budget)
    lines = [f"{d.initiative} entry {d.entry}: rejected: {d.reason}" for d in decisions if not d.admitted]
    lines += [f"{job.initiative} job {job.id}: {_outcome(job)}" for job in jobs if job.status != "succeeded"]
    for line in lines:
        sys.stderr.write(mask_url(" ".join(line.split())) + "\n")
    if lines or worker.returncode != 0:
        worker_said = f"; the worker exited with {worker.returncode}" if worker.returncode != 0 else ""
        raise JobsUnfinished(
            f"{len(lines)} of {len(decisions)} demo jobs did not succeed{worker_said};"
            " `budgetq results --job ID` shows what a job logged"
        )


def _outcome(job) -> str:
    """``failed: PermanentError: ...``: the job's status, then its error (which often repeats the status)."""
    return job.status + (f": {job.error.removeprefix(job.status + ': ')}" if job.error else "")


def _report(store: Ledger, budget: str) -> list:
    with store.session() as s:
        jobs = sorted(queries.list_jobs(s, budget=budget), key=lambda j: j.rank)
        results = {j.id: queries.job_results(s, job_id=j.id)[0] for j in jobs}
        groups = summarize(queries.improvement_rows(s, budget=budget))
        view = queries.get_budget(s, name=budget)
        notes = queries.job_notes(s, job_ids=[j.id for j in jobs])
    rows = []
    for job in jobs:
        headline = _headline(results[job.id])
        wall = (job.finished_at - job.started_at).total_seconds() if job.finished_at and job.started_at else None
        rows.append([job.initiative, job.status, format_micros(job.charged_micros), "" if wall is None else f"{wall:.1f}s", headline])
    table(f"demo: budget {budget}", ["initiative", "status", "charged", "wall", "impact"], rows)
    improvement_tables(budget, groups)
    say(f"spent {format_micros(view.spent_micros)} of {format_micros(view.total_micros)}; {format_micros(view.left_micros)} left")
    for job in jobs:
        for note in notes.get(job.id, []):
            say(f"note on {job.initiative} job {job.id}: {note}")
    return jobs


def _headline(metrics) -> str:
    """The job's `improvement` if it logged one, else its first few unsliced metrics."""
    plain = [m for m in metrics if m.slice is None and m.step is None]
    chosen = [m for m in plain if m.name == "improvement"] or plain[:3]
    return ", ".join(f"{m.name}={m.value:.4g}" for m in chosen)
