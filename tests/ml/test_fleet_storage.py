"""Machines that share no disk, through object storage: a real S3-compatible server on 127.0.0.1 (moto).

Machine A trains a tiny BERT until an IMDSv2-shaped notice (our own metadata server) says its spot
instance is going; it checkpoints to the bucket and settles the job as preempted. Machine B, with a
home of its own, resumes from that checkpoint and stores the model in the bucket. Machine C, with
a third home, loads that model from the bucket (sha256 checked) for the robustness job after it.
"""

import json

import yaml

from tests.conftest import wait_for

BASELINE = {"steps": 200, "lr": 5e-3, "batch_size": 32, "checkpoint_every": 10, "warmup_ratio": 0.0, "latency_samples": 3}


def show(env, job_id: str) -> dict:
    return json.loads(env.ok("jobs", "show", job_id, "--json").stdout)


def bucket_steps(store, job_id: str) -> list[int]:
    """Steps of the complete checkpoints (marker written) in the bucket."""
    return sorted(int(f.split("/")[-2].split("-")[1]) for f in store.find(job_id, "train") if f.endswith("/_COMPLETE"))


def test_a_preempted_job_resumes_on_another_machine_from_the_bucket_and_the_next_job_loads_its_model_from_there(
    distributed, s3_bucket, metadata_server, tmp_path, clinc_subset, tiny_bert,
):
    from worker.storage import Store

    distributed.vars.update(s3_bucket.env, ARTIFACT_DIR=f"{s3_bucket.url}/artifacts", CHECKPOINT_DIR=f"{s3_bucket.url}/checkpoints",
                            OMP_NUM_THREADS="1", HEARTBEAT_SECONDS="1")
    plan = {"budget": "fleet", "total": "1.00", "initiatives": [
        {"name": "baseline", "initiative": "baseline", "rank": 1, "estimate": "0.30", "queue": "train",
         "params": {**BASELINE, "dataset": str(clinc_subset), "model": str(tiny_bert)}},
        {"name": "robustness", "initiative": "robustness", "rank": 2, "estimate": "0.20", "queue": "evaluate",
         "params": {"max_rows": 60, "failures_per_perturbation": 3}, "after": ["baseline"]},
    ]}
    (tmp_path / "plan.yaml").write_text(yaml.safe_dump(plan))
    ids = {d["name"]: d["job_id"] for d in json.loads(distributed.ok("plan", "run", str(tmp_path / "plan.yaml"), "--json").stdout)}
    baseline = ids["baseline"]
    checkpoints = Store(f"{s3_bucket.url}/checkpoints")
    homes = {m: tmp_path / f"machine-{m}" for m in "abc"}

    # Machine A trains until its spot notice comes.
    log_a = tmp_path / "a.log"
    machine_a = distributed.spawn(log_a, "--queues", "train", BUDGETQ_HOME=str(homes["a"]), WORKER_NAME="spot-a",
                                  PREEMPTION_NOTICE_URL=metadata_server.url, PREEMPTION_NOTICE_KIND="aws", PREEMPTION_POLL_SECONDS="0.2")
    wait_for(lambda: bucket_steps(checkpoints, baseline) and bucket_steps(checkpoints, baseline)[-1] >= 30, timeout=240,
             what="a checkpoint at step 30 in the bucket")
    metadata_server.notice()
    assert machine_a.wait(timeout=120) == 0, log_a.read_text()[-3000:]
    preempted = show(distributed, baseline)
    assert (preempted["status"], preempted["attempts"], preempted["preemptions"]) == ("requeued", 1, 1)
    stopped_at = bucket_steps(checkpoints, baseline)[-1]  # the checkpoint written when the notice came
    budget = json.loads(distributed.ok("budget", "show", "fleet", "--json").stdout)["preemptions"]
    # Checkpointed at the notice: only the moments after that checkpoint were lost, not the attempt.
    assert budget["attempts"] == 1 and 0 <= budget["lost_micros"] < budget["charged_micros"] / 2

    # Machine B, with a disk of its own, resumes from the bucket and finishes.
    distributed.vars["BUDGETQ_HOME"] = str(homes["b"])
    out = distributed.burst("--queues", "train", timeout=600)
    assert f"resumes from train/step-{stopped_at:06d}" in out
    done = show(distributed, baseline)
    assert (done["status"], done["attempts"], done["preemptions"]) == ("succeeded", 2, 1)
    results = json.loads(distributed.ok("results", "--job", baseline, "--json").stdout)
    second = sorted(m["step"] for m in results["metrics"] if m["name"] == "train.loss" and m["attempt"] == 2)
    assert second[0] == stopped_at + 1 and second[-1] == BASELINE["steps"]
    (model,) = [a for a in results["artifacts"] if a["name"] == "model"]
    assert model["uri"].startswith(f"{s3_bucket.url}/artifacts/{baseline}/2/model")

    # Machine C loads that model from the bucket for the next job.
    distributed.vars["BUDGETQ_HOME"] = str(homes["c"])
    distributed.burst("--queues", "evaluate", timeout=600)
    assert show(distributed, ids["robustness"])["status"] == "succeeded"
    cached = homes["c"] / "cache" / "artifacts" / model["sha256"] / "model"
    assert (cached / "model.safetensors").is_file() and (homes["c"] / "cache" / "artifacts" / model["sha256"] / ".verified").is_file()
    assert not any((home / "artifacts").exists() for home in homes.values())  # artifacts live in the bucket only
    assert json.loads(distributed.ok("budget", "audit", "--json").stdout)["ok"]
