"""Output: rich tables for people, ``--json`` for programs. Money is shown exact, in dollars."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from datetime import datetime
from typing import Any, Optional

from rich.console import Console
from rich.table import Table

from core.phases import time_split
from models.views import BudgetEvent, BudgetView, JobView, PreemptionSummary
from producer.forecast import Forecast, PlanForecast
from core.money import dollars, format_micros, format_share
from core.settings import mask_url

# Off a terminal (pipes, CI logs) rich would wrap at 80 columns and split ids; use a wide line.
console = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 200)


def emit_json(payload: Any) -> None:
    sys.stdout.write(mask_url(json.dumps(payload, indent=2, default=_default)) + "\n")


def say(text: str) -> None:
    console.print(mask_url(text), markup=False)


def table(title: str, columns: list[str], rows: list[list[Any]]) -> None:
    t = Table(title=title, title_justify="left")
    for col in columns:
        t.add_column(col, overflow="fold")
    for row in rows:
        t.add_row(*(mask_url(str(c)) if c is not None else "" for c in row))
    console.print(t)


def budget_json(b: BudgetView) -> dict[str, Any]:
    return {
        "name": b.name, "total": dollars(b.total_micros), "spent": dollars(b.spent_micros),
        "reserved": dollars(b.reserved_micros), "left": dollars(b.left_micros),
        "total_micros": b.total_micros, "spent_micros": b.spent_micros, "reserved_micros": b.reserved_micros,
    }


def budget_row(b: BudgetView) -> list[str]:
    return [b.name, format_micros(b.total_micros), format_micros(b.spent_micros), format_micros(b.reserved_micros), format_micros(b.left_micros)]


BUDGET_COLUMNS = ["budget", "total", "spent", "reserved", "left"]


def preemption_json(p: PreemptionSummary) -> dict[str, Any]:
    return {"attempts": p.attempts, "charged": dollars(p.charged_micros), "lost": dollars(p.lost_micros),
            "charged_micros": p.charged_micros, "lost_micros": p.lost_micros}


def preemption_line(p: PreemptionSummary) -> str:
    if not p.attempts:
        return "preemptions: none"
    return (f"preemptions: {p.attempts} attempt(s) moved to other workers (no attempt counted), {format_micros(p.charged_micros)}"
            f" charged, {format_micros(p.lost_micros)} lost to preemption (work since the last checkpoint)")


def job_json(j: JobView) -> dict[str, Any]:
    out = asdict(j)
    for key in ("estimate_micros", "reserved_micros", "charged_micros", "metered_micros"):
        out[key.replace("_micros", "")] = dollars(getattr(j, key))
    out["after"] = list(j.after)
    return out


JOB_COLUMNS = ["id", "budget", "initiative", "status", "attempts", "estimate", "charged", "worker", "error"]


def job_row(j: JobView) -> list[Any]:
    return [
        j.id, j.budget, j.initiative, j.status, f"{j.attempts}/{j.max_attempts}", format_micros(j.estimate_micros),
        format_micros(j.charged_micros), j.worker, (j.error or "")[:80],
    ]


def _default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, (set, tuple)):
        return list(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def improvement_tables(budget: str, groups: list) -> None:
    """One table per unit, ranked by improvement per dollar; then what bought no improvement metric."""
    from producer.summary import describe

    by_unit: dict = {}
    for g in groups:
        by_unit.setdefault(g.unit, []).append(g)
    for unit, members in by_unit.items():
        if unit is None:
            continue
        rows = [[g.group, g.initiative, f"{g.succeeded}/{g.jobs}", format_micros(g.charged_micros), describe(g.improvement),
                 describe(g.accuracy_delta), describe(g.macro_f1_delta),
                 "" if g.per_dollar is None else f"{g.per_dollar:.4g}", "traded off" if g.tradeoff else ""]
                for g in members]
        table(f"budget {budget}: improvement per dollar in {unit.label} (ranked within this unit only)",
              ["entry", "initiative", "succeeded", "charged", f"improvement ({unit.label})", "accuracy Δ (pts)",
               "macro-F1 Δ (pts)", "per $", "flag"], rows)
    if not any(unit is not None for unit in by_unit):
        say(f"improvement per dollar: no job of budget {budget} reported an improvement yet"
            " (augment, curriculum, distill and prompt_loop do)")
    plain = by_unit.get(None, [])
    if plain:
        table(f"budget {budget}: jobs with no improvement metric", ["entry", "initiative", "succeeded", "charged"],
              [[g.group, g.initiative, f"{g.succeeded}/{g.jobs}", format_micros(g.charged_micros)] for g in plain])
# --- spend: thresholds, forecasts, a job's summary -------------------------------------------


def event_json(e: BudgetEvent) -> dict[str, Any]:
    return {"budget": e.budget, "threshold": format_share(e.threshold_ppm), "spent": dollars(e.spent_micros),
            "total": dollars(e.total_micros), "job_id": e.job_id, "at": e.created_at}


def event_line(e: BudgetEvent) -> str:
    at = e.created_at.strftime("%Y-%m-%d %H:%M:%S")
    by = f" (job {e.job_id})" if e.job_id else ""
    return f"{at} spending reached {format_share(e.threshold_ppm)}: {format_micros(e.spent_micros)} of {format_micros(e.total_micros)}{by}"


def forecast_json(f: Optional[Forecast], cap_micros: int) -> Any:
    if f is None:
        return "unknown"
    return {"low": dollars(f.low_micros), "expected": dollars(f.expected_micros), "high": dollars(f.high_micros),
            "low_micros": f.low_micros, "expected_micros": f.expected_micros, "high_micros": f.high_micros,
            "history_jobs": f.jobs, "method": f.method, "expected_exceeds_cap": f.expected_micros > cap_micros}


def dry_run_json(plan: Any, decisions: list[Any], fc: PlanForecast) -> dict[str, Any]:
    return {
        "plan": plan.name, "budget": plan.budget, "device": fc.device,
        "rate_per_hour": None if fc.rate_micros_per_hour is None else dollars(fc.rate_micros_per_hour),
        "left": dollars(fc.left_micros), "worst_case": dollars(fc.worst_case_micros),
        "worst_case_fits": fc.worst_case_micros <= fc.left_micros,
        "expected_total": dollars(fc.expected_micros), "unknown_forecasts": fc.unknown,
        "entries": [{
            "name": d.entry, "initiative": d.initiative, "estimate": format_micros(d.estimate_micros),
            "admitted": d.admitted, "reason": d.reason, "job_id": None,
            "forecast": forecast_json(fc.entries[d.entry], d.estimate_micros),
        } for d in decisions],
    }


def dry_run_row(d: Any, f: Optional[Forecast]) -> list[str]:
    decision = "admit" if d.admitted else f"reject: {d.reason}"
    if f is None:
        return [d.entry, d.initiative, format_micros(d.estimate_micros), "unknown", "unknown", "unknown", "none", decision]
    over = " (over its cap: it would stop on its budget)" if f.expected_micros > d.estimate_micros else ""
    return [d.entry, d.initiative, format_micros(d.estimate_micros), format_micros(f.low_micros),
            format_micros(f.expected_micros) + over, format_micros(f.high_micros), f"{f.jobs} job(s), {f.method}", decision]


def dry_run_totals(fc: PlanForecast) -> str:
    verdict = "fits" if fc.worst_case_micros <= fc.left_micros else "does NOT fit"
    unknown = f" plus {fc.unknown} unknown" if fc.unknown else ""
    return (f"worst case (every cap spent): {format_micros(fc.worst_case_micros)} against {format_micros(fc.left_micros)} left:"
            f" {verdict}; expected: {format_micros(fc.expected_micros)}{unknown}")


def headline_metrics(metrics: list[Any]) -> dict[str, float]:
    """The last value of every metric logged without a slice or a step, in the order first logged."""
    out: dict[str, float] = {}
    for m in metrics:
        if m.slice is None and m.step is None:
            out[m.name] = m.value
    return out


def results_header(j: JobView) -> list[str]:
    lines = [f"job {j.id} ({j.initiative}) in budget {j.budget}: {j.status} after {j.attempts} attempt(s)",
             f"cost: charged {format_micros(j.charged_micros)} of its {format_micros(j.estimate_micros)} estimate"
             + (f", {format_micros(j.reserved_micros)} still reserved" if j.reserved_micros else "")
             + (f"; ran on {j.device}" if j.device else "")
             + (f", {j.work_steps} training steps" if j.work_steps is not None else "")]
    if j.error:
        lines.append(f"stopped: {j.error}")
    return lines


def results_summary(j: JobView, metrics: list[Any], failure_count: int) -> dict[str, Any]:
    headline = headline_metrics(metrics)
    return {"status": j.status, "attempts": j.attempts, "charged": dollars(j.charged_micros),
            "estimate": dollars(j.estimate_micros), "device": j.device, "work_steps": j.work_steps,
            "headline": headline, "time": time_json(headline), "failure_count": failure_count}


def time_json(headline: dict[str, float]) -> Optional[dict[str, Any]]:
    """Where the last attempt's wall time went (seconds by phase), or None for a job that does not time its phases."""
    split = time_split(headline)
    if split is None:
        return None
    return {"seconds": split.seconds, "other_seconds": split.other, "wall_seconds": split.wall,
            "train_share": split.train_share, "train_samples_per_s": split.samples_per_s}
