"""The worker's consumer: every message is checked before Celery sees it, and the broker is retried forever.

A queue is shared ground: anything that can publish can put anything on it. A message whose shape
Celery does not expect used to raise inside the consumer and stop the worker (with status 0, so no
supervisor restarted it), unacknowledged, so the next worker died on it too. Here each message is
checked first: content type JSON, protocol 2 headers naming ``budgetq.run_job``, a body of exactly
``[[job_id], {}, {}]`` under 64 KiB. One that fails is acknowledged, logged with its reason,
recorded in the ledger's ``rejected_messages`` and never run; nothing is charged. One that passes
has its execution headers reset (``timelimit``, ``eta``, ``expires``, ``budgetq_reserved_micros``...),
because a message does not get to decide anything: the ledger row does.

The consumer also reconnects to the broker forever, waiting at most
``core.queue.RECONNECT_BACKOFF_MAX_SECONDS`` between attempts.
"""

from __future__ import annotations

import json
import logging
import queue
import re
import threading
from collections.abc import Callable
from typing import Any, Optional

from celery.utils.functional import promise
from celery.worker.consumer import Consumer

from core import transports
from core.queue import RECONNECT_BACKOFF_MAX_SECONDS, RUN_JOB
from models import fleet
from models.db import Ledger
from models.ledger import utcnow

log = logging.getLogger("budgetq.worker")

MAX_BODY_BYTES = 64 * 1024
JOB_ID = re.compile(r"^[0-9a-f]{32}$")
JSON_TYPES = ("application/json",)
# Execution headers a message might carry; a budgetq job takes none of them from the message.
_RESET_HEADERS = {"eta": None, "expires": None, "retries": 0, "group": None, "group_index": None, "chord": None,
                  "ignore_result": True, "replaced_task_nesting": 0}
_DROPPED_HEADERS = ("budgetq_reserved_micros", "shadow", "stamps", "stamped_headers", "countdown")


def problem_with(message: Any) -> Optional[str]:
    """Why ``message`` is not a well-formed ``run_job`` message, in one line; None when it is."""
    headers = message.headers
    if not isinstance(headers, dict):
        return f"headers are a {type(headers).__name__}, not a mapping"
    if "task" not in headers:
        return "no task header: not a Celery protocol 2 message (protocol 1 is not accepted)"
    if headers.get("task") != RUN_JOB:
        return f"unknown task {_short(headers.get('task'))}: budgetq workers run only {RUN_JOB}"
    if not isinstance(headers.get("id"), str) or not 0 < len(headers["id"]) <= 200:
        return "the id header is missing or not a short string"
    if message.content_type not in JSON_TYPES:
        return f"content type {_short(message.content_type)} is not application/json; budgetq accepts JSON only"
    if (message.content_encoding or "utf-8").lower() not in ("utf-8", "utf8"):
        return f"content encoding {_short(message.content_encoding)} is not utf-8"
    body = message.body
    if isinstance(body, str):
        body = body.encode("utf-8", "surrogatepass")
    if not isinstance(body, (bytes, bytearray, memoryview)):
        return f"the body is a {type(body).__name__}, not bytes"
    if len(body) > MAX_BODY_BYTES:
        return f"the body is {len(body)} bytes, over the {MAX_BODY_BYTES}-byte limit"
    try:
        decoded = json.loads(bytes(body).decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        return f"the body is not JSON ({exc})"
    return _problem_with_body(decoded)


def _problem_with_body(decoded: Any) -> Optional[str]:
    if not isinstance(decoded, list) or len(decoded) != 3:
        return f"the body is {_shape(decoded)}, not [args, kwargs, embed]"
    args, kwargs, embed = decoded
    if not (isinstance(args, list) and len(args) == 1 and isinstance(args[0], str) and JOB_ID.match(args[0])):
        return f"args are {_shape(args)}, not [job id] (32 lowercase hex characters)"
    if kwargs != {}:
        return f"kwargs are {_shape(kwargs)}; run_job takes none"
    if not isinstance(embed, dict) or any(embed.get(k) for k in ("callbacks", "errbacks", "chain", "chord")):
        return "the message carries callbacks, errbacks, a chain or a chord; budgetq jobs take none"
    return None


def reset_headers(message: Any) -> None:
    """Make the execution headers neutral: limits and reservations come from the ledger row."""
    headers = message.headers
    for name in _DROPPED_HEADERS:
        headers.pop(name, None)
    headers.update(_RESET_HEADERS, timelimit=[None, None])
    for name in ("root_id", "parent_id"):
        if not isinstance(headers.get(name), (str, type(None))):
            headers[name] = None
    job_id = json.loads(bytes(message.body if not isinstance(message.body, str) else message.body.encode()))[0][0]
    headers["argsrepr"], headers["kwargsrepr"] = repr([job_id]), "{}"


def _shape(value: Any) -> str:
    return f"{type(value).__name__} {_short(value)}"


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


# ---------------------------------------------------------------------------------------------
# Recording rejections without ever blocking the consumer


class Rejections(threading.Thread):
    """Writes rejected messages to the ledger from a thread of its own; keeps them while the database is down."""

    def __init__(self, store: Ledger, worker: str) -> None:
        super().__init__(name="budgetq-rejections", daemon=True)
        self.store, self.worker = store, worker
        self._queue: "queue.Queue[dict[str, Any]]" = queue.Queue(maxsize=10_000)
        self._done = threading.Event()

    def add(self, *, reason: str, excerpt: str, size: int, queue_name: Optional[str] = None, task: Optional[str] = None,
            message_id: Optional[str] = None, content_type: Optional[str] = None) -> None:
        row = dict(received_at=utcnow(), worker=self.worker, queue=_cut(queue_name), task=_cut(task),
                   message_id=_cut(message_id), content_type=_cut(content_type), bytes=size, reason=reason, excerpt=excerpt)
        try:
            self._queue.put_nowait(row)
        except queue.Full:
            log.error("too many rejected messages waiting to be recorded; this one is only logged: %s", reason)

    def run(self) -> None:
        pending: list[dict[str, Any]] = []
        while not (self._done.is_set() and self._queue.empty() and not pending):
            try:
                pending.append(self._queue.get(timeout=1.0))
                while len(pending) < 500:
                    pending.append(self._queue.get_nowait())
            except queue.Empty:
                pass
            if pending and self._write(pending):
                pending = []
            elif pending and self._done.is_set():
                return  # shutting down with the database away: they were logged

    def _write(self, rows: list[dict[str, Any]]) -> bool:
        try:
            with self.store.session() as s:
                fleet.record_rejected(s, rows=rows)
            return True
        except Exception as exc:  # noqa: BLE001 - kept and retried in a second
            log.warning("could not record %d rejected message(s) yet: %s", len(rows), exc)
            self._done.wait(1.0)
            return False

    def close(self) -> None:
        self._done.set()


def _cut(value: Any, limit: int = 200) -> Optional[str]:
    return None if value is None else str(value)[:limit]


_rejections: Optional[Rejections] = None


def configure(rejections: Rejections) -> None:
    """Route this process's rejected messages (and unreadable queue items) to ``rejections``."""
    global _rejections
    _rejections = rejections
    transports.on_unreadable = lambda reason, excerpt, queue_name: rejections.add(
        reason=reason, excerpt=excerpt, size=len(excerpt), queue_name=queue_name)


def reject(message: Any, reason: str) -> None:
    """Acknowledge ``message`` without running it; log and record why."""
    headers = message.headers if isinstance(message.headers, dict) else {}
    body = message.body
    size = len(body) if isinstance(body, (bytes, bytearray, str, memoryview)) else 0
    queue_name = (message.delivery_info or {}).get("routing_key") if isinstance(message.delivery_info, dict) else None
    log.warning("rejected a message on queue %s (task %s, id %s): %s", queue_name, _short(headers.get("task"), 60),
                _short(headers.get("id"), 60), reason)
    try:
        message.ack()
    except Exception as exc:  # noqa: BLE001 - already acknowledged, or the channel is gone (then it comes back, and is rejected again)
        log.warning("could not acknowledge the rejected message: %s", exc)
    if _rejections is not None:
        excerpt = _short(bytes(body[:300]) if isinstance(body, (bytes, bytearray, memoryview)) else body, 500)
        _rejections.add(reason=reason, excerpt=excerpt, size=size, queue_name=queue_name,
                        task=headers.get("task") if isinstance(headers.get("task"), str) else None,
                        message_id=headers.get("id") if isinstance(headers.get("id"), str) else None,
                        content_type=message.content_type if isinstance(message.content_type, str) else None)


class GuardedConsumer(Consumer):
    """Celery's consumer with every message checked first, and endless, capped reconnection."""

    def create_task_handler(self, promise: Callable = promise):
        celery_handler = super().create_task_handler(promise)

        def on_task_received(message):
            try:
                problem = problem_with(message)
            except Exception as exc:  # noqa: BLE001 - a message odd enough to break the check is rejected too
                problem = f"unreadable message ({type(exc).__name__}: {exc})"
            if problem is not None:
                return reject(message, problem)
            try:
                reset_headers(message)
                return celery_handler(message)
            except Exception as exc:  # noqa: BLE001 - whatever Celery could not take must not stop the worker
                log.exception("Celery could not take a message that passed the checks")
                return reject(message, f"Celery refused it ({type(exc).__name__}: {exc})")

        return on_task_received

    def on_decode_error(self, message, exc):
        reject(message, f"undecodable ({type(exc).__name__}: {exc})")

    def on_unknown_message(self, body, message):
        reject(message, "not a task message")

    def on_unknown_task(self, body, message, exc):
        reject(message, f"unknown task ({exc})")

    def on_invalid_task(self, body, message, exc):
        reject(message, f"invalid task ({type(exc).__name__}: {exc})")

    def ensure_connected(self, conn):
        def on_error(exc, interval):
            log.error("broker %s unreachable (%s); retrying in %.1fs, for as long as it takes", conn.as_uri(), exc, interval)

        conn = conn.ensure_connection(on_error, None, interval_start=1, interval_step=2,
                                      interval_max=RECONNECT_BACKOFF_MAX_SECONDS, callback=_maybe_shutdown)
        self.first_connection_attempt = False
        self.broker_connection_retry_attempt = 0
        return conn


def _maybe_shutdown() -> None:
    from celery.worker.state import maybe_shutdown

    maybe_shutdown()
