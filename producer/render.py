"""Output: rich tables for people, ``--json`` for programs. Money is shown exact, in dollars."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from datetime import datetime
from typing import Any

from rich.console import Console
from rich.table import Table

from models.views import BudgetView, JobView, PreemptionSummary
from core.money import dollars, format_micros
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
