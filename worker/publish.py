"""Enqueue after commit: jobs are published only once their admission is committed.

A publish that fails leaves the job admitted; ``budgetq jobs resend`` and the worker's reaper
re-publish admitted jobs that no worker has claimed for a while, so nothing is lost. A duplicate
message is harmless: the claim refuses it.
"""

from __future__ import annotations

from collections.abc import Sequence

import kombu.exceptions
from celery import Celery

from models import ledger
from models.db import Ledger
from models.errors import BackendUnavailable
from models.views import Ready
from models.settings import mask_url
from worker.celery_app import RUN_JOB


def publish(app: Celery, store: Ledger, jobs: Sequence[Ready], *, mark: bool = True) -> list[str]:
    """Send one message per job and (with ``mark``) record when. Returns the ids sent.

    A fresh admission needs no mark: resend measures its age from when it was admitted.
    """
    sent: list[str] = []
    try:
        with app.producer_or_acquire() as producer:
            for job in jobs:
                # The reservation rides along so the worker can set the job's time limit without
                # a database read; the ledger still caps what is charged.
                app.send_task(RUN_JOB, args=[job.id], queue=job.queue, producer=producer, ignore_result=True,
                              headers={"budgetq_reserved_micros": job.reserved_micros})
                sent.append(job.id)
    except (kombu.exceptions.OperationalError, OSError) as exc:
        raise BackendUnavailable(
            f"broker at {mask_url(str(app.conf.broker_url))} refused the message ({exc}); the job stays admitted:"
            " run `budgetq jobs resend --older-than 0` once the broker is back"
        ) from exc
    finally:
        if sent and mark:
            with store.session() as s:
                ledger.mark_published(s, job_ids=sent)
    return sent


def resend(app: Celery, store: Ledger, *, older_than_seconds: float, queues: Sequence[str] | None = None) -> list[str]:
    """Re-publish queued, ready jobs not published in the last ``older_than_seconds``."""
    with store.session() as s:
        jobs = ledger.ready_to_publish(s, older_than_seconds=older_than_seconds)
    if queues is not None:
        jobs = [j for j in jobs if j.queue in queues]
    return publish(app, store, jobs) if jobs else []


def reap(app: Celery, store: Ledger, *, resend_after_seconds: float, queues: Sequence[str] | None = None):
    """Reap expired leases, publish the jobs that were requeued, and re-send stale ready ones.

    Returns ``(closed attempts, ids published)``.
    """
    with store.session() as s:
        closed = ledger.reap_expired(s)
    requeued = [c.job_id for c in closed if c.status == "requeued"]
    with store.session() as s:
        ready = ledger.ready_to_publish(s, job_ids=requeued) if requeued else []
    sent = publish(app, store, ready) if ready else []
    sent += resend(app, store, older_than_seconds=resend_after_seconds, queues=queues)
    return closed, sent
