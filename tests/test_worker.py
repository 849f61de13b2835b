"""Jobs through real Celery worker processes, on the embedded default and on Redis + PostgreSQL."""

import json
import os
import signal
import textwrap
import time
from datetime import datetime

import pytest
from sqlalchemy import func, select

from models import ledger, queries
from models.db import Ledger
from models.schema import LedgerEntry, WorkerRow
from tests.conftest import wait_for


def submit(env, *args: str) -> str:
    done = env.ok("submit", "calibrate", "--budget", "b", "--json", *args)
    return json.loads(done.stdout)["id"]


def job(env, job_id: str) -> dict:
    return json.loads(env.ok("jobs", "show", job_id, "--json").stdout)


def audit_is_clean(env) -> bool:
    return json.loads(env.ok("budget", "audit", "--json").stdout)["ok"]


def charge_entries(env, job_id: str) -> int:
    store = Ledger(env.vars["DATABASE_URL"])
    with store.session() as s:
        return s.scalar(select(func.count()).select_from(LedgerEntry).where(LedgerEntry.job_id == job_id, LedgerEntry.kind == "charge"))


@pytest.mark.parametrize("backend", ["embedded", "distributed"])
def test_a_job_runs_end_to_end_and_settles_with_its_metrics(request, backend):
    env = request.getfixturevalue(backend)
    env.ok("budget", "create", "b", "--total", "1.00")
    job_id = submit(env, "--estimate", "0.05", "--param", "seconds=1", "--param", "matrix_size=128")
    env.burst()
    done = job(env, job_id)
    assert done["status"] == "succeeded" and done["attempts"] == 1
    assert 0 < done["charged_micros"] <= 50_000
    results = json.loads(env.ok("results", "--job", job_id, "--json").stdout)
    gflops = [m["value"] for m in results["metrics"] if m["name"] == "matmul_gflops"]
    assert gflops and gflops[0] > 0
    budget = json.loads(env.ok("budget", "show", "b", "--json").stdout)
    assert budget["spent_micros"] == done["charged_micros"] and budget["reserved_micros"] == 0
    assert audit_is_clean(env)
    with Ledger(env.vars["DATABASE_URL"]).session() as s:
        workers = s.execute(select(WorkerRow.name, WorkerRow.price_micros_per_hour, WorkerRow.slots)).all()
    assert [(w.name, w.price_micros_per_hour, w.slots) for w in workers] == [(done["worker"], 1_000_000, 1)]


def test_a_duplicate_delivery_runs_the_job_once(distributed):
    distributed.ok("budget", "create", "b", "--total", "1.00")
    job_id = submit(distributed, "--estimate", "0.05", "--param", "seconds=1")
    distributed.ok("jobs", "resend", "--older-than", "0", "--force")  # the same message, a second time
    log = distributed.burst()
    done = job(distributed, job_id)
    assert done["status"] == "succeeded" and done["attempts"] == 1
    assert charge_entries(distributed, job_id) == 1
    assert f"not running {job_id}" in log
    assert audit_is_clean(distributed)


def test_a_job_past_its_reservation_stops_as_budget_stopped_and_pays_at_most_it(embedded):
    # $36/hour is a cent a second: a $0.02 reservation lasts two seconds of a 60-second job.
    embedded.vars["WORKER_PRICE_PER_HOUR"] = "36"
    embedded.ok("budget", "create", "b", "--total", "1.00")
    job_id = submit(embedded, "--estimate", "0.02", "--param", "seconds=60")
    embedded.burst(timeout=60)
    done = job(embedded, job_id)
    assert done["status"] == "budget_stopped"
    assert 15_000 <= done["charged_micros"] <= 20_000
    names = {m["name"] for m in json.loads(embedded.ok("results", "--job", job_id, "--json").stdout)["metrics"]}
    assert "matmul_gflops" in names  # partial metrics survive the stop
    assert audit_is_clean(embedded)


def test_a_killed_workers_job_is_charged_to_its_last_heartbeat_requeued_and_rerun(embedded):
    embedded.vars.update(WORKER_PRICE_PER_HOUR="3.6", LEASE_SECONDS="2")  # a tenth of a cent a second
    embedded.ok("budget", "create", "b", "--total", "1.00")
    job_id = submit(embedded, "--estimate", "0.50", "--param", "seconds=4")
    worker = embedded.worker()
    store = Ledger(embedded.vars["DATABASE_URL"])

    def metered():
        with store.session() as s:
            return queries.get_job(s, job_id=job_id).metered_micros

    wait_for(lambda: metered() > 500, timeout=60, what="the job to heartbeat")
    os.killpg(worker.pid, signal.SIGKILL)  # the spot instance disappears, pool processes and all
    worker.wait(timeout=10)
    last_beat = metered()

    wait_for(lambda: job(embedded, job_id)["lease_until"] < ledger.utcnow().isoformat(), timeout=10, what="the lease to expire")
    dead = job(embedded, job_id)
    reaped = json.loads(embedded.ok("reap", "--json").stdout)
    assert [(r["job_id"], r["status"]) for r in reaped["reaped"]] == [(job_id, "requeued")]
    # Charged to its last sign of life: at least its last heartbeat, at most its lease, at $3.60/h (1000 micros/s).
    lease_s = (datetime.fromisoformat(dead["lease_until"]) - datetime.fromisoformat(dead["started_at"])).total_seconds()
    assert last_beat <= reaped["reaped"][0]["charge_micros"] <= 1000 * lease_s + 1
    assert job_id in reaped["resent"]

    embedded.burst()
    done = job(embedded, job_id)
    assert done["status"] == "succeeded" and done["attempts"] == 2
    assert done["charged_micros"] > last_beat
    assert charge_entries(embedded, job_id) == 2
    assert audit_is_clean(embedded)


def test_a_plan_runs_its_jobs_in_dependency_order(embedded, tmp_path):
    plan = tmp_path / "plan.yaml"
    plan.write_text(textwrap.dedent("""\
        budget: b
        total: "1.00"
        initiatives:
          - {name: first, initiative: calibrate, rank: 1, estimate: "0.05", params: {seconds: 1, matrix_size: 64}}
          - {name: second, initiative: calibrate, rank: 2, estimate: "0.05", params: {seconds: 1}, after: [first]}
        """))
    decisions = json.loads(embedded.ok("plan", "run", str(plan), "--json").stdout)
    first, second = (job(embedded, d["job_id"]) for d in decisions)
    assert second["after"] == [first["id"]]
    embedded.burst()
    first, second = job(embedded, first["id"]), job(embedded, second["id"])
    assert first["status"] == second["status"] == "succeeded"
    assert second["started_at"] >= first["finished_at"]


def test_a_payload_that_ignores_should_stop_is_stopped_by_the_celery_time_limit(embedded):
    # $36/hour: the $0.02 reservation lasts 2 s; the soft limit derived from it fires soon after.
    embedded.vars.update(WORKER_PRICE_PER_HOUR="36", BUDGETQ_INITIATIVES="stubborn=tests.initiatives.stubborn")
    embedded.ok("budget", "create", "b", "--total", "1.00")
    job_id = json.loads(embedded.ok("submit", "stubborn", "--budget", "b", "--estimate", "0.02", "--json").stdout)["id"]
    started = time.monotonic()
    embedded.burst(timeout=60)
    done = job(embedded, job_id)
    assert done["status"] == "budget_stopped"
    assert done["charged_micros"] == 20_000  # the whole reservation, and not a micro-dollar more
    assert time.monotonic() - started < 40
    names = {m["name"] for m in json.loads(embedded.ok("results", "--job", job_id, "--json").stdout)["metrics"]}
    assert "finished" not in names
    assert audit_is_clean(embedded)
