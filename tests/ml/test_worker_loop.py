"""The improvement loop through the real queue: a plan of baseline -> robustness -> augment,
admitted against a budget and drained by a Celery worker process on the embedded default."""

import json

import yaml
from sqlalchemy import func, select

from models.db import Ledger
from models.schema import FailureCase

BASELINE = {"steps": 60, "lr": 5e-3, "batch_size": 32, "checkpoint_every": 30, "latency_samples": 3}


def results(env, job_id: str) -> dict:
    return json.loads(env.ok("results", "--job", job_id, "--json").stdout)


def metric_slices(result: dict, name: str) -> dict:
    return {m["slice"]: m["value"] for m in result["metrics"] if m["name"] == name}


def test_the_plan_runs_the_loop_in_order_and_augment_targets_the_worst_ranked_slices(embedded, tmp_path, clinc_subset, tiny_bert):
    plan = {
        "budget": "ml", "total": "1.00",
        "initiatives": [
            {"name": "baseline", "initiative": "baseline", "rank": 1, "estimate": "0.20",
             "params": {**BASELINE, "dataset": str(clinc_subset), "model": str(tiny_bert)}},
            {"name": "robustness", "initiative": "robustness", "rank": 2, "estimate": "0.20",
             "params": {"max_rows": 90, "failures_per_perturbation": 5}, "after": ["baseline"]},
            {"name": "augment", "initiative": "augment", "rank": 3, "estimate": "0.20",
             "params": {"k": 1, "variants": 1, "steps": 10, "lr": 1e-3, "augmenters": ["style", "char_noise"]},
             "after": ["robustness"]},
        ],
    }
    (tmp_path / "loop.yaml").write_text(yaml.safe_dump(plan))
    embedded.vars.update(OMP_NUM_THREADS="1", HEARTBEAT_SECONDS="1")
    decisions = json.loads(embedded.ok("plan", "run", str(tmp_path / "loop.yaml"), "--json").stdout)
    ids = {d["name"]: d["job_id"] for d in decisions}

    embedded.burst(timeout=600)

    jobs = {name: json.loads(embedded.ok("jobs", "show", job_id, "--json").stdout) for name, job_id in ids.items()}
    assert {name: job["status"] for name, job in jobs.items()} == dict.fromkeys(ids, "succeeded"), jobs
    assert jobs["baseline"]["finished_at"] <= jobs["robustness"]["started_at"]
    assert jobs["robustness"]["finished_at"] <= jobs["augment"]["started_at"]
    assert all(0 < job["charged_micros"] <= 200_000 for job in jobs.values())

    ranks = metric_slices(results(embedded, ids["robustness"]), "weakness_rank")
    augment = results(embedded, ids["augment"])
    assert list(metric_slices(augment, "targeted_rank")) == [min(ranks, key=ranks.get)]
    assert "improvement" in {m["name"] for m in augment["metrics"]}
    assert {a["name"] for a in results(embedded, ids["baseline"])["artifacts"]} == {"model"}

    with Ledger(embedded.vars["DATABASE_URL"]).session() as s:
        failures = s.scalar(select(func.count()).select_from(FailureCase).where(FailureCase.job_id == ids["robustness"]))
    assert failures > 0  # the failure report lands in the results DB
    report = results(embedded, ids["robustness"])["failures"]
    assert report["count"] == failures and all(f["expected"] != f["predicted"] for f in report["first"])

    summary = json.loads(embedded.ok("results", "--budget", "ml", "--json").stdout)
    assert summary["budget"] == "ml"
    units = {row["initiative"]: row["unit"] for row in summary["groups"]}
    assert units == {"baseline": None, "robustness": None, "augment": "f1_points"}
    augment_row = next(row for row in summary["groups"] if row["initiative"] == "augment")
    assert augment_row["improvement"]["mean"] == next(m["value"] for m in augment["metrics"] if m["name"] == "improvement")
    assert json.loads(embedded.ok("budget", "audit", "--json").stdout)["ok"]


def test_a_killed_training_job_resumes_from_its_checkpoint_and_each_attempt_pays_its_own_time(embedded, clinc_subset, tiny_bert):
    import os
    import signal
    from datetime import datetime

    from models import queries
    from models.schema import LedgerEntry
    from tests.conftest import wait_for

    embedded.vars.update(OMP_NUM_THREADS="1", LEASE_SECONDS="2", WORKER_PRICE_PER_HOUR="3.6")
    embedded.ok("budget", "create", "b", "--total", "1.00")
    params = {**BASELINE, "steps": 400, "checkpoint_every": 10, "warmup_ratio": 0.0, "dataset": str(clinc_subset), "model": str(tiny_bert)}
    job_id = json.loads(embedded.ok("submit", "baseline", "--budget", "b", "--estimate", "0.50", "--json",
                                    *[f"--param={k}={v}" for k, v in params.items()]).stdout)["id"]
    checkpoints = os.path.join(embedded.vars["BUDGETQ_HOME"], "checkpoints", job_id, "train")

    def saved_steps() -> list[int]:
        names = os.listdir(checkpoints) if os.path.isdir(checkpoints) else []
        return sorted(int(n.split("-")[1]) for n in names if n.startswith("step-") and "." not in n)

    worker = embedded.worker()
    wait_for(lambda: saved_steps() and saved_steps()[-1] >= 30, timeout=120, what="a checkpoint at step 30")
    os.killpg(worker.pid, signal.SIGKILL)  # preempted mid-training
    worker.wait(timeout=10)
    resume_at = saved_steps()[-1]
    store = Ledger(embedded.vars["DATABASE_URL"])
    with store.session() as s:
        metered = queries.get_job(s, job_id=job_id).metered_micros

    wait_for(lambda: json.loads(embedded.ok("reap", "--json").stdout)["reaped"], timeout=20, what="the reaper")
    embedded.burst(timeout=300)

    with store.session() as s:
        job = queries.get_job(s, job_id=job_id)
        charges = dict(s.execute(select(LedgerEntry.attempt, LedgerEntry.amount_micros)
                                 .where(LedgerEntry.job_id == job_id, LedgerEntry.kind == "charge")).all())
    assert job.status == "succeeded" and job.attempts == 2
    losses = sorted((m["step"], m["value"]) for m in results(embedded, job_id)["metrics"] if m["name"] == "train.loss")
    assert losses[0][0] == resume_at + 1  # the second attempt started where the checkpoint left off
    # ...and continued the curve: a fresh 10-way head starts near ln(10) = 2.30, one 30-odd steps in
    # (no warmup, lr 5e-3) is well below it.
    assert sum(loss for _, loss in losses[:5]) / 5 < 2.15
    # The killed attempt pays to its last sign of life: its last heartbeat, or its worker's last_seen
    # if later, never past its lease (2 s after that heartbeat, at 1000 micro-dollars a second).
    assert 0 < metered <= charges[1] <= metered + 2_000 + 50
    wall = (job.finished_at - job.started_at).total_seconds() if isinstance(job.started_at, datetime) else 0
    assert 0 < charges[2] <= 3.6e6 * wall / 3600 + 1  # the second attempt pays its own time only
    assert job.charged_micros == charges[1] + charges[2]


def test_curriculum_and_distill_run_through_the_real_worker(embedded, tmp_path, clinc_subset):
    from worker.ml.data import load_folder
    from worker.ml.modeling import build_tiny_bert

    teacher = build_tiny_bert(load_folder(clinc_subset).train.texts, tmp_path / "bert2", hidden=32, layers=2, vocab_size=400)
    plan = {
        "budget": "ml2", "total": "1.00",
        "initiatives": [
            {"name": "baseline", "initiative": "baseline", "rank": 1, "estimate": "0.20",
             "params": {**BASELINE, "steps": 40, "dataset": str(clinc_subset), "model": str(teacher)}},
            {"name": "distill", "initiative": "distill", "rank": 2, "estimate": "0.20", "after": ["baseline"],
             "params": {"layers": 1, "sample_fraction": 0.25, "batch_size": 16, "lr": 5e-3, "latency_samples": 3, "speed_rounds": 1}},
            {"name": "curriculum", "initiative": "curriculum", "rank": 3, "estimate": "0.20",
             "params": {"dataset": str(clinc_subset), "model": str(teacher), "steps": 8, "batch_size": 16, "lr": 5e-3,
                        "eval_every": 4, "quantile_every": 2, "target_accuracy": 0.15}},
        ],
    }
    (tmp_path / "part2.yaml").write_text(yaml.safe_dump(plan))
    embedded.vars.update(OMP_NUM_THREADS="1", HEARTBEAT_SECONDS="1")
    ids = {d["name"]: d["job_id"] for d in json.loads(embedded.ok("plan", "run", str(tmp_path / "part2.yaml"), "--json").stdout)}
    embedded.burst(timeout=600)

    done = {name: results(embedded, job_id) for name, job_id in ids.items()}
    assert {name: r["job"]["status"] for name, r in done.items()} == dict.fromkeys(ids, "succeeded")
    student = {m["name"]: m["value"] for m in done["distill"]["metrics"] if m["slice"] is None and m["step"] is None}
    assert student["param_count"] < student["teacher.param_count"] and "improvement" in student
    arms = {m["name"].split(".")[0] for m in done["curriculum"]["metrics"] if m["name"].endswith(".macro_f1")}
    assert {"uniform", "curriculum", "random"} <= arms
    assert {a["name"] for a in done["distill"]["artifacts"]} >= {"model"}


def test_two_budgets_side_by_side_each_test_their_own_model(embedded, tmp_path, clinc_subset, tiny_bert):
    # Given two teams on one ledger, each with a plan baseline -> robustness,
    # when one worker drains both queues,
    # then each robustness job tests its own budget's baseline, never the other team's latest one.
    ids = {}
    for team in ("team-a", "team-b"):
        plan = {
            "budget": team, "total": "1.00",
            "initiatives": [
                {"name": "baseline", "initiative": "baseline", "rank": 1, "estimate": "0.20",
                 "params": {**BASELINE, "steps": 20, "dataset": str(clinc_subset), "model": str(tiny_bert)}},
                {"name": "robustness", "initiative": "robustness", "rank": 2, "estimate": "0.20",
                 "params": {"max_rows": 30, "perturbations": "casing,keyboard", "failures_per_perturbation": 2},
                 "after": ["baseline"]},
            ],
        }
        (tmp_path / f"{team}.yaml").write_text(yaml.safe_dump(plan))
        decisions = json.loads(embedded.ok("plan", "run", str(tmp_path / f"{team}.yaml"), "--json").stdout)
        ids[team] = {d["name"]: d["job_id"] for d in decisions}
    embedded.vars.update(OMP_NUM_THREADS="1", HEARTBEAT_SECONDS="1")
    embedded.burst(timeout=600)

    for team, jobs in ids.items():
        robustness = results(embedded, jobs["robustness"])
        assert robustness["job"]["status"] == "succeeded", robustness["job"]
        assert robustness["job"]["params"]["model_job"] == jobs["baseline"]
        report = next(a for a in robustness["artifacts"] if a["name"] == "report")
        assert json.loads(open(report["uri"]).read())["model_job"] == jobs["baseline"]
