"""Broker transports that survive garbage on the queue.

kombu's Redis and filesystem transports pop an item and parse it as a message envelope before any
Celery code sees it. An item that is not JSON, or JSON that is not an envelope, raised out of the
event loop and stopped the worker; the item was already popped, so nothing was lost but the worker.
These subclasses catch that one step: the item is dropped (it is gone either way), reported to
``on_unreadable`` (the worker records it as a rejected message) and the loop goes on. Connection
errors still propagate, so reconnecting works as before.

Messages that are envelopes but not valid budgetq tasks are handled later, by the worker's
consumer (``worker.guard``), which can acknowledge them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from queue import Empty
from typing import Any, Optional

from kombu.transport import filesystem as _filesystem
from kombu.transport import redis as _redis

log = logging.getLogger("budgetq.worker")

# Called as on_unreadable(reason, excerpt, queue) from the worker's main process; the worker sets it.
on_unreadable: Optional[Callable[[str, str, Optional[str]], None]] = None

REDIS = f"{__name__}:GuardedRedisTransport"
FILESYSTEM = f"{__name__}:GuardedFilesystemTransport"


def _report(reason: str, raw: Any = None, queue: Optional[str] = None) -> None:
    excerpt = repr(raw)[:500] if raw is not None else ""
    log.warning("dropped an unreadable item from queue %s: %s %s", queue or "?", reason, excerpt)
    if on_unreadable is not None:
        try:
            on_unreadable(reason, excerpt, queue)
        except Exception:  # noqa: BLE001 - reporting must never stop the event loop
            log.exception("could not record the unreadable item")


def _fatal_errors(transport: Any) -> tuple[type[BaseException], ...]:
    return (Empty, *transport.connection_errors, *transport.channel_errors)


class _GuardedDelivery:
    """Transport mixin: an envelope kombu cannot turn into a Message is reported, not raised."""

    def _deliver(self, message, queue):
        try:
            return super()._deliver(message, queue)
        except _fatal_errors(self):
            raise
        except Exception as exc:  # noqa: BLE001 - anything else means the item itself is malformed
            _report(f"not a message envelope ({type(exc).__name__}: {exc})", message, queue)
            return None


class GuardedRedisChannel(_redis.Channel):
    def _brpop_read(self, **options):
        try:
            return super()._brpop_read(**options)
        except _fatal_errors(self.connection):
            raise
        except Exception as exc:  # noqa: BLE001 - the popped item was not JSON; it is gone already
            _report(f"not a JSON message envelope ({type(exc).__name__}: {exc})")
            return True

    def _get(self, queue):
        try:
            return super()._get(queue)
        except _fatal_errors(self.connection):
            raise
        except Exception as exc:  # noqa: BLE001
            _report(f"not a JSON message envelope ({type(exc).__name__}: {exc})", queue=queue)
            raise Empty() from None


class GuardedRedisTransport(_GuardedDelivery, _redis.Transport):
    Channel = GuardedRedisChannel


class GuardedFilesystemChannel(_filesystem.Channel):
    def _get(self, queue):
        try:
            return super()._get(queue)
        except Empty:
            raise
        except Exception as exc:  # noqa: BLE001 - the file was moved off the queue before it failed to parse
            _report(f"not a JSON message envelope ({type(exc).__name__}: {exc})", queue=queue)
            raise Empty() from None


class GuardedFilesystemTransport(_GuardedDelivery, _filesystem.Transport):
    Channel = GuardedFilesystemChannel


def for_url(url: str) -> Optional[str]:
    """The guarded transport for a broker URL, or None to keep kombu's own."""
    scheme = url.split("://", 1)[0].lower()
    if scheme in ("redis", "rediss"):
        return REDIS
    if scheme == "filesystem":
        return FILESYSTEM
    return None
