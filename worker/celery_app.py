"""The Celery app: JSON only, late acks, one message at a time, no result backend.

Results live in the ledger, so there is no result backend. With ``BROKER_URL`` unset the broker
is kombu's filesystem transport under ``$BUDGETQ_HOME/broker``: no server to run.
"""

from __future__ import annotations

from functools import lru_cache

from celery import Celery

from models.settings import Settings, load_settings

RUN_JOB = "budgetq.run_job"


def make_app(settings: Settings) -> Celery:
    app = Celery("budgetq", broker=settings.broker_url, set_as_current=True)
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
    return make_app(load_settings())


app = default_app()
