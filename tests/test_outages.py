"""The fleet through outages: our own Redis and PostgreSQL, stopped and started by PID while workers run.

A worker outlives a broker outage longer than Celery's old 12-second give-up; a result finished
while the database is down is spooled and settled once it is back, never run again (and not reaped
in the meantime); a claim waits for the database; and only one upkeep leader re-publishes, and only
the messages that are really missing.
"""

import json
import os
import signal
import time

import redis
from sqlalchemy import func, select

from models.db import Ledger
from models.schema import Job, LedgerEntry
from tests.conftest import make_env, wait_for


def show(env, job_id: str) -> dict:
    return json.loads(env.ok("jobs", "show", job_id, "--json").stdout)


def submit(env, seconds: float, queue: str = "calibrate") -> str:
    return json.loads(env.ok("submit", "calibrate", "--budget", "b", "--estimate", "0.10", "--queue", queue, "--param",
                             f"seconds={seconds}", "--param", "matrix_size=64", "--json").stdout)["id"]


def stop(*workers) -> list[int]:
    for worker in workers:
        os.kill(worker.pid, signal.SIGTERM)
    return [worker.wait(timeout=90) for worker in workers]


def test_a_worker_outlives_a_broker_outage_longer_than_twelve_seconds(tmp_path, sqlite_url, private_redis):
    env = make_env(tmp_path, database_url=sqlite_url, broker_url=private_redis.url)
    env.ok("db", "upgrade")
    env.ok("budget", "create", "b", "--total", "1.00")
    log = tmp_path / "worker.log"
    worker = env.spawn(log, "--queues", "calibrate")
    wait_for(lambda: "ready." in log.read_text(), timeout=60, what="the worker to connect")

    private_redis.stop()  # the broker is gone: killed, its queues with it
    time.sleep(16)
    assert worker.poll() is None, log.read_text()[-3000:]
    private_redis.start()

    job_id = submit(env, 1)
    wait_for(lambda: show(env, job_id)["status"] == "succeeded", timeout=120, what="a job submitted after the outage to run")
    assert worker.poll() is None
    assert stop(worker) == [0]
    assert "for as long as it takes" in log.read_text()


def test_a_result_finished_during_a_database_outage_is_settled_once_it_is_back_and_never_rerun(tmp_path, private_postgres, redis_url):
    env = make_env(tmp_path, database_url=private_postgres.create_database(), broker_url=redis_url, LEASE_SECONDS="3")
    env.ok("db", "upgrade")
    env.ok("budget", "create", "b", "--total", "1.00")
    # Two machines (homes of their own), one slot each. A ends during the outage; B spans it; C is
    # delivered during it, so its claim has to wait for the database.
    short, long_, waiting = submit(env, 10), submit(env, 30), submit(env, 1)
    logs = [tmp_path / "w1.log", tmp_path / "w2.log"]
    workers = [env.spawn(log, "--queues", "calibrate", BUDGETQ_HOME=str(tmp_path / f"home{n}"), WORKER_NAME=f"machine-{n}")
               for n, log in enumerate(logs)]
    wait_for(lambda: show(env, short)["metered_micros"] > 0 and show(env, long_)["metered_micros"] > 0, timeout=90,
             what="both jobs to run")

    private_postgres.stop()
    wait_for(lambda: any("spooled to" in log.read_text() for log in logs), timeout=60, what="the short job to spool its result")
    time.sleep(8)  # well past every lease (3 s)
    assert all(w.poll() is None for w in workers)
    private_postgres.start()

    wait_for(lambda: all(show(env, j)["status"] == "succeeded" for j in (short, long_, waiting)), timeout=150,
             what="all three jobs to settle")
    with Ledger(env.vars["DATABASE_URL"]).session() as s:
        attempts = dict(s.execute(select(Job.id, Job.attempts)).all())
        charges = dict(s.execute(select(LedgerEntry.job_id, func.count()).where(LedgerEntry.kind == "charge").group_by(LedgerEntry.job_id)).all())
    assert attempts == {short: 1, long_: 1, waiting: 1}  # nothing ran twice, nothing was reaped
    assert charges == {short: 1, long_: 1, waiting: 1}
    text = "".join(log.read_text() for log in logs)
    assert "settled spooled job" in text and "reaped job" not in text and "waits for the database" in text
    assert json.loads(env.ok("budget", "audit", "--json").stdout)["ok"]
    assert stop(*workers) == [0, 0]


def test_one_leader_re_publishes_only_the_messages_that_are_really_missing(distributed, tmp_path):
    distributed.vars.update(RESEND_AFTER_SECONDS="1", LEASE_SECONDS="2")
    distributed.ok("budget", "create", "b", "--total", "5.00")
    jobs = [submit(distributed, 1) for _ in range(20)]
    # Three workers that consume another queue: the jobs' messages wait, older than RESEND_AFTER_SECONDS.
    logs = [tmp_path / f"w{n}.log" for n in range(3)]
    workers = [distributed.spawn(log, "--queues", "elsewhere", WORKER_NAME=f"w{n}") for n, log in enumerate(logs)]
    wait_for(lambda: sum("upkeep leader" in log.read_text() for log in logs) == 1, timeout=90, what="a leader")

    def publications() -> list[int]:
        with Ledger(distributed.vars["DATABASE_URL"]).session() as s:
            return list(s.scalars(select(Job.publications).where(Job.id.in_(jobs))))

    time.sleep(8)
    assert publications() == [0] * 20  # queued, so not re-sent (by any of the three) after the admission's own
    client = redis.Redis.from_url(distributed.vars["BROKER_URL"])
    client.delete(*client.keys("calibrate*"))  # the broker lost them (a restart without persistence)
    wait_for(lambda: publications() == [1] * 20, timeout=60, what="the leader to re-publish each lost message")
    time.sleep(6)
    assert publications() == [1] * 20  # once each, by one worker
    assert client.llen("calibrate") == 20
    assert sum("re-publishing" in log.read_text() for log in logs) == 1
    assert stop(*workers) == [0, 0, 0]
