"""``budgetq``: the command line. Parse, validate, admit, enqueue after commit, query.

A job's path starts here: ``submit`` parses and checks the command line, then hands the job to
``producer.admission.submit``, which admits it against its budget and publishes it after the commit.
The other commands live beside this module, one module per group (``cli_budget``: db and budget;
``cli_jobs``: jobs and reap; ``cli_results``: results and report; ``cli_worker``: worker and demo);
this module registers them and is the entry point (``main``).

Exit codes: 0 ok, 1 audit found problems, 2 bad input, 3 budget exhausted, 4 not found,
5 backend unreachable, 6 the demo ran but a job did not succeed. Every error is one line on stderr
saying what was wrong and how to fix it.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer

try:  # typer 0.2x vendors click; older releases use the click package
    from typer._click import exceptions as click_errors
except ImportError:  # pragma: no cover
    from click import exceptions as click_errors

from core.errors import BackendUnavailable, BudgetqError, ConfigError, InvalidInput
from core.limits import check_name
from core.money import format_micros, parse_dollars
from core.settings import mask_url
from producer import cli_budget, cli_jobs, cli_results, cli_worker, render
from producer.cli_support import JSON, open_ledger
from producer.render import emit_json, say, table

app = typer.Typer(help="A budget-capped job queue for ML improvement work.", no_args_is_help=True,
                  pretty_exceptions_enable=False, add_completion=False)
plan_app = typer.Typer(help="Plan files: many initiatives at once.", no_args_is_help=True)
for sub, name in ((cli_budget.db_app, "db"), (cli_budget.budget_app, "budget"), (plan_app, "plan"), (cli_jobs.jobs_app, "jobs")):
    app.add_typer(sub, name=name)


# --- submitting -----------------------------------------------------------------------------


@app.command("submit")
def submit(
    initiative: str,
    budget: str = typer.Option(..., help="The budget to admit against."),
    estimate: str = typer.Option(..., help="The most this job may spend, in dollars."),
    param: List[str] = typer.Option([], "--param", "-p", help="A parameter as key=value; repeatable."),
    queue: Optional[str] = typer.Option(None, help="Override the queue (default: one per initiative)."),
    key: Optional[str] = typer.Option(None, help="Idempotency key: resubmitting it returns the same job."),
    after: List[str] = typer.Option([], help="A job id that must succeed first; repeatable."),
    max_attempts: Optional[int] = typer.Option(None, min=1, max=100, help="Attempts before the job fails."),
    as_json: bool = JSON,
) -> None:
    """Admit one job against a budget and enqueue it."""
    from producer.admission import submit as admit

    estimate_micros = parse_dollars(estimate, what="--estimate")
    params = _parse_params(param)
    if queue is not None:
        check_name(queue, what="--queue")
    settings, store = open_ledger()
    job, created = admit(
        store, settings, budget=budget, initiative=initiative, estimate_micros=estimate_micros, params=params,
        queue=queue, key=key, after=after, max_attempts=max_attempts,
    )
    if as_json:
        emit_json({**render.job_json(job), "created": created})
    else:
        verb = "admitted" if created else "already admitted (same key)"
        say(f"{verb} job {job.id}: {initiative} on queue {job.queue}, reserved {format_micros(job.estimate_micros)} of {budget}")


def _parse_params(pairs: List[str]) -> dict[str, str]:
    params: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name.strip():
            raise InvalidInput(f"--param {pair!r} is not key=value; write it like --param seconds=5")
        if name.strip() in params:
            raise InvalidInput(f"--param {name.strip()!r} is given twice; give each parameter once")
        params[name.strip()] = value
    return params


@plan_app.command("run")
def plan_run(
    path: Path,
    dry_run: bool = typer.Option(False, "--dry-run", help="Show what would be admitted and what it may cost; write nothing."),
    partial: bool = typer.Option(False, "--partial", help="Admit what fits instead of all or nothing."),
    device: Optional[str] = typer.Option(None, help="Dry run: forecast for this device (cpu, cuda:NAME); default: where jobs ran last."),
    price: Optional[str] = typer.Option(None, help="Dry run: forecast at this price per hour per job slot; default: where jobs ran last."),
    as_json: bool = JSON,
) -> None:
    """Admit a plan's initiatives in rank order and enqueue them."""
    from producer.admission import dry_run as preview
    from producer.admission import run_plan
    from producer.plan import load_plan

    rate = None if price is None else parse_dollars(price, what="--price")
    settings, store = open_ledger()
    plan = load_plan(path, extra_initiatives=settings.extra_initiatives)
    if dry_run:
        from producer.forecast import plan_forecast

        decisions = preview(store, plan, partial=partial, extra_initiatives=settings.extra_initiatives)
        _show_dry_run(plan, decisions, plan_forecast(store, plan, device=device, rate_micros_per_hour=rate), as_json)
        return
    decisions = run_plan(store, settings, plan, partial=partial)
    if as_json:
        emit_json([{
            "name": d.entry, "initiative": d.initiative, "estimate": format_micros(d.estimate_micros),
            "admitted": d.admitted, "reason": d.reason, "job_id": d.job.id if d.job else None,
        } for d in decisions])
        return
    table(f"plan {plan.name} against budget {plan.budget}", ["name", "initiative", "estimate", "decision", "job"], [
        [d.entry, d.initiative, format_micros(d.estimate_micros), "admit" if d.admitted else f"reject: {d.reason}", d.job.id if d.job else ""]
        for d in decisions
    ])


def _show_dry_run(plan, decisions, fc, as_json: bool) -> None:
    if as_json:
        emit_json(render.dry_run_json(plan, decisions, fc))
        return
    where = (f"{fc.device} at {format_micros(fc.rate_micros_per_hour)}/h per slot" if fc.device and fc.rate_micros_per_hour is not None
             else "an unknown device: no worker has run a job yet")
    table(f"plan {plan.name} against budget {plan.budget} (dry run: nothing written; forecasts on {where})",
          ["name", "initiative", "cap", "low", "expected", "high", "history", "decision"],
          [render.dry_run_row(d, fc.entries[d.entry]) for d in decisions])
    say(render.dry_run_totals(fc))


# The top-level commands beside ``submit``, registered in the order ``budgetq --help`` lists them.
for name, command in (("reap", cli_jobs.reap), ("results", cli_results.results), ("report", cli_results.report),
                      ("worker", cli_worker.worker), ("demo", cli_worker.demo)):
    app.command(name)(command)


def main() -> None:
    """Run the CLI; every failure is one line on stderr and a distinct exit code."""
    command = typer.main.get_command(app)
    try:
        code = command.main(prog_name="budgetq", standalone_mode=False)
    except click_errors.NoArgsIsHelpError as exc:
        sys.stdout.write(exc.ctx.get_help() + "\n")
        code = 0
    except click_errors.UsageError as exc:
        where = f"budgetq {exc.ctx.command_path.split(' ', 1)[-1]}" if exc.ctx and " " in exc.ctx.command_path else "budgetq"
        _fail(f"{exc.format_message()} (see `{where} --help`)", 2)
    except (typer.Abort, KeyboardInterrupt):
        _fail("aborted", 130)
    except BudgetqError as exc:
        _fail(str(exc), exc.exit_code)
    except ConnectionError as exc:
        _fail(f"{exc}; check that the database and the broker are up", BackendUnavailable.exit_code)
    except OSError as exc:
        # A file or folder the command needs cannot be used (permissions, a full disk, a path through
        # a file): the user's to fix, so one line, not a traceback.
        where = f" ({exc.filename})" if exc.filename else ""
        _fail(f"{exc.strerror or exc}{where}; check the path, its permissions and free space", ConfigError.exit_code)
    sys.exit(code if isinstance(code, int) else 0)


def _fail(message: str, code: int) -> None:
    line = " ".join(mask_url(message).split())
    sys.stderr.write(f"error: {line}\n")
    sys.exit(code)
