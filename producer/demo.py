"""``budgetq demo``: a plan run end to end on this machine, then a table of impact and cost."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from models import queries
from models.db import Ledger
from core.money import format_micros
from core.settings import Settings
from producer.admission import run_plan
from producer.plan import Plan, load_plan
from producer.render import improvement_tables, say, table
from producer.summary import summarize

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def run_demo(settings: Settings, store: Ledger, *, plan_path: Path) -> None:
    """Admit the plan under a fresh budget, drain it with a burst worker, print what it bought."""
    plan = load_plan(plan_path, extra_initiatives=settings.extra_initiatives)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    plan = Plan(name=f"{plan.name}-{stamp}", budget=f"{plan.budget}-{stamp}", total_micros=plan.total_micros,
                entries=plan.entries, max_attempts=plan.max_attempts)
    decisions = run_plan(store, settings, plan, partial=True)
    say(f"admitted {sum(d.admitted for d in decisions)} of {len(decisions)} jobs against budget {plan.budget}")
    started = time.monotonic()
    worker = subprocess.run([sys.executable, "-m", "producer", "worker", "--burst", "--loglevel", "warning"], env=os.environ.copy())
    if worker.returncode != 0:
        say(f"the worker exited with {worker.returncode}")
    say(f"worker drained the queue in {time.monotonic() - started:.1f}s")
    _report(store, plan.budget)


def _report(store: Ledger, budget: str) -> None:
    with store.session() as s:
        jobs = sorted(queries.list_jobs(s, budget=budget), key=lambda j: j.rank)
        results = {j.id: queries.job_results(s, job_id=j.id)[0] for j in jobs}
        groups = summarize(queries.improvement_rows(s, budget=budget))
        view = queries.get_budget(s, name=budget)
    rows = []
    for job in jobs:
        headline = _headline(results[job.id])
        wall = (job.finished_at - job.started_at).total_seconds() if job.finished_at and job.started_at else None
        rows.append([job.initiative, job.status, format_micros(job.charged_micros), "" if wall is None else f"{wall:.1f}s", headline])
    table(f"demo: budget {budget}", ["initiative", "status", "charged", "wall", "impact"], rows)
    improvement_tables(budget, groups)
    say(f"spent {format_micros(view.spent_micros)} of {format_micros(view.total_micros)}; {format_micros(view.left_micros)} left")


def _headline(metrics) -> str:
    """The job's `improvement` if it logged one, else its first few unsliced metrics."""
    plain = [m for m in metrics if m.slice is None and m.step is None]
    chosen = [m for m in plain if m.name == "improvement"] or plain[:3]
    return ", ".join(f"{m.name}={m.value:.4g}" for m in chosen)
