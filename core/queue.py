"""The queue: the Celery app and the one way onto it, publishing after commit.

The app is JSON only, takes one message at a time and has no result backend (results live in the
ledger). With ``BROKER_URL`` unset the broker is kombu's filesystem transport under
``$BUDGETQ_HOME/broker``: no server to run.

A job is published only once its admission (or requeue) is committed, by ``publish_after_commit``.
A message is acknowledged when a pool process takes it: from its claim on, the ledger owns the
job (a dead worker's attempt is reaped and requeued, and the requeue publishes again). A message
lost before its claim (a broker restart, a worker killed in between, a publish that failed) leaves
a ready job with no message; the upkeep leader sees that in the broker (``core.broker``) and
re-publishes it, and only it. A duplicate message is harmless anyway: the claim refuses it.

The worker's consumer reconnects to the broker forever, with capped backoff; the producer's
publish gives up after a few quick retries so the CLI can say the broker is down.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import kombu.exceptions
from celery import Celery

from core import transports
from core.broker import in_flight
from core.errors import BackendUnavailable
from core.settings import Settings, current_settings, mask_url
from models import endings, ledger
from models.db import Ledger
from models.views import Closed, Ready

RUN_JOB = "budgetq.run_job"
# The worker's consumer: wait at most this long between reconnection attempts, however long the broker is away.
RECONNECT_BACKOFF_MAX_SECONDS = 10.0


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
        # Acknowledged when a pool process takes the message; the ledger owns the job from its claim.
        task_acks_late=False,
        worker_prefetch_multiplier=1,
        # Redis: fetch a message only when a pool process is free, so no worker hoards queued jobs.
        worker_disable_prefetch=settings.broker_url.startswith(("redis://", "rediss://")),
        task_default_queue="default",
        # The consumer retries the broker forever (with capped backoff, see worker.guard); the
        # producer's publish has its own short retry policy and reports an unreachable broker.
        broker_connection_retry=True,
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        worker_cancel_long_running_tasks_on_connection_loss=False,
        broker_transport=transports.for_url(settings.broker_url),
        worker_consumer="worker.guard:GuardedConsumer",
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
        # For the producer's connection: a short retry, so an unreachable broker is reported instead
        # of retried forever. The worker's consumer connects with its own (endless) policy.
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


def missing_messages(store: Ledger, *, older_than_seconds: float, queues: Sequence[str] | None = None,
                     unacked_within: float = 30.0) -> list[Ready]:
    """Ready jobs, unchanged for ``older_than_seconds``, whose message the broker does not hold.

    The ledger is read before and after the broker, so a job claimed while we looked (its message
    taken, its claim not yet committed at the first read) does not look missing.
    """
    with store.session() as s:
        ready = ledger.ready_to_publish(s, older_than_seconds=older_than_seconds)
    if queues is not None:
        ready = [j for j in ready if j.queue in queues]
    if not ready:
        return []
    held = in_flight(default_app(), {j.queue for j in ready}, task=RUN_JOB, unacked_within=unacked_within)
    candidates = [j for j in ready if not held.holds(j.id, j.queue)]
    if not candidates:
        return []
    with store.session() as s:
        still = {j.id for j in ledger.ready_to_publish(s, older_than_seconds=older_than_seconds, job_ids=[j.id for j in candidates])}
    return [j for j in candidates if j.id in still]


def resend(store: Ledger, *, older_than_seconds: float, queues: Sequence[str] | None = None, force: bool = False) -> list[str]:
    """Re-publish ready jobs not published in the last ``older_than_seconds`` whose message is missing
    (``force``: every one of them, queued message or not)."""
    if force:
        with store.session() as s:
            jobs = [j for j in ledger.ready_to_publish(s, older_than_seconds=older_than_seconds) if queues is None or j.queue in queues]
    else:
        jobs = missing_messages(store, older_than_seconds=older_than_seconds, queues=queues)
    return publish_after_commit(store, jobs) if jobs else []


def reap(store: Ledger, *, resend_after_seconds: float, queues: Sequence[str] | None = None) -> tuple[list[Closed], list[str]]:
    """Reap expired leases, publish the jobs that were requeued, and re-send ready ones whose message is missing.

    Returns ``(closed attempts, ids published)``.
    """
    with store.session() as s:
        closed = endings.reap_expired(s)
    requeued = [c.job_id for c in closed if c.status == "requeued"]
    with store.session() as s:
        ready = ledger.ready_to_publish(s, job_ids=requeued) if requeued else []
    sent = publish_after_commit(store, ready) if ready else []
    sent += resend(store, older_than_seconds=resend_after_seconds, queues=queues)
    return closed, sent
