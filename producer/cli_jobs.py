"""``budgetq jobs`` and ``budgetq reap``: jobs in the queue and the ledger, after they were admitted."""

from __future__ import annotations

from typing import Optional

import typer

from core.errors import InvalidInput
from core.money import format_micros, parse_dollars
from models import endings, ledger, queries, spend
from producer import render
from producer.cli_support import JSON, MAX_SECONDS, open_ledger
from producer.render import emit_json, say, table

jobs_app = typer.Typer(help="Jobs in the queue and the ledger.", no_args_is_help=True)


@jobs_app.command("list")
def jobs_list(
    budget: Optional[str] = None, status: Optional[str] = None, initiative: Optional[str] = None,
    limit: int = typer.Option(200, min=1, max=10_000), as_json: bool = JSON,
) -> None:
    """Jobs, newest first."""
    from core.status import JobStatus

    if status is not None and status not in set(JobStatus):
        raise InvalidInput(f"--status {status!r} is not a job status; use one of {', '.join(JobStatus)}")
    _, store = open_ledger()
    with store.session() as s:
        jobs = queries.list_jobs(s, budget=budget, status=status, initiative=initiative, limit=limit)
    if as_json:
        emit_json([render.job_json(j) for j in jobs])
    else:
        table("jobs", render.JOB_COLUMNS, [render.job_row(j) for j in jobs])


@jobs_app.command("show")
def jobs_show(job_id: str, as_json: bool = JSON) -> None:
    """One job in full."""
    _, store = open_ledger()
    with store.session() as s:
        job = queries.get_job(s, job_id=job_id)
    if as_json:
        emit_json(render.job_json(job))
    else:
        table(f"job {job.id}", ["field", "value"], [[k, v] for k, v in render.job_json(job).items()])


@jobs_app.command("cancel")
def jobs_cancel(job_id: str, as_json: bool = JSON) -> None:
    """Cancel a job: a queued one releases its reservation; a running one is told to stop."""
    _, store = open_ledger()
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
    settings, store = open_ledger()
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

    _, store = open_ledger()
    sent = resend(store, older_than_seconds=older_than, force=force)
    emit_json({"resent": sent}) if as_json else say(f"re-published {len(sent)} job(s)")


@jobs_app.command("rejected")
def jobs_rejected(limit: int = typer.Option(50, min=1), as_json: bool = JSON) -> None:
    """Queue messages workers acknowledged without running them (malformed, forged, unknown), newest first."""
    _, store = open_ledger()
    with store.session() as s:
        rows = queries.rejected_messages(s, limit=limit)
    if as_json:
        emit_json([r.__dict__ for r in rows])
    else:
        table("rejected messages", ["received", "worker", "queue", "task", "bytes", "reason"],
              [[r.received_at, r.worker, r.queue, r.task, r.bytes, r.reason] for r in rows])


def reap(as_json: bool = JSON) -> None:
    """Charge and requeue jobs whose worker died (expired lease), then re-publish ready jobs."""
    from core.queue import reap as reap_and_publish

    settings, store = open_ledger()
    closed, sent = reap_and_publish(store, resend_after_seconds=settings.resend_after_seconds)
    if as_json:
        emit_json({"reaped": [{**c.__dict__, "crossed": [render.event_json(e) for e in c.crossed]} for c in closed], "resent": sent})
        return
    for c in closed:
        say(f"job {c.job_id} attempt {c.attempt}: {c.status}, charged {format_micros(c.charge_micros)}")
        for event in c.crossed:
            say(f"budget {event.budget}: {render.event_line(event)}")
    say(f"reaped {len(closed)} job(s), re-published {len(sent)}")
