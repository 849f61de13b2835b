"""A training job's outcome is recorded as what it was: a cancel as cancelled, a spent reservation as
budget_stopped, each with its stop reason, through the real worker."""

import json

from tests.conftest import wait_for

BASELINE = {"steps": 400, "lr": 5e-3, "batch_size": 32, "checkpoint_every": 10, "latency_samples": 3}


def show(env, job_id: str) -> dict:
    return json.loads(env.ok("jobs", "show", job_id, "--json").stdout)


def test_a_cancelled_training_job_is_cancelled_and_a_spent_one_is_budget_stopped(embedded, clinc_subset, tiny_bert):
    # $36/hour is a cent a second.
    embedded.vars.update(OMP_NUM_THREADS="1", HEARTBEAT_SECONDS="0.5", WORKER_PRICE_PER_HOUR="36")
    embedded.ok("budget", "create", "b", "--total", "1.00")
    params = [f"--param={k}={v}" for k, v in {**BASELINE, "dataset": str(clinc_subset), "model": str(tiny_bert)}.items()]
    cancelled = json.loads(embedded.ok("submit", "baseline", "--budget", "b", "--estimate", "0.60", "--json", *params).stdout)["id"]
    spent = json.loads(embedded.ok("submit", "baseline", "--budget", "b", "--estimate", "0.04", "--json", *params).stdout)["id"]
    worker = embedded.worker("--burst")
    wait_for(lambda: show(embedded, cancelled)["metered_micros"] > 20_000, timeout=180, what="the first job to train a while")
    embedded.ok("jobs", "cancel", cancelled)
    out, _ = worker.communicate(timeout=300)
    assert worker.returncode == 0, out[-3000:]

    first, second = show(embedded, cancelled), show(embedded, spent)
    assert (first["status"], first["stop_reason"]) == ("cancelled", "cancel") and first["error"].startswith("cancelled by user")
    assert 20_000 < first["charged_micros"] < 600_000 and first["reserved_micros"] == 0
    assert (second["status"], second["stop_reason"]) == ("budget_stopped", "budget")
    assert second["charged_micros"] <= 40_000
    budget = json.loads(embedded.ok("budget", "show", "b", "--json").stdout)
    assert budget["reserved_micros"] == 0 and budget["preemptions"]["attempts"] == 0
    assert json.loads(embedded.ok("budget", "audit", "--json").stdout)["ok"]
