"""``budgetq results`` and ``budgetq report``: what the money bought, as a table, as JSON or as a page."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from core.errors import NotFound
from models import queries
from producer import render
from producer.cli_support import JSON, open_ledger
from producer.render import emit_json, say, table


def results(
    job: Optional[str] = typer.Option(None, help="One job's summary: status, cost, headline metrics, artifacts, notes."),
    budget: Optional[str] = typer.Option(None, help="The budget to summarise (default: the latest one created)."),
    series: bool = typer.Option(False, "--series", help="With --job: also every per-step value (loss curves...)."),
    slices: bool = typer.Option(False, "--slices", help="With --job: also every per-slice value."),
    as_json: bool = JSON,
) -> None:
    """Which initiative bought the most improvement per dollar, per unit; or one job's results."""
    from models import history
    from producer.summary import as_json as group_json
    from producer.summary import summarize

    settings, store = open_ledger()
    with store.session() as s:
        if job:
            view = queries.get_job(s, job_id=job)
            metrics, artifacts = queries.job_results(s, job_id=job)
            failures = queries.job_failures(s, job_id=job)
            notes = history.job_notes(s, job_id=job)
        else:
            budget = budget or queries.latest_budget(s)
            if budget is None:
                raise NotFound("no budget yet; create one with `budgetq budget create NAME --total 1.00`")
            queries.get_budget(s, name=budget)  # NotFound names the fix
            groups = summarize(queries.improvement_rows(s, budget=budget), settings.extra_initiatives)
    if job:
        _job_results(view, metrics, artifacts, failures, notes, as_json, series=series, slices=slices)
    elif as_json:
        emit_json({"budget": budget, "groups": [group_json(g) for g in groups]})
    else:
        render.improvement_tables(budget, groups)


def _job_results(view, metrics, artifacts, failures, notes, as_json: bool, *, series: bool, slices: bool) -> None:
    """The summary first (status, cost, headline metrics, artifacts, notes, failures); series and slices on request."""
    failure_count, failure_rows = failures
    failure_json = [{"perturbation": f.perturbation, "slice": f.slice, "text": f.text, "expected": f.expected,
                     "predicted": f.predicted} for f in failure_rows]
    if as_json:
        emit_json({
            "job": render.job_json(view),
            "summary": render.results_summary(view, metrics, failure_count),
            "metrics": [{"name": m.name, "value": m.value, "slice": m.slice, "step": m.step, "attempt": m.attempt} for m in metrics],
            "artifacts": [{"name": a.name, "uri": a.uri, "sha256": a.sha256, "bytes": a.bytes} for a in artifacts],
            "notes": [{"attempt": attempt, "text": text} for attempt, text in notes],
            "failures": {"count": failure_count, "first": failure_json},
        })
        return
    for line in render.results_header(view):
        say(line)
    headline = render.headline_metrics(metrics)
    table("headline metrics", ["name", "value"], [[name, f"{value:.6g}"] for name, value in headline.items()]) if headline else say("no headline metrics")
    if artifacts:
        table("artifacts", ["name", "bytes", "sha256", "uri"], [[a.name, a.bytes, a.sha256[:12], a.uri] for a in artifacts])
    for attempt, text in notes:
        say(f"note (attempt {attempt}): {text}")
    say(f"failure cases: {failure_count}" + (" (listed in `budgetq report`)" if failure_count else ""))
    stepped = [m for m in metrics if m.step is not None]
    sliced = [m for m in metrics if m.step is None and m.slice is not None]
    if slices and sliced:
        table("per-slice metrics", ["name", "slice", "value"], [[m.name, m.slice, f"{m.value:.6g}"] for m in sliced])
    elif sliced:
        say(f"{len(sliced)} per-slice values in {len({m.name for m in sliced})} metrics: show them with --slices")
    if series and stepped:
        table("per-step series", ["name", "slice", "step", "value"], [[m.name, m.slice, m.step, f"{m.value:.6g}"] for m in stepped])
    elif stepped:
        say(f"{len(stepped)} per-step values in {len({(m.name, m.slice) for m in stepped})} series: show them with --series")


def report(
    budget: Optional[str] = typer.Option(None, help="Only this budget (default: every budget)."),
    out: Path = typer.Option(Path("budgetq-report"), "--out", help="Folder for index.html and its PNG plots."),
    as_json: bool = JSON,
) -> None:
    """Write a static HTML report with plots (spend, improvement per dollar, curves...) that opens offline."""
    from models import history
    from producer.report import write_report

    settings, store = open_ledger()
    with store.session() as s:
        data = history.report_data(s, budget=budget)
    index = write_report(data, out, extra_initiatives=settings.extra_initiatives)
    emit_json({"report": str(index)}) if as_json else say(f"report written to {index}")
