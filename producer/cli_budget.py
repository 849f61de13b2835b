"""``budgetq db`` and ``budgetq budget``: the ledger's schema, and the money jobs are admitted against."""

from __future__ import annotations

from typing import List

import typer

from core.errors import InvalidInput
from core.money import format_micros, format_share, parse_dollars, parse_share
from core.settings import mask_url
from models import queries, spend
from producer import render
from producer.cli_support import JSON, open_ledger
from producer.render import emit_json, say, table

db_app = typer.Typer(help="The ledger database.", no_args_is_help=True)
budget_app = typer.Typer(help="Budgets: the money jobs are admitted against.", no_args_is_help=True)


# --- db -------------------------------------------------------------------------------------


@db_app.command("upgrade")
def db_upgrade(revision: str = typer.Argument("head", help="Target revision.")) -> None:
    """Migrate the ledger to the latest schema (alembic upgrade head)."""
    _, store = open_ledger(at_head=False)
    store.upgrade(revision)
    current, _ = store.revisions()
    say(f"database {mask_url(store.url)} is at revision {current}")


@db_app.command("downgrade")
def db_downgrade(revision: str = typer.Argument(..., help="Target revision, or 'base' to drop everything.")) -> None:
    """Migrate the ledger back to an earlier schema."""
    _, store = open_ledger(at_head=False)
    store.downgrade(revision)
    current, _ = store.revisions()
    say(f"database {mask_url(store.url)} is at revision {current or 'base'}")


# --- budgets --------------------------------------------------------------------------------


WARN_AT = typer.Option([], "--warn-at", help="Warn once spending reaches this share of the total (0.5 or 50%); repeatable.")


@budget_app.command("create")
def budget_create(
    name: str, total: str = typer.Option(..., help="Dollars, e.g. 1.00"), warn_at: List[str] = WARN_AT, as_json: bool = JSON,
) -> None:
    """Create a budget holding TOTAL dollars."""
    total_micros = parse_dollars(total, what="--total")
    shares = [parse_share(w, what="--warn-at") for w in warn_at]
    _, store = open_ledger()
    with store.session() as s:
        budget = spend.create_budget(s, name=name, total_micros=total_micros)
        spend.set_thresholds(s, budget=name, thresholds_ppm=shares)
    emit_json(render.budget_json(budget)) if as_json else say(f"budget {name} created with {format_micros(total_micros)}")


@budget_app.command("set")
def budget_set(
    name: str, warn_at: List[str] = WARN_AT,
    no_warnings: bool = typer.Option(False, "--no-warnings", help="Remove every threshold."), as_json: bool = JSON,
) -> None:
    """Replace a budget's warning thresholds (a threshold already crossed is recorded now)."""
    if not warn_at and not no_warnings:
        raise InvalidInput("budget set needs --warn-at SHARE (repeatable) or --no-warnings")
    if warn_at and no_warnings:
        raise InvalidInput("give --warn-at or --no-warnings, not both")
    shares = [parse_share(w, what="--warn-at") for w in warn_at]
    _, store = open_ledger()
    with store.session() as s:
        crossed = spend.set_thresholds(s, budget=name, thresholds_ppm=shares)
        thresholds = spend.budget_thresholds(s, budget=name)
    if as_json:
        emit_json({"name": name, "warn_at": [format_share(p) for p in thresholds], "crossed_now": [render.event_json(e) for e in crossed]})
        return
    say(f"budget {name} warns at {', '.join(format_share(p) for p in thresholds) or 'nothing'}")
    for event in crossed:
        say(f"already crossed: {render.event_line(event)}")


@budget_app.command("topup")
def budget_topup(name: str, add: str = typer.Option(..., "--add", help="Dollars to add, e.g. 0.50"), as_json: bool = JSON) -> None:
    """Add money to a budget (one guarded statement and its `fund` entry)."""
    add_micros = parse_dollars(add, what="--add")
    _, store = open_ledger()
    with store.session() as s:
        budget = spend.topup_budget(s, name=name, add_micros=add_micros)
    if as_json:
        emit_json(render.budget_json(budget))
    else:
        say(f"budget {name}: added {format_micros(add_micros)}; total {format_micros(budget.total_micros)},"
            f" {format_micros(budget.left_micros)} left")


@budget_app.command("show")
def budget_show(name: str, as_json: bool = JSON) -> None:
    """A budget's total, spent, reserved and what is left."""
    _, store = open_ledger()
    with store.session() as s:
        budget = queries.get_budget(s, name=name)
        jobs = queries.list_jobs(s, budget=name, limit=10_000)
        thresholds = spend.budget_thresholds(s, budget=name)
        events = spend.budget_events(s, budget=name)
        preempted = queries.preemption_summary(s, budget=name)
    counts: dict[str, int] = {}
    for job in jobs:
        counts[job.status] = counts.get(job.status, 0) + 1
    if as_json:
        emit_json({**render.budget_json(budget), "jobs": counts, "warn_at": [format_share(p) for p in thresholds],
                   "events": [render.event_json(e) for e in events], "preemptions": render.preemption_json(preempted)})
        return
    table(f"budget {name}", render.BUDGET_COLUMNS, [render.budget_row(budget)])
    say("jobs: " + (", ".join(f"{v} {k}" for k, v in sorted(counts.items())) or "none"))
    say(render.preemption_line(preempted))
    say("warns at: " + (", ".join(format_share(p) for p in thresholds) or "nothing (set with `budgetq budget set --warn-at`)"))
    for event in events:
        say(f"event: {render.event_line(event)}")


@budget_app.command("list")
def budget_list(as_json: bool = JSON) -> None:
    """Every budget."""
    _, store = open_ledger()
    with store.session() as s:
        budgets = queries.list_budgets(s)
    if as_json:
        emit_json([render.budget_json(b) for b in budgets])
    else:
        table("budgets", render.BUDGET_COLUMNS, [render.budget_row(b) for b in budgets])


@budget_app.command("audit")
def budget_audit(as_json: bool = JSON) -> None:
    """Check that the ledger entries sum to every budget and job; exit 1 if they do not."""
    _, store = open_ledger()
    with store.session() as s:
        problems = queries.audit(s)
    if as_json:
        emit_json({"ok": not problems, "problems": [{"subject": p.subject, "detail": p.detail} for p in problems]})
    elif problems:
        table("audit problems", ["subject", "detail"], [[p.subject, p.detail] for p in problems])
    else:
        say("audit clean: the entries sum to every budget and every job")
    if problems:
        raise typer.Exit(1)
