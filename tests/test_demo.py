"""``budgetq demo``: a plan run end to end on this machine; it exits 6 and names each job that did
not succeed, with its status and error, and 0 only when every job succeeded."""

from __future__ import annotations

import re

import yaml

CALIBRATE = {"name": "calibrate", "initiative": "calibrate", "rank": 1, "estimate": "0.01", "params": {"seconds": 0.3}}


def write_plan(tmp_path, *entries) -> str:
    path = tmp_path / "demo.yaml"
    path.write_text(yaml.safe_dump({"budget": "demo", "total": "0.50", "initiatives": list(entries)}))
    return str(path)


def test_a_demo_whose_jobs_all_succeed_exits_0_with_its_report(embedded, tmp_path):
    done = embedded.cli("demo", "--plan", write_plan(tmp_path, CALIBRATE), timeout=300)
    assert done.returncode == 0, done.stderr
    assert "admitted 1 of 1 jobs" in done.stdout and "improvement per dollar" in done.stdout
    assert re.search(r"calibrate\s+│\s+succeeded", done.stdout), done.stdout
    # Off a terminal the worker's log is the job's story: started, then its real outcome; no noise.
    assert re.search(r"job \w{32} \(calibrate\) attempt 1/\d started", done.stderr), done.stderr
    assert re.search(r"job \w{32} \(calibrate\) attempt 1/\d ended succeeded; charged", done.stderr), done.stderr
    assert "Traceback" not in done.stderr and "superuser privileges" not in done.stderr


def test_a_demo_with_a_failed_job_exits_6_naming_the_job_its_status_and_its_error(embedded, tmp_path):
    # A dataset admission accepts (the folder and its columns exist) but the worker cannot use: no test split.
    data = tmp_path / "no_test"
    data.mkdir()
    (data / "train.jsonl").write_text('{"text": "book a flight", "label": "book_flight", "domain": "travel"}\n')
    broken = {"name": "baseline", "initiative": "baseline", "rank": 2, "estimate": "0.05", "max_attempts": 1,
              "params": {"dataset": str(data)}}
    after = {"name": "robustness", "initiative": "robustness", "rank": 3, "estimate": "0.05", "after": ["baseline"]}
    done = embedded.cli("demo", "--plan", write_plan(tmp_path, CALIBRATE, broken, after), timeout=300)
    assert done.returncode == 6, done.stderr
    lines = done.stderr.strip().splitlines()
    assert re.fullmatch(r"baseline job \w{32}: failed: PermanentError: .*no_test: no test file.*", lines[-3]), lines
    assert re.fullmatch(r"robustness job \w{32}: cancelled.*", lines[-2]), lines
    assert lines[-1] == "error: 2 of 3 demo jobs did not succeed; `budgetq results --job ID` shows what a job logged"
    assert "superuser privileges" not in done.stdout + done.stderr and "succeeded in" not in done.stdout + done.stderr
