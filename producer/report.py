"""``budgetq report``: one static HTML page with PNG plots of where the money went and what it bought.

The page opens offline (no scripts or styles from a network; the plots are PNG files beside it,
linked by relative paths). Every section is always there; one with nothing to show says so. Money
in text is exact (``format_micros``); improvements are shown in their initiative's declared unit,
and a figure never puts two units on one axis.
"""

from __future__ import annotations

import html
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

from core.errors import InvalidInput
from core.money import format_micros
from models.history import MetricPoint, ReportData
from models.views import ImprovementRow, JobView

MAX_FIGURES = 12  # per section: a report of a long-running budget stays readable


@dataclass(frozen=True)
class Section:
    id: str
    title: str
    body: str  # HTML


class Results:
    """The jobs' metrics, indexed: scalars (no step), per-slice values and per-step series."""

    def __init__(self, data: ReportData) -> None:
        self.data = data
        self.jobs = {j.id: j for j in data.jobs}
        self._by_job: dict[str, list[MetricPoint]] = defaultdict(list)
        for m in data.metrics:
            self._by_job[m.job_id].append(m)

    def of(self, job_id: str) -> list[MetricPoint]:
        return self._by_job.get(job_id, [])

    def scalar(self, job_id: str, name: str, slice: Optional[str] = None) -> Optional[float]:
        found = [m.value for m in self.of(job_id) if m.name == name and m.slice == slice and m.step is None]
        return found[-1] if found else None

    def by_slice(self, job_id: str, name: str) -> dict[str, float]:
        return {m.slice: m.value for m in self.of(job_id) if m.name == name and m.slice is not None and m.step is None}

    def series(self, job_id: str, name: str) -> list[tuple[int, float, int]]:
        """(step, value, attempt) of a per-step metric; a later attempt's value at a step wins."""
        points = {m.step: (m.step, m.value, m.attempt) for m in self.of(job_id) if m.name == name and m.slice is None and m.step is not None}
        return [points[s] for s in sorted(points)]

    def by_slice_any_step(self, job_id: str, name: str) -> dict[str, float]:
        """Per-slice values whose step carries an index (the prompt loop's candidate), by slice."""
        return {m.slice: m.value for m in self.of(job_id) if m.name == name and m.slice is not None}

    def names(self, job_id: str, *, suffix: str, stepped: bool) -> list[str]:
        seen = dict.fromkeys(m.name for m in self.of(job_id) if m.name.endswith(suffix) and (m.step is not None) == stepped)
        return list(seen)

    def improvement_rows(self) -> list[ImprovementRow]:
        """Every job with its scalar metrics, as ``producer.summary`` reads them (the last value logged wins)."""
        return [ImprovementRow(j.id, j.initiative, j.status, j.charged_micros, j.idempotency_key,
                               {m.name: m.value for m in self.of(j.id) if m.slice is None and m.step is None})
                for j in self.data.jobs]

    def jobs_of(self, initiative: str, *, succeeded_only: bool = True) -> list[JobView]:
        jobs = [j for j in self.data.jobs if j.initiative == initiative and (j.status == "succeeded" or not succeeded_only)]
        return sorted(jobs, key=lambda j: j.created_at)


def write_report(data: ReportData, out: Path, *, extra_initiatives: str = "") -> Path:
    """Write ``out/index.html`` and its plots under ``out/img``; return the page's path."""
    try:
        return _write(data, Path(out), extra_initiatives)
    except OSError as exc:
        raise InvalidInput(f"--out {str(out)!r} cannot be written ({exc.strerror or exc}); pick a folder you can write") from None


def _write(data: ReportData, out: Path, extra_initiatives: str) -> Path:
    from producer import report_sections as build

    images = out / "img"
    images.mkdir(parents=True, exist_ok=True)
    for stale in images.glob("*.png"):
        stale.unlink()
    results = Results(data)
    sections = [
        build.burn_down(data, images),
        build.improvement(results, images, extra_initiatives),
        build.slice_f1(results, images),
        build.curves(results, images),
        build.robustness(results, images),
        build.out_of_scope(results, images),
        build.distill(results, images),
        build.prompts(results, images),
        build.failures(data, results),
        build.notes(data, results),
    ]
    index = out / "index.html"
    index.write_text(page(data, sections), encoding="utf-8")
    return index


# --- HTML ------------------------------------------------------------------------------------

esc = html.escape


def img(name: str, alt: str) -> str:
    # The handlers mark each image as loaded or broken, so a headless browser can check the page.
    return (f'<img src="img/{esc(name)}" alt="{esc(alt)}" '
            f'onload="this.dataset.loaded=\'yes\'" onerror="this.dataset.loaded=\'no\'">')


def table(columns: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{esc(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{esc('' if v is None else str(v))}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def empty(text: str) -> str:
    return f'<p class="empty">{esc(text)}</p>'


def more(shown: int, total: int, what: str) -> str:
    return "" if total <= shown else f"<p>{esc(f'... and {total - shown} more {what} (narrow with --budget)')}</p>"


def page(data: ReportData, sections: list[Section]) -> str:
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    budgets = ", ".join(b.name for b in data.budgets) or "none"
    counts: dict[str, int] = defaultdict(int)
    for j in data.jobs:
        counts[j.status] += 1
    status = ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "no jobs"
    nav = "".join(f'<li><a href="#{s.id}">{esc(s.title)}</a></li>' for s in sections)
    body = "".join(f'<section id="{s.id}"><h2>{esc(s.title)}</h2>{s.body}</section>' for s in sections)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>budgetq report</title>
<style>
body {{ font-family: sans-serif; margin: 2em auto; max-width: 1100px; color: #222; background: #fff; }}
h1 {{ margin-bottom: 0.2em; }} h2 {{ border-bottom: 2px solid #ddd; padding-bottom: 0.2em; margin-top: 2em; }}
table {{ border-collapse: collapse; margin: 0.8em 0; font-size: 0.85em; }}
th, td {{ border: 1px solid #ccc; padding: 0.25em 0.5em; text-align: left; vertical-align: top; }}
th {{ background: #f3f3f3; }} img {{ max-width: 100%; display: block; margin: 0.8em 0; }}
.empty {{ color: #777; font-style: italic; }} nav ul {{ columns: 2; }}
</style></head><body>
<h1>budgetq report</h1>
<p>{esc(f"Generated {now}. Budgets: {budgets}. Jobs: {status}.")}</p>
<nav><ul>{nav}</ul></nav>
{body}
</body></html>
"""


def money(micros: Optional[int]) -> str:
    return "" if micros is None else format_micros(micros)
