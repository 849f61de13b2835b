"""The queue: the Celery app and the one way onto it, publishing after commit.

The app is JSON only, acknowledges late, takes one message at a time and has no result backend
(results live in the ledger). With ``BROKER_URL`` unset the broker is kombu's filesystem transport
under ``$BUDGETQ_HOME/broker``: no server to run.

A job is published only once its admission (or requeue) is committed, by ``publish_after_commit``.
A publish that fails leaves the job admitted; ``budgetq jobs resend`` and the workers' upkeep
re-publish ready jobs that no worker has claimed for a while, so nothing is lost. A duplicate
message is harmless: the claim refuses it.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import kombu.exceptions
from celery import Celery

from core.errors import BackendUnavailable
from core.settings import Settings, current_settings, mask_url
from models import ledger
from models.db import Ledger
from models.views import Closed, Ready

RUN_JOB = "budgetq.run_job"


def make_app(settings: Settings) -> Celery:
    # The filesystem transport ignores the host, but kombu warns at every start when there is none.
    broker = "filesystem://localhost/" if settings.embedded_broker else settings.broker_url
    app = Celery("budgetq", broker=broker, set_as_current=True)
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        event_serializer="json",
        result_backend=None,
        task_ignore_result=True,
        # A message is acknowledged after the job settles, and requeued if the worker dies.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_default_queue="default",
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=3,
        worker_hijack_root_logger=False,
        imports=["worker.tasks"],
    )
    if settings.embedded_broker:
        folder = settings.broker_folder
        for sub in ("queue", "control", "processed"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        app.conf.broker_transport_options = {
            "data_folder_in": str(folder / "queue"),
            "data_folder_out": str(folder / "queue"),
            "control_folder": str(folder / "control"),
            "processed_folder": str(folder / "processed"),
            "store_processed": False,
            "polling_interval": 0.2,
        }
    else:
        # A short connect timeout, so an unreachable broker is reported instead of retried forever.
        app.conf.broker_transport_options = {"max_retries": 2, "interval_start": 0, "interval_step": 0.5}
    return app


@lru_cache(maxsize=1)
def default_app() -> Celery:
    """This process's app, built from its settings on first use."""
    return make_app(current_settings())


def publish_after_commit(store: Ledger, jobs: Sequence[Ready], *, mark: bool = True) -> list[str]:
    """Send one message per committed job and (with ``mark``) record when. Returns the ids sent.

    A fresh admission needs no mark: resend measures its age from when it was admitted.
    """
    app = default_app()
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


def resend(store: Ledger, *, older_than_seconds: float, queues: Sequence[str] | None = None) -> list[str]:
    """Re-publish queued, ready jobs not published in the last ``older_than_seconds``."""
    with store.session() as s:
        jobs = ledger.ready_to_publish(s, older_than_seconds=older_than_seconds)
    if queues is not None:
        jobs = [j for j in jobs if j.queue in queues]
    return publish_after_commit(store, jobs) if jobs else []


def reap(store: Ledger, *, resend_after_seconds: float, queues: Sequence[str] | None = None) -> tuple[list[Closed], list[str]]:
    """Reap expired leases, publish the jobs that were requeued, and re-send stale ready ones.

    Returns ``(closed attempts, ids published)``.
    """
    with store.session() as s:
        closed = ledger.reap_expired(s)
    requeued = [c.job_id for c in closed if c.status == "requeued"]
    with store.session() as s:
        ready = ledger.ready_to_publish(s, job_ids=requeued) if requeued else []
    sent = publish_after_commit(store, ready) if ready else []
    sent += resend(store, older_than_seconds=resend_after_seconds, queues=queues)
    return closed, sent
