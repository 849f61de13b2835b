"""Whatever lands on a queue, a worker lives on: malformed and forged messages, on Redis and the embedded broker.

Each malformed message is acknowledged, logged with its reason, recorded in ``rejected_messages``,
never run and never charged; the worker then runs a real job submitted after them. A forged
header decides nothing: time limits and the reservation come from the ledger row.
"""

import json
import os
import pickle
import signal
import time
import uuid
from pathlib import Path

import pytest
from kombu import Exchange, Producer, Queue
from sqlalchemy import func, select

from core.queue import RUN_JOB, make_app
from core.settings import load_settings
from models import ledger
from models.db import Ledger
from models.schema import LedgerEntry, RejectedMessage
from tests.conftest import wait_for

QUEUE = "calibrate"
NO_SUCH_JOB = "0" * 32


def v2(body, **headers):
    return dict(body=json.dumps(body).encode(), headers={"task": RUN_JOB, "id": uuid.uuid4().hex, "lang": "py", **headers})


# Each entry: what a producer (or an attacker, or a bug) might send. None of them may run or cost anything.
MALFORMED = {
    "not JSON": dict(v2(None), body=b"{not json"),
    "pickle content type": dict(v2(None), body=pickle.dumps([[NO_SUCH_JOB], {}, {}]),
                                content_type="application/x-python-serialize", content_encoding="binary"),
    "yaml content type": dict(v2(None), body=b"- [x]", content_type="application/x-yaml"),
    "body is an object": v2({"args": [NO_SUCH_JOB]}),
    "body is a number": v2(42),
    "args of the wrong type": v2([[123], {}, {}]),
    "args that are no job id": v2([["../../etc/passwd"], {}, {}]),
    "two args": v2([[NO_SUCH_JOB, NO_SUCH_JOB], {}, {}]),
    "keyword arguments": v2([[NO_SUCH_JOB], {"seconds": 1}, {}]),
    "callbacks": v2([[NO_SUCH_JOB], {}, {"callbacks": [{"task": RUN_JOB, "args": [NO_SUCH_JOB]}]}]),
    "huge args": v2([["a" * 200_000], {}, {}]),
    "not utf-8": dict(v2(None), body=b"\xff\xfe\x00["),
    "unknown task name": v2([[NO_SUCH_JOB], {}, {}], task="os.system"),
    "task name not a string": v2([[NO_SUCH_JOB], {}, {}], task=[RUN_JOB]),
    "no headers at all": dict(v2([[NO_SUCH_JOB], {}, {}]), headers={}),
    "no id header": dict(v2([[NO_SUCH_JOB], {}, {}]), headers={"task": RUN_JOB}),
    "protocol 1": dict(body=json.dumps({"task": RUN_JOB, "id": "p1", "args": [NO_SUCH_JOB], "kwargs": {}}).encode(), headers={}),
}


def publish(env, message: dict) -> None:
    app = make_app(load_settings(env.vars))
    with app.connection_for_write() as conn:
        queue = Queue(QUEUE, Exchange(QUEUE), routing_key=QUEUE)
        Producer(conn.default_channel).publish(
            message["body"], exchange=queue.exchange, routing_key=QUEUE, declare=[queue], headers=message["headers"],
            content_type=message.get("content_type", "application/json"),
            content_encoding=message.get("content_encoding", "utf-8"),
        )


def unreadable_items(env) -> int:
    """Items that are not even message envelopes, put straight into the broker's storage."""
    items = [b"garbage that is not JSON", b'"a JSON string, not an envelope"',
             json.dumps({"body": "%%% not base64", "headers": {}, "properties": {"body_encoding": "base64"}}).encode()]
    if "BROKER_URL" in env.vars:
        import redis

        client = redis.Redis.from_url(env.vars["BROKER_URL"])
        for item in items:
            client.lpush(QUEUE, item)
    else:
        folder = Path(env.vars["BUDGETQ_HOME"]) / "broker" / "queue"
        for n, item in enumerate(items):
            (folder / f"{int(time.monotonic() * 1000)}_{uuid.uuid4().hex}{n}.{QUEUE}.msg").write_bytes(item)
    return len(items)


def rejected(env) -> list[str]:
    with Ledger(env.vars["DATABASE_URL"]).session() as s:
        return list(s.scalars(select(RejectedMessage.reason).order_by(RejectedMessage.id)))


def charges(env) -> int:
    with Ledger(env.vars["DATABASE_URL"]).session() as s:
        return s.scalar(select(func.count()).select_from(LedgerEntry).where(LedgerEntry.kind == "charge"))


@pytest.mark.parametrize("backend", ["embedded", "distributed"])
def test_malformed_messages_of_every_shape_are_rejected_and_the_worker_lives_on(request, backend):
    env = request.getfixturevalue(backend)
    env.ok("budget", "create", "b", "--total", "1.00")
    worker = env.worker("--queues", QUEUE)
    try:
        # Given a worker, when every malformed shape and some unreadable queue items arrive...
        for message in MALFORMED.values():
            publish(env, message)
        expected = len(MALFORMED) + unreadable_items(env)
        wait_for(lambda: len(rejected(env)) >= expected, timeout=90, what="every malformed message to be recorded")
        # ...then each is on the record with its reason, nothing ran, nothing was charged,
        assert len(rejected(env)) == expected
        reasons = " | ".join(rejected(env))
        for phrase in ("not JSON", "application/json", "not [args, kwargs, embed]", "not [job id]", "kwargs",
                       "callbacks", "byte limit", "unknown task", "protocol 1", "id header", "not a JSON message envelope",
                       "not a message envelope"):
            assert phrase in reasons, phrase
        assert charges(env) == 0
        # ...and the worker, alive, runs the next real job.
        assert worker.poll() is None
        job_id = json.loads(env.ok("submit", "calibrate", "--budget", "b", "--estimate", "0.05", "--param", "seconds=1",
                                   "--param", "matrix_size=64", "--json").stdout)["id"]
        wait_for(lambda: json.loads(env.ok("jobs", "show", job_id, "--json").stdout)["status"] == "succeeded",
                 timeout=120, what="the real job to succeed")
        assert worker.poll() is None
        assert charges(env) == 1
        assert json.loads(env.ok("budget", "audit", "--json").stdout)["ok"]
        assert json.loads(env.ok("jobs", "rejected", "--json").stdout)[0]["worker"]
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        out, _ = worker.communicate(timeout=60)
    assert worker.returncode == 0, out[-3000:]
    assert "Unrecoverable error" not in out


def test_forged_headers_change_neither_the_time_limit_nor_the_charge(distributed):
    distributed.ok("budget", "create", "b", "--total", "1.00")
    store = Ledger(distributed.vars["DATABASE_URL"])
    with store.session() as s:  # admitted but not yet published: the forged message is the first to arrive
        job, _ = ledger.admit_job(s, budget="b", initiative="calibrate", queue=QUEUE, params={"seconds": 3, "matrix_size": 64},
                                  estimate_micros=50_000, max_attempts=1)
    forged = {"timelimit": [0.5, 0.2], "budgetq_reserved_micros": 1, "eta": "not a date", "expires": "never"}
    publish(distributed, v2([[NO_SUCH_JOB], {}, {}], **forged))  # no such job: refused by the claim, nothing wedged
    publish(distributed, v2([[job.id], {}, {}], **forged))
    publish(distributed, v2([[job.id], {}, {}], timelimit="garbage", budgetq_reserved_micros="1e99"))  # a duplicate
    distributed.burst(timeout=120)
    done = json.loads(distributed.ok("jobs", "show", job.id, "--json").stdout)
    # Ran its full 3 seconds (a 0.2 s soft limit would have stopped it), on its one attempt, charged its own time.
    assert (done["status"], done["attempts"], done["stop_reason"]) == ("succeeded", 1, None)
    assert 0 < done["charged_micros"] < 50_000
    assert charges(distributed) == 1
    assert rejected(distributed) == []  # well-formed, so run (or refused by the claim), not rejected
    assert json.loads(distributed.ok("budget", "audit", "--json").stdout)["ok"]
