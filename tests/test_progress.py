"""Progress: a payload's step and loss ride the heartbeat to the job row, where the live display
reads them; off a terminal the worker logs them at a readable cadence and ends each job with a
line that states its real outcome."""

from __future__ import annotations

import io
import json
import logging
import re
from pathlib import Path

from rich.console import Console

from models import endings, ledger, queries, spend
from models.views import Claim
from worker.display import outcome_line, read_snapshot, render
from worker.ledger_context import ProgressLog


def admitted_and_claimed(store, *, estimate: int = 300_000) -> Claim:
    with store.session() as s:
        spend.create_budget(s, name="b", total_micros=1_000_000)
        job, _ = ledger.admit_job(s, budget="b", initiative="baseline", queue="baseline", params={}, estimate_micros=estimate,
                                  max_attempts=3)
    with store.session() as s:
        return ledger.claim_job(s, job_id=job.id, worker="w1", lease_seconds=30)


def text_of(renderable) -> str:
    console = Console(record=True, width=160, file=io.StringIO())
    console.print(renderable)
    return console.export_text()


def test_the_heartbeat_carries_the_payloads_progress_to_the_job_row_and_a_new_attempt_clears_it(store):
    claim = admitted_and_claimed(store)
    report = {"step": 50, "total": 150, "loss": 1.2345, "stage": "train"}
    with store.session() as s:
        ledger.heartbeat(s, job_id=claim.job_id, attempt=1, worker="w1", metered_micros=12_000, lease_seconds=30, progress=report)
    with store.session() as s:
        assert queries.get_job(s, job_id=claim.job_id).progress == report
    with store.session() as s:  # the worker dies: its last beat left a lease already run out
        ledger.heartbeat(s, job_id=claim.job_id, attempt=1, worker="w1", metered_micros=13_000, lease_seconds=-1, progress=report)
    with store.session() as s:
        endings.reap_expired(s)  # the lease ran out: the job is requeued
    with store.session() as s:
        ledger.claim_job(s, job_id=claim.job_id, worker="w2", lease_seconds=30)
        assert queries.get_job(s, job_id=claim.job_id).progress is None


def test_the_display_shows_jobs_done_dollars_of_the_cap_and_the_running_jobs_step_and_loss(store):
    from datetime import datetime, timedelta, timezone

    claim = admitted_and_claimed(store)
    with store.session() as s:
        ledger.heartbeat(s, job_id=claim.job_id, attempt=1, worker="w1", metered_micros=12_345, lease_seconds=30,
                         progress={"step": 50, "total": 150, "loss": 1.2345, "stage": "train"})
        ledger.admit_job(s, budget="b", initiative="calibrate", queue="calibrate", params={}, estimate_micros=10_000, max_attempts=1)
    since = datetime.now(timezone.utc) - timedelta(minutes=1)
    shown = text_of(render(read_snapshot(store, queues=["baseline", "calibrate"], since=since)))
    assert "0/2 done" in shown
    assert "$0.012345 of $1.00 (budget b)" in shown  # the running attempt's metered cost counts as spent
    assert re.search(r"baseline \w{8} .* train step 50/150 +loss 1\.2345 +\$0\.012345 of \$0\.30", shown), shown
    assert "1 waiting" in shown


def test_a_settled_jobs_line_states_its_real_outcome_its_error_and_its_notes(store):
    from core.status import Stop, StopReason

    claim = admitted_and_claimed(store)
    with store.session() as s:
        ledger.settle_job(s, job_id=claim.job_id, attempt=1, worker="w1", status="failed", cost_micros=5_000,
                          stop=Stop(StopReason.ERROR, "PermanentError: no such dataset"), metrics=[], artifacts=[],
                          failures=[], notes=["perturbation synonym skipped: WordNet is not available"])
        job = queries.get_job(s, job_id=claim.job_id)
        notes = queries.job_notes(s, job_ids=[job.id])[job.id]
    shown = text_of(outcome_line(job, notes))
    assert shown.startswith("✗ baseline") and "failed, charged $0.005" in shown and "no such dataset" in shown
    assert "note: perturbation synonym skipped" in shown


def test_progress_lines_come_at_the_rarer_of_every_n_seconds_and_every_tenth_of_the_steps(caplog, monkeypatch):
    claim = Claim("job1", 1, "baseline", {}, 300_000, None, 3)
    clock = iter(range(0, 10_000, 5))  # five seconds pass between reports
    monkeypatch.setattr("worker.ledger_context.time.monotonic", lambda: next(clock))
    caplog.set_level(logging.INFO, logger="budgetq.jobs")
    progress = ProgressLog(claim, every_seconds=150)  # 150 s: every 30th step, rarer than every 10% (20 steps)
    for step in range(1, 201):
        progress.report({"step": step, "total": 200, "loss": 2.0 / step, "stage": "train"}, cost_micros=step * 100)
    lines = [r.getMessage() for r in caplog.records if r.name == "budgetq.jobs"]
    assert lines[0] == "job job1 (baseline) train step 30/200, loss 0.0667; spent $0.003 of $0.30"
    assert [int(re.search(r"step (\d+)/", m).group(1)) for m in lines] == [30, 60, 90, 120, 150, 180]
    caplog.clear()
    progress = ProgressLog(claim, every_seconds=0)  # no time floor: every 10% of the steps
    for step in range(1, 201):
        progress.report({"step": step, "total": 200, "loss": None, "stage": "train"}, cost_micros=0)
    lines = [r.getMessage() for r in caplog.records if r.name == "budgetq.jobs"]
    assert [int(re.search(r"step (\d+)/", m).group(1)) for m in lines] == list(range(20, 201, 20))


def test_a_failed_job_ends_with_a_failed_line_and_celery_never_says_it_succeeded(embedded, tmp_path):
    embedded.ok("budget", "create", "b", "--total", "1.00")
    # A dataset admission accepts (the folder and its columns exist) but the worker cannot use: no test split.
    data = tmp_path / "no_test"
    data.mkdir()
    (data / "train.jsonl").write_text('{"text": "book a flight", "label": "book_flight", "domain": "travel"}\n')
    bad = json.loads(embedded.ok("submit", "baseline", "--budget", "b", "--estimate", "0.05", "--max-attempts", "1",
                                 "--param", f"dataset={data}", "--json").stdout)["id"]
    good = json.loads(embedded.ok("submit", "calibrate", "--budget", "b", "--estimate", "0.01", "--param", "seconds=0.3",
                                  "--json").stdout)["id"]
    log = embedded.burst("--loglevel", "warning")
    assert re.search(rf"job {bad} \(baseline\) attempt 1/1 ended failed \(PermanentError: .*no_test: no test file.*\); charged \$", log), log
    assert re.search(rf"job {good} \(calibrate\) attempt 1/\d ended succeeded; charged \$[0-9.]+ of \$0\.01", log), log
    assert f"job {bad} (baseline) attempt 1/1 started" in log
    assert "succeeded in" not in log  # Celery's own task line: the task returns normally even when its job failed
    assert "superuser privileges" not in log and "LOAD REPORT" not in log


def test_a_burst_worker_with_the_display_prints_each_outcome_and_the_totals_and_logs_to_a_file(embedded):
    embedded.ok("budget", "create", "b", "--total", "1.00")
    for _ in range(2):
        embedded.ok("submit", "calibrate", "--budget", "b", "--estimate", "0.01", "--param", "seconds=0.3")
    out = embedded.burst("--progress")
    assert out.count("✓ calibrate") == 2, out
    assert "2/2 done" in out and "of $1.00 (budget b)" in out, out
    logs = list((Path(embedded.vars["BUDGETQ_HOME"]) / "logs").glob("worker-*.log"))
    assert len(logs) == 1 and logs[0].read_text().count("ended succeeded") == 2
    assert f"worker log: {logs[0]}" in out.replace("\n", "")
