"""Spot preemption: a notice (SIGTERM, an IMDSv2- or GCP-shaped metadata URL, a file) stops the
worker taking jobs, settles its running job as preempted (charged the time it used, no attempt
counted), requeues it at once, and another worker finishes it. The metadata server is ours, on
127.0.0.1."""

import json
import os
import signal
import time

import pytest
from sqlalchemy import select

from models.db import Ledger
from models.schema import Preemption
from tests.conftest import wait_for
from worker import preemption


def show(env, job_id: str) -> dict:
    return json.loads(env.ok("jobs", "show", job_id, "--json").stdout)


@pytest.mark.parametrize("notice", ["sigterm", "aws", "gcp", "file"])
def test_a_preempted_job_is_requeued_at_once_charged_its_time_and_costs_no_attempt(embedded, metadata_server, tmp_path, notice):
    notice_file = tmp_path / "preempt-now"
    if notice in ("aws", "gcp"):
        embedded.vars.update(PREEMPTION_NOTICE_URL=metadata_server.url, PREEMPTION_NOTICE_KIND=notice, PREEMPTION_POLL_SECONDS="0.2")
    elif notice == "file":
        embedded.vars.update(PREEMPTION_NOTICE_FILE=str(notice_file), PREEMPTION_POLL_SECONDS="0.2")
    embedded.ok("budget", "create", "b", "--total", "1.00")
    # One attempt only: if the preemption counted as one, the job could never run again.
    job_id = json.loads(embedded.ok("submit", "calibrate", "--budget", "b", "--estimate", "0.10", "--max-attempts", "1",
                                    "--param", "seconds=20", "--param", "matrix_size=64", "--json").stdout)["id"]
    worker = embedded.worker()
    wait_for(lambda: show(embedded, job_id)["metered_micros"] > 0, timeout=90, what="the job to run and heartbeat")

    noticed_at = time.monotonic()
    {"sigterm": lambda: os.kill(worker.pid, signal.SIGTERM), "aws": metadata_server.notice, "gcp": metadata_server.notice,
     "file": notice_file.touch}[notice]()
    out, _ = worker.communicate(timeout=60)
    assert worker.returncode == 0, out[-3000:]  # a requested shutdown: exit 0, nothing left running
    assert time.monotonic() - noticed_at < 30

    preempted = show(embedded, job_id)
    assert (preempted["status"], preempted["attempts"], preempted["preemptions"], preempted["stop_reason"]) == ("requeued", 1, 1, "preemption")
    assert preempted["charged_micros"] > 0 and "preempted" in preempted["error"]
    show_budget = json.loads(embedded.ok("budget", "show", "b", "--json").stdout)
    # calibrate keeps no checkpoint: everything the attempt spent was lost to the preemption.
    assert show_budget["preemptions"]["attempts"] == 1
    assert show_budget["preemptions"]["charged_micros"] == show_budget["preemptions"]["lost_micros"] == preempted["charged_micros"]
    assert "1 attempt(s) moved to other workers" in embedded.ok("budget", "show", "b").stdout
    if notice == "aws":
        assert ("PUT", "/latest/api/token") in metadata_server.requests

    embedded.vars.pop("PREEMPTION_NOTICE_FILE", None)
    embedded.vars.pop("PREEMPTION_NOTICE_URL", None)
    embedded.burst(timeout=180)  # requeued at once: the next worker finds its message waiting
    done = show(embedded, job_id)
    assert (done["status"], done["attempts"], done["preemptions"]) == ("succeeded", 2, 1)
    assert done["charged_micros"] > preempted["charged_micros"]
    assert json.loads(embedded.ok("budget", "audit", "--json").stdout)["ok"]
    with Ledger(embedded.vars["DATABASE_URL"]).session() as s:
        assert s.scalar(select(Preemption.attempt).where(Preemption.job_id == job_id)) == 1


def test_the_notice_endpoints_are_read_the_way_aws_and_gcp_serve_them(metadata_server, tmp_path):
    for kind in ("aws", "gcp"):
        assert preemption.check_url(metadata_server.url, kind) is None
    metadata_server.notice()
    assert preemption.check_url(metadata_server.url, "aws") == "aws spot instance-action: terminate at 2026-11-26T12:00:00Z"
    assert preemption.check_url(metadata_server.url, "gcp") == "gcp instance/preempted is TRUE"
    assert preemption.check_file(str(tmp_path / "absent")) is None
