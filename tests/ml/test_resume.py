"""A training job its budget stopped, topped up and resumed: it continues from its last checkpoint."""

from __future__ import annotations

import json

from sqlalchemy import select

from models import queries
from models.db import Ledger
from models.schema import LedgerEntry, Metric
from tests.test_cli_errors import snapshot

# Far more steps than the first reservation buys: the budget, not the step count, ends attempt 1
# (a tiny BERT on a quiet machine ran 3,000 steps inside the 20 s reservation, hence 8,000).
TRAIN = {"steps": 8000, "batch_size": 8, "lr": 5e-3, "warmup_ratio": 0.0, "checkpoint_every": 500, "latency_samples": 3}


def test_a_budget_stopped_training_job_is_resumed_after_a_topup_and_continues_from_its_checkpoint(embedded, clinc_subset, tiny_bert):
    # Given a job whose $0.01 reservation lasts 20 s at $1.80 an hour, on a $0.015 budget that warns at 50%
    # (20 s: loading torch, transformers and even a tiny model takes about 10 s of it on a 2-core machine.
    # A long lease: on a loaded machine a 5 s one can lapse, and a reaped attempt is not what this tests.)
    embedded.vars.update(OMP_NUM_THREADS="1", WORKER_PRICE_PER_HOUR="1.80", HEARTBEAT_SECONDS="0.5", LEASE_SECONDS="60")
    embedded.ok("budget", "create", "b", "--total", "0.015", "--warn-at", "50%")
    params = {**TRAIN, "dataset": str(clinc_subset), "model": str(tiny_bert)}
    job_id = json.loads(embedded.ok("submit", "baseline", "--budget", "b", "--estimate", "0.01", "--json",
                                    *[f"--param={k}={v}" for k, v in params.items()]).stdout)["id"]
    log = embedded.burst(timeout=300)
    store = Ledger(embedded.vars["DATABASE_URL"])
    stopped = _job(store, job_id)
    assert stopped.status == "budget_stopped" and stopped.charged_micros == 10_000, stopped
    assert 0 < stopped.work_steps < TRAIN["steps"], stopped  # it trained, and was stopped part way
    assert log.count("budget b: spending reached 50% of its total") == 1

    # When it is resumed for more than is left, nothing changes and the exit code says so
    db = embedded.vars["DATABASE_URL"].split("///", 1)[1]
    before = snapshot(db)
    refused = embedded.cli("jobs", "resume", job_id, "--estimate", "0.50")
    assert refused.returncode == 3 and "has $0.005 left, not enough to resume" in refused.stderr
    assert snapshot(db) == before

    # Then after a top-up it is resumed, queued, and its next attempt starts where the last stopped
    embedded.ok("budget", "topup", "b", "--add", "1.00")
    resumed = json.loads(embedded.ok("jobs", "resume", job_id, "--estimate", "0.50", "--json").stdout)
    assert (resumed["status"], resumed["estimate_micros"], resumed["reserved_micros"]) == ("admitted", 510_000, 500_000)
    embedded.burst(timeout=600)
    final = _job(store, job_id)
    assert (final.status, final.attempts) == ("succeeded", 2)
    with store.session() as s:
        first_step = s.scalar(select(Metric.step).where(Metric.job_id == job_id, Metric.attempt == 2, Metric.name == "train.loss")
                              .order_by(Metric.step).limit(1))
        charges = dict(s.execute(select(LedgerEntry.attempt, LedgerEntry.amount_micros)
                                 .where(LedgerEntry.job_id == job_id, LedgerEntry.kind == "charge")).all())
    assert first_step == stopped.work_steps + 1
    assert final.work_steps == TRAIN["steps"]
    assert charges[1] == 10_000 and 0 < charges[2] <= 500_000 and final.charged_micros == charges[1] + charges[2]
    assert final.charged_micros <= final.estimate_micros
    assert json.loads(embedded.ok("budget", "audit", "--json").stdout)["ok"]


def _job(store: Ledger, job_id: str):
    with store.session() as s:
        return queries.get_job(s, job_id=job_id)
