"""The baseline for the queue benchmark: a plain Celery task doing nothing, same settings."""

import os

import redis
from celery import Celery

app = Celery("plain", broker=os.environ["BROKER_URL"])
app.conf.update(
    task_serializer="json", accept_content=["json"], result_backend=None, task_ignore_result=True,
    task_acks_late=True, task_reject_on_worker_lost=True, worker_prefetch_multiplier=1,
    worker_hijack_root_logger=False,
)
_done = redis.Redis.from_url(os.environ["BROKER_URL"])


@app.task(name="plain.noop")
def noop(i: int) -> None:
    # The one thing the baseline does: count itself done, so the benchmark can see the end.
    _done.incr("plain:done")
