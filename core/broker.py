"""What the broker holds: the jobs whose messages are still queued, read without consuming them.

The upkeep leader re-publishes a ready job only when its message is really missing (lost in a
broker restart, or taken by a worker that died before claiming it). To know that, it looks:
on Redis at the queue lists and at the messages delivered but not yet acknowledged; on the
embedded filesystem broker at the message files. Other transports (AMQP) cannot be read without
consuming, so there a queue counts as holding its jobs' messages unless it is empty.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Optional

from celery import Celery

log = logging.getLogger("budgetq.queue")


@dataclass(frozen=True)
class InFlight:
    """Job ids with a message in the broker; ``empty_queues`` answers for transports that cannot be read."""

    job_ids: frozenset[str]
    readable: bool = True
    empty_queues: frozenset[str] = frozenset()

    def holds(self, job_id: str, queue: str) -> bool:
        if self.readable:
            return job_id in self.job_ids
        return queue not in self.empty_queues


def in_flight(app: Celery, queues: Iterable[str], *, task: str, unacked_within: float) -> InFlight:
    """The jobs of ``task`` whose message sits in one of ``queues``, or was delivered less than
    ``unacked_within`` seconds ago and is not yet acknowledged (a worker is picking it up)."""
    queues = sorted(set(queues))
    url = str(app.conf.broker_url)
    scheme = url.split("://", 1)[0].lower()
    if scheme == "filesystem":
        return InFlight(frozenset(_filesystem_ids(app, queues, task)))
    with app.connection_for_read() as conn:
        channel = conn.default_channel
        if scheme in ("redis", "rediss"):
            return InFlight(frozenset(_redis_ids(channel, queues, task, unacked_within)))
        empty = frozenset(q for q in queues if _passive_size(channel, q) == 0)
        return InFlight(frozenset(), readable=False, empty_queues=empty)


def job_id_of(envelope: Any, task: str) -> Optional[str]:
    """The job id a kombu message envelope carries for ``task``, or None if it carries none."""
    try:
        if not isinstance(envelope, dict) or (envelope.get("headers") or {}).get("task") != task:
            return None
        body = envelope["body"]
        if (envelope.get("properties") or {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        args = json.loads(body)[0]
        return args[0] if isinstance(args, list) and args and isinstance(args[0], str) else None
    except (KeyError, IndexError, TypeError, ValueError):
        return None


def _redis_ids(channel: Any, queues: list[str], task: str, unacked_within: float) -> set[str]:
    client = channel.client
    found: set[str] = set()
    for queue in queues:
        for key in {channel._q_for_pri(queue, pri) for pri in channel.priority_steps}:
            for raw in client.lrange(key, 0, -1):
                found.add(job_id_of(_loads(raw), task))
    recent = time.time() - unacked_within
    for tag, delivered in client.zrangebyscore(channel.unacked_index_key, recent, "+inf", withscores=True):
        entry = _loads(client.hget(channel.unacked_key, tag))
        if isinstance(entry, list) and entry:
            found.add(job_id_of(entry[0], task))
    found.discard(None)
    return found


def _filesystem_ids(app: Celery, queues: list[str], task: str) -> set[str]:
    folder = app.conf.broker_transport_options.get("data_folder_in")
    wanted = {f"{q}.msg" for q in queues}
    found: set[str] = set()
    for name in os.listdir(folder) if folder and os.path.isdir(folder) else ():
        if name.partition(".")[2] not in wanted:
            continue
        try:
            with open(os.path.join(folder, name), "rb") as handle:
                found.add(job_id_of(_loads(handle.read()), task))
        except OSError:
            continue  # taken by a worker while we listed: it is in flight, and its claim will show
    found.discard(None)
    return found


def _passive_size(channel: Any, queue: str) -> Optional[int]:
    try:
        return channel.queue_declare(queue=queue, passive=True).message_count
    except Exception:  # noqa: BLE001 - a queue never declared holds nothing
        return 0


def _loads(raw: Any) -> Any:
    try:
        return json.loads(raw) if raw is not None else None
    except (TypeError, ValueError):
        return None
