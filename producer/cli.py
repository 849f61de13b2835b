"""``budgetq``: the command line. Parse, validate, admit, enqueue after commit, query.

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

from models import endings, ledger, queries, spend
from models.db import Ledger
from core.errors import BackendUnavailable, BudgetqError, ConfigError, InvalidInput, NotFound
from core.limits import check_name
from core.money import format_micros, format_share, parse_dollars, parse_share
from core.settings import Settings, load_settings, mask_url
from producer import render
from producer.render import emit_json, say, table

app = typer.Typer(help="A budget-capped job queue for ML improvement work.", no_args_is_help=True,
                  pretty_exceptions_enable=False, add_completion=False)
db_app = typer.Typer(help="The ledger database.", no_args_is_help=True)
budget_app = typer.Typer(help="Budgets: the money jobs are admitted against.", no_args_is_help=True)
plan_app = typer.Typer(help="Plan files: many initiatives at once.", no_args_is_help=True)
jobs_app = typer.Typer(help="Jobs in the queue and the ledger.", no_args_is_help=True)
for sub, name in ((db_app, "db"), (budget_app, "budget"), (plan_app, "plan"), (jobs_app, "jobs")):
    app.add_typer(sub, name=name)

JSON = typer.Option(False, "--json", help="Print JSON instead of a table.")
MAX_SECONDS = 10 * 365 * 86_400  # a bound for every duration option: finite, and within a timedelta
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


def _open(*, at_head: bool = True) -> tuple[Settings, Ledger]:
    settings = load_settings()
    store = Ledger(settings.database_url)
    if at_head:
        store.require_head()
    return settings, store


# --- db -------------------------------------------------------------------------------------


@db_app.command("upgrade")
def db_upgrade(revision: str = typer.Argument("head", help="Target revision.")) -> None:
    """Migrate the ledger to the latest schema (alembic upgrade head)."""
    _, store = _open(at_head=False)
    store.upgrade(revision)
    current, _ = store.revisions()
    say(f"database {mask_url(store.url)} is at revision {current}")


@db_app.command("downgrade")
def db_downgrade(revision: str = typer.Argument(..., help="Target revision, or 'base' to drop everything.")) -> None:
    """Migrate the ledger back to an earlier schema."""
    _, store = _open(at_head=False)
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
    _, store = _open()
    with store.session() as s:
        budget = ledger.create_budget(s, name=name, total_micros=total_micros)
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
    _, store = _open()
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
    _, store = _open()
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
    _, store = _open()
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
    _, store = _open()
    with store.session() as s:
        budgets = queries.list_budgets(s)
    if as_json:
        emit_json([render.budget_json(b) for b in budgets])
    else:
        table("budgets", render.BUDGET_COLUMNS, [render.budget_row(b) for b in budgets])


@budget_app.command("audit")
def budget_audit(as_json: bool = JSON) -> None:
    """Check that the ledger entries sum to every budget and job; exit 1 if they do not."""
    _, store = _open()
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
    settings, store = _open()
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
    settings, store = _open()
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


# --- jobs -----------------------------------------------------------------------------------


@jobs_app.command("list")
def jobs_list(
    budget: Optional[str] = None, status: Optional[str] = None, initiative: Optional[str] = None,
    limit: int = typer.Option(200, min=1, max=10_000), as_json: bool = JSON,
) -> None:
    """Jobs, newest first."""
    from core.status import JobStatus

    if status is not None and status not in set(JobStatus):
        raise InvalidInput(f"--status {status!r} is not a job status; use one of {', '.join(JobStatus)}")
    _, store = _open()
    with store.session() as s:
        jobs = queries.list_jobs(s, budget=budget, status=status, initiative=initiative, limit=limit)
    if as_json:
        emit_json([render.job_json(j) for j in jobs])
    else:
        table("jobs", render.JOB_COLUMNS, [render.job_row(j) for j in jobs])


@jobs_app.command("show")
def jobs_show(job_id: str, as_json: bool = JSON) -> None:
    """One job in full."""
    _, store = _open()
    with store.session() as s:
        job = queries.get_job(s, job_id=job_id)
    if as_json:
        emit_json(render.job_json(job))
    else:
        table(f"job {job.id}", ["field", "value"], [[k, v] for k, v in render.job_json(job).items()])


@jobs_app.command("cancel")
def jobs_cancel(job_id: str, as_json: bool = JSON) -> None:
    """Cancel a job: a queued one releases its reservation; a running one is told to stop."""
    _, store = _open()
    with store.session() as s:
        job = endings.cancel_job(s, job_id=job_id)
    if as_json:
        emit_json(render.job_json(job))
    elif job.status == "running":
        say(f"job {job.id} is running; its worker will stop it at the next heartbeat")
    else:
        say(f"job {job.id} is {job.status}")


@jobs_app.command("resume")
def jobs_resume(
    job_id: str,
    estimate: Optional[str] = typer.Option(None, help="Dollars to reserve (default: the job's original estimate)."),
    max_attempts: Optional[int] = typer.Option(None, min=1, max=100, help="Attempts it may take from here (default MAX_ATTEMPTS)."),
    as_json: bool = JSON,
) -> None:
    """Re-admit a budget_stopped job: reserve anew and queue it; it continues from its last checkpoint."""
    estimate_micros = None if estimate is None else parse_dollars(estimate, what="--estimate")
    settings, store = _open()
    with store.session() as s:
        job = spend.resume_job(s, job_id=job_id, estimate_micros=estimate_micros,
                               max_attempts=max_attempts or settings.max_attempts)
    with store.session() as s:
        ready = ledger.ready_to_publish(s, job_ids=[job.id])
    if ready:
        from core.queue import publish_after_commit

        publish_after_commit(store, ready, mark=False)
    if as_json:
        emit_json(render.job_json(job))
    else:
        say(f"resumed job {job.id} ({job.initiative}): reserved {format_micros(job.reserved_micros)} of {job.budget},"
            f" estimate now {format_micros(job.estimate_micros)}; it continues from its last checkpoint")


@jobs_app.command("resend")
def jobs_resend(
    older_than: float = typer.Option(60.0, min=0, max=MAX_SECONDS, help="Seconds since the job was last published."),
    force: bool = typer.Option(False, "--force", help="Re-publish even jobs whose message is still queued."),
    as_json: bool = JSON,
) -> None:
    """Re-publish ready jobs whose message the broker no longer holds (the workers' upkeep does this too)."""
    from core.queue import resend

    _, store = _open()
    sent = resend(store, older_than_seconds=older_than, force=force)
    emit_json({"resent": sent}) if as_json else say(f"re-published {len(sent)} job(s)")


@jobs_app.command("rejected")
def jobs_rejected(limit: int = typer.Option(50, min=1), as_json: bool = JSON) -> None:
    """Queue messages workers acknowledged without running them (malformed, forged, unknown), newest first."""
    _, store = _open()
    with store.session() as s:
        rows = queries.rejected_messages(s, limit=limit)
    if as_json:
        emit_json([r.__dict__ for r in rows])
    else:
        table("rejected messages", ["received", "worker", "queue", "task", "bytes", "reason"],
              [[r.received_at, r.worker, r.queue, r.task, r.bytes, r.reason] for r in rows])


@app.command("reap")
def reap(as_json: bool = JSON) -> None:
    """Charge and requeue jobs whose worker died (expired lease), then re-publish ready jobs."""
    from core.queue import reap as reap_and_publish

    settings, store = _open()
    closed, sent = reap_and_publish(store, resend_after_seconds=settings.resend_after_seconds)
    if as_json:
        emit_json({"reaped": [{**c.__dict__, "crossed": [render.event_json(e) for e in c.crossed]} for c in closed], "resent": sent})
        return
    for c in closed:
        say(f"job {c.job_id} attempt {c.attempt}: {c.status}, charged {format_micros(c.charge_micros)}")
        for event in c.crossed:
            say(f"budget {event.budget}: {render.event_line(event)}")
    say(f"reaped {len(closed)} job(s), re-published {len(sent)}")


# --- results --------------------------------------------------------------------------------


@app.command("results")
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

    settings, store = _open()
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


@app.command("report")
def report(
    budget: Optional[str] = typer.Option(None, help="Only this budget (default: every budget)."),
    out: Path = typer.Option(Path("budgetq-report"), "--out", help="Folder for index.html and its PNG plots."),
    as_json: bool = JSON,
) -> None:
    """Write a static HTML report with plots (spend, improvement per dollar, curves...) that opens offline."""
    from models import history
    from producer.report import write_report

    settings, store = _open()
    with store.session() as s:
        data = history.report_data(s, budget=budget)
    index = write_report(data, out, extra_initiatives=settings.extra_initiatives)
    emit_json({"report": str(index)}) if as_json else say(f"report written to {index}")


# --- worker ---------------------------------------------------------------------------------


@app.command("worker")
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


@app.command("demo")
def demo(
    plan: Optional[Path] = typer.Option(None, help="The plan to run (default: examples/demo.yaml)."),
) -> None:
    """Run a plan end to end on this machine (migrating the ledger first) and print its impact and cost.

    Exits 6 when a job did not succeed, after a line per such job with its status and error.
    """
    from producer.demo import examples_dir, run_demo

    settings, store = _open(at_head=False)
    store.upgrade()
    run_demo(settings, store, plan_path=plan or examples_dir() / "demo.yaml")


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
