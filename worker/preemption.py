"""Spot preemption notices, and how one reaches the payloads in the pool processes.

A notice is any of: SIGTERM to the worker (what a supervisor, Docker or a node drain sends), an
answer from the cloud's metadata endpoint polled every ``PREEMPTION_POLL_SECONDS``
(``PREEMPTION_NOTICE_URL`` with ``PREEMPTION_NOTICE_KIND=aws|gcp``), or the file
``PREEMPTION_NOTICE_FILE`` appearing. Nothing is polled unless configured.

The worker's main process turns every notice into Celery's warm shutdown (it stops taking
messages and waits for the running jobs) and, through ``Drain``, tells the pool processes to stop
now: it sends them ``NOTICE_SIGNAL`` every half second (a pool process that was not listening yet
hears the next one), whose handler only sets a flag that ``ctx.should_stop()`` reads, so it works
while the database is down; and it sets ``preempt_requested`` on this worker's running jobs, which their
heartbeats read, as a fallback. Payloads then checkpoint and stop; the runtime settles each job
as preempted (charged the time it used, no attempt counted) and requeues it at once.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Optional

from core.settings import Settings

log = logging.getLogger("budgetq.worker")

# SIGUSR1 is billiard's soft time limit in pool processes; SIGUSR2 is free in them.
NOTICE_SIGNAL = signal.SIGUSR2
# A plain flag, not a threading.Event: a signal handler must not take a lock its own thread may hold.
_noticed = False

AWS_TOKEN_PATH = "/latest/api/token"
AWS_ACTION_PATH = "/latest/meta-data/spot/instance-action"
GCP_PREEMPTED_PATH = "/computeMetadata/v1/instance/preempted"


def noticed() -> bool:
    """Whether this process was told its machine is being reclaimed."""
    return _noticed


def _on_notice_signal(_signum, _frame) -> None:
    global _noticed
    _noticed = True


def ignore_until_listening() -> None:
    """In the main process, before the pool forks: pool processes start with ``NOTICE_SIGNAL`` ignored.

    billiard replaces any inherited handler of it with one that exits the process, but leaves an
    ignored signal alone; each pool process then ``listen()``s when it first runs a job.
    """
    signal.signal(NOTICE_SIGNAL, signal.SIG_IGN)


_listening_in: Optional[int] = None


def listen() -> None:
    """Make ``NOTICE_SIGNAL`` set this (pool) process's flag; once per process. A notice sent before
    this is heard again: the main process repeats it every half second."""
    global _listening_in
    if _listening_in != os.getpid():
        signal.signal(NOTICE_SIGNAL, _on_notice_signal)
        _listening_in = os.getpid()


# ---------------------------------------------------------------------------------------------
# Where notices come from


def check_url(base: str, kind: str, *, timeout: float = 2.0) -> Optional[str]:
    """Ask a metadata server whether this instance is being reclaimed; a line saying so, or None."""
    return (_gcp if kind == "gcp" else _aws)(base, timeout)


def _aws(base: str, timeout: float) -> Optional[str]:
    # IMDSv2: a session token first (PUT), then the instance-action document; 404 means no action.
    token_request = urllib.request.Request(base + AWS_TOKEN_PATH, method="PUT",
                                           headers={"X-aws-ec2-metadata-token-ttl-seconds": "21600"})
    with urllib.request.urlopen(token_request, timeout=timeout) as answer:
        token = answer.read().decode().strip()
    action_request = urllib.request.Request(base + AWS_ACTION_PATH, headers={"X-aws-ec2-metadata-token": token})
    try:
        with urllib.request.urlopen(action_request, timeout=timeout) as answer:
            document = json.loads(answer.read() or b"{}")
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return None
        raise
    return f"aws spot instance-action: {document.get('action', '?')} at {document.get('time', '?')}"


def _gcp(base: str, timeout: float) -> Optional[str]:
    request = urllib.request.Request(base + GCP_PREEMPTED_PATH, headers={"Metadata-Flavor": "Google"})
    with urllib.request.urlopen(request, timeout=timeout) as answer:
        preempted = answer.read().decode().strip().upper() == "TRUE"
    return "gcp instance/preempted is TRUE" if preempted else None


def check_file(path: str) -> Optional[str]:
    return f"notice file {path} appeared" if path and Path(path).exists() else None


class NoticeWatcher(threading.Thread):
    """Polls the configured notice URL or file; calls ``on_notice(line)`` once, on the first notice."""

    def __init__(self, settings: Settings, on_notice: Callable[[str], None]) -> None:
        super().__init__(name="budgetq-preemption-watch", daemon=True)
        self.settings, self.on_notice = settings, on_notice
        self._done = threading.Event()

    @staticmethod
    def wanted(settings: Settings) -> bool:
        return bool(settings.preemption_notice_url or settings.preemption_notice_file)

    def run(self) -> None:
        while not self._done.wait(self.settings.preemption_poll_seconds):
            notice = self.check()
            if notice:
                self.on_notice(notice)
                return

    def check(self) -> Optional[str]:
        notice = check_file(self.settings.preemption_notice_file)
        if notice or not self.settings.preemption_notice_url:
            return notice
        try:
            return check_url(self.settings.preemption_notice_url, self.settings.preemption_notice_kind)
        except (OSError, ValueError) as exc:  # an unreachable metadata server is not a notice
            log.debug("preemption notice URL did not answer: %s", exc)
            return None

    def close(self) -> None:
        self._done.set()


# ---------------------------------------------------------------------------------------------
# Telling the pool processes


class Drain(threading.Thread):
    """Once started: signal the pool processes every half second, and set the ledger flag once."""

    def __init__(self, *, pool_pids: Callable[[], list[int]], mark_ledger: Callable[[], int]) -> None:
        super().__init__(name="budgetq-drain", daemon=True)
        self.pool_pids, self.mark_ledger = pool_pids, mark_ledger
        self._done = threading.Event()

    def run(self) -> None:
        marked = False
        while True:
            for pid in self.pool_pids():
                try:
                    os.kill(pid, NOTICE_SIGNAL)
                except ProcessLookupError:
                    pass
            if not marked:
                try:
                    told = self.mark_ledger()
                    marked = True
                    log.warning("preemption: told %d running job(s) through the ledger as well", told)
                except Exception as exc:  # noqa: BLE001 - the database may be down; the signal still works
                    log.warning("preemption: could not set the ledger flag yet (%s)", exc)
            if self._done.wait(0.5):
                return

    def close(self) -> None:
        self._done.set()
