"""``budgetq worker``: a Celery worker plus the upkeep that keeps the queue honest.

A maintenance thread in the worker's main process reaps expired leases (charging and requeueing
their jobs), re-publishes ready jobs whose message was lost, and refreshes this worker's row. In
burst mode it also stops the worker once nothing is left for it to do.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import warnings
from collections.abc import Sequence
from pathlib import Path

from celery import Celery, signals
from celery.worker import state as worker_state

import specs
from core.queue import default_app, publish_after_commit, reap
from core.settings import PasswordMask, Settings
from models import ledger, queries
from models.db import Ledger
from worker.runtime import configure as configure_runtime
from worker.runtime import log_crossings

log = logging.getLogger("budgetq.worker")
# Celery's warning about running as root is six lines at every start; the worker says it once, at INFO.
_ROOT_WARNING = r"You're running the worker with superuser privileges"


def default_queues(settings: Settings) -> list[str]:
    return sorted({settings.queue_for(name) for name in specs.names(settings.extra_initiatives)})


def run_worker(settings: Settings, *, queues: Sequence[str], burst: bool, concurrency: int, loglevel: str,
               display: bool = False) -> None:
    """Register, start the upkeep thread, and run the Celery worker until it stops.

    With ``display`` (a burst worker on a terminal) a live view of the jobs takes the terminal and
    the log goes to ``$BUDGETQ_HOME/logs/worker-<name>.log``; otherwise the log goes to stderr.
    """
    settings = settings.with_changes(concurrency=concurrency)
    logfile = _log_file(settings) if display else None
    _quiet_libraries()
    _configure_logging(loglevel)
    # Pool processes are forked from this one: they run with these very settings.
    configure_runtime(settings)
    store = Ledger(settings.database_url)
    store.require_head()
    with store.session() as s:
        ledger.register_worker(
            s, name=settings.worker_name, host=socket.gethostname(), price_micros_per_hour=settings.price_micros_per_hour,
            spot=settings.spot, instance_type=settings.instance_type, slots=concurrency,
        )
    app = default_app()
    upkeep = Upkeep(app=app, store=store, settings=settings, queues=list(queues), burst=burst)
    upkeep.start()
    worker = app.Worker(
        queues=list(queues), concurrency=concurrency, pool="prefork", loglevel=loglevel, logfile=str(logfile) if logfile else None,
        hostname=f"{settings.worker_name}@{socket.gethostname()}", without_gossip=True, without_mingle=True,
        without_heartbeat=True, optimization="fair", quiet=display or loglevel.lower() in ("warning", "error", "critical"),
    )
    live = None
    if display:
        from worker.display import LiveDisplay

        live = LiveDisplay(store=store, queues=list(queues), log_path=logfile)
        live.start()
    try:
        worker.start()
    finally:
        upkeep.close()
        if live is not None:
            live.close()
        store.engine.dispose()


def _log_file(settings: Settings) -> Path:
    folder = settings.home / "logs"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"worker-{settings.worker_name}.log"


def _quiet_libraries() -> None:
    """Keep library noise out of the worker's log; the pool processes forked from here inherit it.

    transformers prints a "LOAD REPORT" table and progress bars on every model load (a new
    classifier head is expected here: every fine-tune makes one), and tokenizers warns at each fork.
    Set the variables yourself to see them again.
    """
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore", message=_ROOT_WARNING)


def _configure_logging(loglevel: str) -> None:
    """Once Celery has set up logging: job lines at INFO whatever the level, Celery's own task
    lines off (a task "succeeded" even when its job failed), passwords masked in every line."""
    level = logging.getLevelName(loglevel.upper())
    logging.getLogger("budgetq.jobs").setLevel(min(logging.INFO, level) if level < logging.ERROR else level)
    logging.getLogger("celery.app.trace").setLevel(logging.WARNING)

    @signals.after_setup_logger.connect(weak=False, dispatch_uid="budgetq-logging")
    def _after_setup(logger: logging.Logger, **_: object) -> None:
        for handler in logger.handlers:
            if not any(isinstance(f, PasswordMask) for f in handler.filters):
                handler.addFilter(PasswordMask())
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            log.info("running as root: fine for a demo; in production run workers as their own user (Celery's --uid)")


class Upkeep(threading.Thread):
    def __init__(self, *, app: Celery, store: Ledger, settings: Settings, queues: list[str], burst: bool) -> None:
        super().__init__(name="budgetq-upkeep", daemon=True)
        self.app, self.store, self.settings, self.queues, self.burst = app, store, settings, queues, burst
        self.interval = min(1.0, settings.lease_seconds / 4) if burst else min(5.0, settings.lease_seconds / 2)
        self._done = threading.Event()
        self._idle_checks = 0

    def run(self) -> None:
        while not self._done.wait(self.interval):
            try:
                self.tick()
            except Exception:  # noqa: BLE001 - upkeep must outlive a DB or broker blip
                log.exception("worker upkeep failed")

    def tick(self) -> None:
        with self.store.session() as s:
            ledger.touch_worker(s, name=self.settings.worker_name)
        reaped, _ = reap(self.store, resend_after_seconds=self.settings.resend_after_seconds, queues=self.queues)
        for closed in reaped:
            log.warning("reaped job %s attempt %s: %s, charged %s micros", closed.job_id, closed.attempt, closed.status, closed.charge_micros)
            log_crossings(closed)
        if self.burst and self._nothing_left():
            self._idle_checks += 1
            if self._idle_checks >= 2:
                log.info("burst: the queues are drained; stopping")
                self.close()
                os.kill(os.getpid(), signal.SIGTERM)  # Celery's warm shutdown
        else:
            self._idle_checks = 0

    def _nothing_left(self) -> bool:
        """Idle: no request held here, no message waiting, and no job of ours running or ready."""
        if worker_state.active_requests or worker_state.reserved_requests:
            return False
        if any(self._queue_size(q) for q in self.queues):
            return False
        with self.store.session() as s:
            running = queries.any_running(s, queues=self.queues)
            ready = ledger.ready_to_publish(s, older_than_seconds=2.0)
        ready = [j for j in ready if j.queue in self.queues]
        if ready:
            # The queue is empty yet these are ready: their messages were lost. Send them again.
            publish_after_commit(self.store, ready)
        return not running and not ready

    def _queue_size(self, queue: str) -> int:
        try:
            with self.app.connection_for_read() as conn:
                return conn.default_channel.queue_declare(queue=queue, passive=True).message_count
        except Exception:  # noqa: BLE001 - a queue never declared holds nothing
            return 0

    def close(self) -> None:
        self._done.set()
