"""``budgetq worker``: a Celery worker plus the upkeep that keeps the queue honest.

The main process runs Celery's consumer and pool, and beside them:

* ``Upkeep``, a thread that every few seconds refreshes this worker's row (its sign of life),
  settles the results spooled during a database outage, and, if this worker holds the fleet's one
  upkeep lease, reaps expired leases and re-publishes ready jobs whose message is really missing;
* the preemption watch: SIGTERM (Celery's warm shutdown), a metadata URL or a notice file all
  lead to the same drain (``worker.preemption``), after which the worker exits 0;
* ``Exit``, which tells a requested shutdown from Celery returning on its own: only the first
  exits 0, so a supervisor restarts a worker that stopped for any other reason.

In burst mode the upkeep also stops the worker once nothing is left for it to do.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import threading
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

from celery import Celery
from celery import signals as celery_signals
from celery.worker import state as worker_state

import specs
from core.errors import BackendUnavailable, WorkerStopped
from core.queue import default_app, missing_messages, publish_after_commit
from core.settings import PasswordMask, Settings
from models import endings, fleet, ledger, queries
from models.db import Ledger
from worker import guard, preemption
from worker.runtime import configure as configure_runtime
from worker.runtime import log_crossings, settle_and_publish
from worker.spool import Spool
from worker.storage import Store

log = logging.getLogger("budgetq.worker")
UPKEEP_LEASE = "upkeep"
# Celery's warning about running as root is six lines at every start; the worker says it once, at INFO.
_ROOT_WARNING = r"You're running the worker with superuser privileges"


def default_queues(settings: Settings) -> list[str]:
    return sorted({settings.queue_for(name) for name in specs.names(settings.extra_initiatives)})


def run_worker(settings: Settings, *, queues: Sequence[str], burst: bool, concurrency: int, loglevel: str,
               display: bool = False) -> None:
    """Register, start the upkeep and the preemption watch, and run the Celery worker until it stops.

    With ``display`` (a burst worker on a terminal) a live view of the jobs takes the terminal and
    the log goes to ``$BUDGETQ_HOME/logs/worker-<name>.log``; otherwise the log goes to stderr.
    Returns only after a requested shutdown (SIGTERM, a preemption notice, burst done); raises
    ``WorkerStopped`` if Celery stopped for any other reason.
    """
    settings = settings.with_changes(concurrency=concurrency)
    logfile = _log_file(settings) if display else None
    _quiet_libraries()
    _configure_logging(loglevel)
    # Pool processes are forked from this one: they run with these very settings, and hear notices.
    configure_runtime(settings)
    preemption.ignore_until_listening()
    Store(settings.artifact_url, settings.storage_options, variable="ARTIFACT_DIR")  # a bad store fails now, not mid-job
    Store(settings.checkpoint_url, settings.storage_options, variable="CHECKPOINT_DIR")
    store = Ledger(settings.database_url)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # asked to stop while waiting for the database: stop
    _register(store, settings, slots=concurrency)
    rejections = guard.Rejections(store, settings.worker_name)
    rejections.start()
    guard.configure(rejections)
    app = default_app()
    worker = app.Worker(
        queues=list(queues), concurrency=concurrency, pool="prefork", loglevel=loglevel, logfile=str(logfile) if logfile else None,
        hostname=f"{settings.worker_name}@{socket.gethostname()}", without_gossip=True, without_mingle=True,
        without_heartbeat=True, optimization="fair", quiet=display or loglevel.lower() in ("warning", "error", "critical"),
    )
    exit_ = Exit(worker, store, settings)
    upkeep = Upkeep(app=app, store=store, settings=settings, queues=list(queues), burst=burst, exit_=exit_)
    watcher = preemption.NoticeWatcher(settings, exit_.notice) if preemption.NoticeWatcher.wanted(settings) else None
    if watcher:
        # Polled once Celery is up: a notice then goes through its warm shutdown, like SIGTERM.
        celery_signals.worker_ready.connect(lambda **_: watcher.start(), weak=False)
    upkeep.start()
    live = None
    if display:
        from worker.display import LiveDisplay

        live = LiveDisplay(store=store, queues=list(queues), log_path=logfile)
        live.start()
    # A SIGTERM before Celery has installed its own handler still stops the worker cleanly.
    signal.signal(signal.SIGTERM, exit_.early_sigterm)
    try:
        worker.start()
    finally:
        for thread in (upkeep, watcher, exit_.drain, rejections):
            if thread is not None:
                thread.close()
        upkeep.join(timeout=10)
        upkeep.last_flush()
        rejections.join(timeout=5)
        if live is not None:
            live.close()
        store.engine.dispose()
    exit_.check()


def _register(store: Ledger, settings: Settings, *, slots: int) -> None:
    """Check the schema and register this worker, waiting (capped backoff) while the database is down:
    a worker that starts during an outage waits for it, like one already running. A wrong schema fails."""
    delay = 1.0
    while True:
        try:
            store.require_head()
            with store.session() as s:
                fleet.register_worker(
                    s, name=settings.worker_name, host=socket.gethostname(), price_micros_per_hour=settings.price_micros_per_hour,
                    spot=settings.spot, instance_type=settings.instance_type, slots=slots,
                )
            return
        except BackendUnavailable as exc:
            log.error("%s; the worker waits for it (next try in %.0fs)", exc, delay)
            time.sleep(delay)
            delay = min(delay * 2, 10.0)


class Exit:
    """How this worker is leaving: asked to (SIGTERM, a notice, burst done), or not."""

    def __init__(self, worker: Any, store: Ledger, settings: Settings) -> None:
        self.worker, self.store, self.settings = worker, store, settings
        self.requested: Optional[str] = None
        self.drain: Optional[preemption.Drain] = None
        self._lock = threading.Lock()
        celery_signals.worker_shutting_down.connect(self._on_shutdown, weak=False)

    def notice(self, line: str) -> None:
        """A preemption notice from the metadata URL or the file: begin Celery's warm shutdown."""
        log.warning("preemption notice: %s; checkpointing running jobs and shutting down", line)
        self.requested = self.requested or f"preemption notice ({line})"
        os.kill(os.getpid(), signal.SIGTERM)  # -> Celery's warm shutdown -> _on_shutdown

    def early_sigterm(self, _signum, _frame) -> None:
        self.requested = self.requested or "SIGTERM (before the worker was up)"
        worker_state.should_stop = 0  # Celery's warm shutdown, as soon as it looks

    def burst_done(self) -> None:
        self.requested = "burst: the queues are drained"
        os.kill(os.getpid(), signal.SIGTERM)

    def _on_shutdown(self, sig: str = "", how: str = "", **_: Any) -> None:
        # Runs inside Celery's signal handler, in the main thread: only start threads here.
        self.requested = self.requested or f"{sig} ({how.lower()} shutdown)"
        if self.requested.startswith("burst"):
            return
        with self._lock:
            if self.drain is None:
                self.drain = preemption.Drain(pool_pids=self._pool_pids, mark_ledger=self._mark_ledger)
                self.drain.start()

    def _pool_pids(self) -> list[int]:
        try:
            return [p.pid for p in self.worker.pool._pool._pool if p.pid]
        except AttributeError:  # the pool is not up yet, or already gone
            return []

    def _mark_ledger(self) -> int:
        with self.store.session() as s:
            return fleet.request_preemption(s, worker=self.settings.worker_name)

    def check(self) -> None:
        """Raise ``WorkerStopped`` unless the shutdown was requested and clean."""
        code = getattr(self.worker, "exitcode", 0) or 0
        if self.requested is None:
            raise WorkerStopped(f"the Celery worker stopped without being asked to (exit code {code}); see its log above. Restart it")
        if code:
            raise WorkerStopped(f"the Celery worker stopped with exit code {code} after {self.requested}")
        log.info("worker stopped: %s", self.requested)


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

    @celery_signals.after_setup_logger.connect(weak=False, dispatch_uid="budgetq-logging")
    def _after_setup(logger: logging.Logger, **_: object) -> None:
        for handler in logger.handlers:
            if not any(isinstance(f, PasswordMask) for f in handler.filters):
                handler.addFilter(PasswordMask())
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            log.info("running as root: fine for a demo; in production run workers as their own user (Celery's --uid)")


class Upkeep(threading.Thread):
    """Sign of life, the spool, and (for the one leader) reaping and re-publishing missing messages."""

    def __init__(self, *, app: Celery, store: Ledger, settings: Settings, queues: list[str], burst: bool, exit_: Exit) -> None:
        super().__init__(name="budgetq-upkeep", daemon=True)
        self.app, self.store, self.settings, self.queues, self.burst, self.exit = app, store, settings, queues, burst, exit_
        self.interval = min(1.0, settings.lease_seconds / 4) if burst else min(5.0, settings.lease_seconds / 2)
        # This worker's sign of life is refreshed as often as a heartbeat: a reaped attempt is charged up to it.
        self.beat = min(self.interval, settings.heartbeat_seconds)
        self.spool = Spool(settings.spool_dir)
        self._done = threading.Event()
        self._idle_checks = 0
        self._db_up_since: Optional[float] = None
        self._leading = False
        self._last_tick = 0.0

    def run(self) -> None:
        while not self._done.wait(self.beat):
            try:
                if time.monotonic() - self._last_tick < self.interval:
                    self._touch()
                    continue
                self._last_tick = time.monotonic()
                self.tick()
            except BackendUnavailable as exc:
                if self._db_up_since is not None:
                    log.warning("upkeep: %s; retrying every %.1fs", exc, self.interval)
                self._db_up_since = None
            except Exception:  # noqa: BLE001 - upkeep must outlive any blip
                log.exception("worker upkeep failed")
        self._resign()

    def _touch(self) -> None:
        with self.store.session() as s:
            fleet.touch_worker(s, name=self.settings.worker_name)
        if self._db_up_since is None:
            self._db_up_since = time.monotonic()

    def tick(self) -> None:
        self._touch()
        self.flush_spool()  # our own finished work first, before anyone's lease is judged
        if self._lead():
            self._reap_and_resend()
        if self.burst and not self._done.is_set():
            self._check_burst()

    def flush_spool(self) -> int:
        """Settle what was spooled while the database was down. Returns how many were settled."""
        settled = 0
        for path, settlement in self.spool.pending():
            try:
                closed = settle_and_publish(self.store, settlement)
            except BackendUnavailable:
                return settled
            except Exception as exc:  # noqa: BLE001 - LeaseLost (reaped meanwhile) or a bad file: keep going
                log.warning("spooled settlement of job %s attempt %s not settled: %s", settlement.job_id, settlement.attempt, exc)
            else:
                log.warning("settled spooled job %s attempt %s: %s", settlement.job_id, settlement.attempt, closed.status)
                settled += 1
            self.spool.remove(path)
        return settled

    def last_flush(self) -> None:
        try:
            self.flush_spool()
        except Exception as exc:  # noqa: BLE001
            log.warning("spooled settlements left for the next start: %s", exc)

    def _lead(self) -> bool:
        """Hold (take or renew) the fleet's upkeep lease: one worker reaps and re-publishes at a time."""
        with self.store.session() as s:
            leading = fleet.acquire_lease(s, name=UPKEEP_LEASE, holder=self.settings.worker_name,
                                           seconds=max(3 * self.interval, self.settings.lease_seconds))
        if leading != self._leading:
            log.info("upkeep: %s the fleet's upkeep leader", "now" if leading else "no longer")
            self._leading = leading
        return leading

    def _reap_and_resend(self) -> None:
        # After a database outage every worker needs a lease's time to heartbeat again and settle
        # its spool; until then an expired lease says nothing about whether its worker is alive.
        if time.monotonic() - (self._db_up_since or time.monotonic()) < self.settings.lease_seconds:
            return
        with self.store.session() as s:
            reaped = endings.reap_expired(s)
        for closed in reaped:
            log.warning("reaped job %s attempt %s: %s, charged %s micros", closed.job_id, closed.attempt, closed.status, closed.charge_micros)
            log_crossings(closed)
        requeued = [c.job_id for c in reaped if c.status == "requeued"]
        if requeued:
            with self.store.session() as s:
                publish_after_commit(self.store, ledger.ready_to_publish(s, job_ids=requeued))
        older_than = min(self.settings.resend_after_seconds, 2.0) if self.burst else self.settings.resend_after_seconds
        try:
            missing = missing_messages(self.store, older_than_seconds=older_than, unacked_within=max(30.0, 2 * self.settings.lease_seconds))
        except BackendUnavailable:
            raise
        except Exception as exc:  # noqa: BLE001 - the broker is away: nothing can be checked or sent until it is back
            log.warning("upkeep: cannot look into the broker (%s); re-publishing waits for it", exc)
            return
        if missing:
            log.warning("re-publishing %d job(s) whose message is missing: %s", len(missing), ", ".join(j.id for j in missing))
            publish_after_commit(self.store, missing)

    def _check_burst(self) -> None:
        if self._nothing_left():
            self._idle_checks += 1
            if self._idle_checks >= 2:
                log.info("burst: the queues are drained; stopping")
                self.close()
                self.exit.burst_done()
        else:
            self._idle_checks = 0

    def _nothing_left(self) -> bool:
        """Idle: no request held here, nothing spooled, no message waiting, and no job of ours running or ready."""
        if worker_state.active_requests or worker_state.reserved_requests or len(self.spool):
            return False
        if any(self._queue_size(q) for q in self.queues):
            return False
        with self.store.session() as s:
            running = queries.any_running(s, queues=self.queues)
            ready = [j for j in ledger.ready_to_publish(s) if j.queue in self.queues]
        return not running and not ready

    def _queue_size(self, queue: str) -> int:
        try:
            with self.app.connection_for_read() as conn:
                return conn.default_channel.queue_declare(queue=queue, passive=True).message_count
        except Exception:  # noqa: BLE001 - a queue never declared holds nothing
            return 0

    def _resign(self) -> None:
        if self._leading:
            try:
                with self.store.session() as s:
                    fleet.release_lease(s, name=UPKEEP_LEASE, holder=self.settings.worker_name)
            except Exception:  # noqa: BLE001 - it expires on its own
                pass

    def close(self) -> None:
        self._done.set()
