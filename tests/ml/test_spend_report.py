"""The spend report, results and forecasts of a real plan: baseline -> robustness -> augment (three
seeds of one entry) and distill, plus a prompt loop, on a 2-layer tiny BERT and the 10-intent
CLINC150 subset, drained once for this module by a burst worker on the embedded default."""

from __future__ import annotations

import json
import re

import pytest
import yaml

from core.money import format_micros
from models.db import Ledger
from models import queries
from tests.conftest import make_env
from tests.test_report import SECTIONS, assert_opens_offline, pixel_spread, render

AUGMENT = {"k": 1, "variants": 1, "steps": 10, "lr": 1e-3, "augmenters": ["style", "char_noise"]}


@pytest.fixture(scope="module")
def ran(tmp_path_factory, clinc_subset):
    """The plan's jobs settled in a SQLite ledger; returns (env, job ids by name, worker log, plan path)."""
    from worker.ml.data import load_folder
    from worker.ml.modeling import build_tiny_bert

    root = tmp_path_factory.mktemp("spend_report")
    bert = build_tiny_bert(load_folder(clinc_subset).train.texts, root / "bert2", hidden=32, layers=2, vocab_size=400)
    env = make_env(root, database_url=f"sqlite:///{root / 'ledger.db'}", OMP_NUM_THREADS="1", HEARTBEAT_SECONDS="1",
                   LEASE_SECONDS="60")
    env.ok("db", "upgrade")
    # The first settlement crosses 0.01%; the plan spends far less than 90%.
    env.ok("budget", "create", "loop", "--total", "0.80", "--warn-at", "0.0001", "--warn-at", "0.9")
    env.ok("budget", "topup", "loop", "--add", "0.20")
    plan = {"budget": "loop", "initiatives": [
        {"name": "baseline", "initiative": "baseline", "rank": 1, "estimate": "0.20",
         "params": {"steps": 60, "lr": 5e-3, "batch_size": 32, "checkpoint_every": 30, "latency_samples": 3,
                    "dataset": str(clinc_subset), "model": str(bert)}},
        {"name": "robustness", "initiative": "robustness", "rank": 2, "estimate": "0.10", "after": ["baseline"],
         "params": {"max_rows": 90, "failures_per_perturbation": 5}},
        {"name": "augment", "initiative": "augment", "rank": 3, "estimate": "0.10", "after": ["robustness"], "params": AUGMENT},
        {"name": "distill", "initiative": "distill", "rank": 4, "estimate": "0.10", "after": ["baseline"],
         "params": {"layers": 1, "sample_fraction": 0.25, "batch_size": 16, "lr": 5e-3, "latency_samples": 3, "speed_rounds": 1}},
        {"name": "prompts", "initiative": "prompt_loop", "rank": 5, "estimate": "0.10",
         "params": {"dataset": str(clinc_subset), "scorer": "embedding", "scorer_model": str(bert), "lm_variants": 0,
                    "rounds": 2, "candidates_per_round": 4, "minibatch": 10, "max_val": 40, "folds": 4, "top_k": 2,
                    "use_wordnet": False}},
    ]}
    path = root / "plan.yaml"
    path.write_text(yaml.safe_dump(plan))
    ids = {d["name"]: d["job_id"] for d in json.loads(env.ok("plan", "run", str(path), "--json").stdout)}
    # Two more seeds of the augment entry, keyed as the plan's seed fan-out keys them.
    for seed in (1, 2):
        params = [f"--param={k}={','.join(v) if isinstance(v, list) else v}" for k, v in {**AUGMENT, "seed": seed}.items()]
        done = env.ok("submit", "augment", "--budget", "loop", "--estimate", "0.10", "--key", f"plan:plan:augment#seed{seed}",
                      "--after", ids["robustness"], "--json", *params)
        ids[f"augment#seed{seed}"] = json.loads(done.stdout)["id"]
    log = env.burst(timeout=900)
    return env, ids, log, path


def test_every_job_of_the_plan_succeeded_and_recorded_where_it_ran(ran):
    env, ids, _, _ = ran
    with Ledger(env.vars["DATABASE_URL"]).session() as s:
        jobs = {name: queries.get_job(s, job_id=i) for name, i in ids.items()}
    assert {name: j.status for name, j in jobs.items()} == dict.fromkeys(ids, "succeeded")
    assert {j.device for j in jobs.values()} == {"cpu"} and {j.rate_micros_per_hour for j in jobs.values()} == {1_000_000}
    assert jobs["baseline"].work_steps == 60 and jobs["augment"].work_steps == 10 and jobs["prompts"].work_steps is None


def test_the_report_opens_offline_with_every_section_and_every_plot_loaded(ran, tmp_path):
    env, _, _, _ = ran
    out = tmp_path / "report"
    env.ok("report", "--budget", "loop", "--out", str(out))
    assert_opens_offline(out / "index.html")
    page = render(out / "index.html", tmp_path)
    pngs = sorted(p.name for p in (out / "img").glob("*.png"))
    images = page.images()
    assert sorted(i["src"].removeprefix("img/") for i in images) == pngs
    assert [i.get("data-loaded") for i in images] == ["yes"] * len(images)
    for section in SECTIONS:
        page.section(section)  # present, each one
    for section in ("burn-down", "improvement", "slices", "curves", "robustness", "ood", "distill", "prompts", "failures"):
        assert "<img" in page.section(section) or section == "failures", section
    assert pixel_spread(page.screenshot) > 10


def test_the_report_shows_the_real_runs_exactly_and_in_their_units(ran, tmp_path):
    env, ids, _, _ = ran
    out = tmp_path / "report"
    env.ok("report", "--out", str(out))
    page = (out / "index.html").read_text()
    budget = json.loads(env.ok("budget", "show", "loop", "--json").stdout)
    # Money is exact: the same strings as the ledger's.
    assert f"<td>{format_micros(budget['spent_micros'])}</td>" in page and "<td>$1.00</td>" in page
    improvement = _section(page, "improvement")
    augment_row = _row(improvement, "augment")
    assert augment_row[:4] == ["augment", "augment", "F1 points", "3"] and "t over 3 seeds" in augment_row
    assert _row(improvement, "distill")[2] == "x speed" and _row(improvement, "prompts")[2] == "accuracy points"
    assert "paired bootstrap" in _row(improvement, "prompts")  # the prompt loop logs its test-set bootstrap CI
    slices = _section(page, "slices")
    assert "travel" in slices and "before (baseline" in slices and "augmented - control (points)" in slices
    assert _section(page, "ood").count("<img") == 3  # baseline, robustness and distill logged ROC points
    failures = json.loads(env.ok("results", "--job", ids["robustness"], "--json").stdout)["failures"]["count"]
    assert f"{failures} failure cases" in _section(page, "failures") and failures > 0
    assert "0.01%" in _section(page, "burn-down")  # the threshold event
    assert "teacher" in _section(page, "distill") and "top1" in _section(page, "prompts")
    assert 'class="empty"' in _section(page, "notes")  # no job wrote a note, and the section says so


def _section(page: str, section_id: str) -> str:
    return re.search(rf'<section id="{section_id}">(.*?)</section>', page, re.S).group(1)


def _row(html: str, first_cell: str) -> list[str]:
    for row in re.findall(r"<tr>(.*?)</tr>", html, re.S):
        cells = re.findall(r"<td>(.*?)</td>", row, re.S)
        if cells and cells[0] == first_cell:
            return cells
    raise AssertionError(f"no row starting {first_cell!r}")


def test_results_show_the_summary_first_and_the_series_only_on_request(ran):
    env, ids, _, _ = ran
    plain = env.ok("results", "--job", ids["baseline"]).stdout
    assert plain.splitlines()[0].startswith(f"job {ids['baseline']} (baseline) in budget loop: succeeded")
    assert "ran on cpu, 60 training steps" in plain and "accuracy" in plain and "model" in plain
    assert "train.loss" not in plain and "show them with --series" in plain and "show them with --slices" in plain
    series = env.ok("results", "--job", ids["baseline"], "--series").stdout
    assert series.count("train.loss") == 60 and "ood.msp.roc_tpr" in series
    assert "slice_f1" in env.ok("results", "--job", ids["baseline"], "--slices").stdout
    summary = json.loads(env.ok("results", "--job", ids["robustness"], "--json").stdout)["summary"]
    assert summary["status"] == "succeeded" and summary["failure_count"] > 0 and "ood.msp.auroc" in summary["headline"]


def test_the_dry_run_forecasts_each_entry_from_the_real_history_on_the_same_device_and_price(ran, tmp_path):
    env, ids, _, path = ran
    doubled = yaml.safe_load(path.read_text())
    doubled["initiatives"][0]["params"]["steps"] = 120
    (tmp_path / "doubled.yaml").write_text(yaml.safe_dump(doubled))
    doc = json.loads(env.ok("plan", "run", str(tmp_path / "doubled.yaml"), "--dry-run", "--json").stdout)
    assert (doc["device"], doc["rate_per_hour"]) == ("cpu", "1.000000")
    forecasts = {e["name"]: e["forecast"] for e in doc["entries"]}
    with Ledger(env.vars["DATABASE_URL"]).session() as s:
        baseline = queries.get_job(s, job_id=ids["baseline"]).charged_micros
        augments = sorted(queries.get_job(s, job_id=ids[n]).charged_micros for n in ("augment", "augment#seed1", "augment#seed2"))
    # One baseline ran 60 steps: twice the steps, twice its cost.
    assert forecasts["baseline"]["expected_micros"] == 2 * baseline and forecasts["baseline"]["history_jobs"] == 1
    # Three augments of the same size: their spread, the middle one expected.
    assert [forecasts["augment"][k] for k in ("low_micros", "expected_micros", "high_micros")] == augments
    assert all(f != "unknown" for f in forecasts.values())
    assert doc["worst_case"] == "0.600000" and doc["worst_case_fits"] is True
    elsewhere = json.loads(env.ok("plan", "run", str(path), "--dry-run", "--json", "--device", "cuda:NVIDIA H100").stdout)
    assert {e["forecast"] for e in elsewhere["entries"]} == {"unknown"}
    table = env.ok("plan", "run", str(path), "--dry-run", "--price", "2.00").stdout
    assert "unknown" in table and "worst case (every cap spent): $0.60" in table


def test_a_crossed_threshold_is_logged_by_the_worker_and_recorded_once(ran):
    env, _, log, _ = ran
    assert log.count("spending reached 0.01% of its total") == 1
    events = json.loads(env.ok("budget", "show", "loop", "--json").stdout)["events"]
    assert [e["threshold"] for e in events] == ["0.01%"] and events[0]["total"] == "1.000000"
    assert json.loads(env.ok("budget", "audit", "--json").stdout)["ok"]


def test_results_and_the_report_show_where_each_training_job_s_time_went(ran, tmp_path):
    from datetime import datetime

    from core.phases import PHASES

    env, ids, _, _ = ran
    plain = env.ok("results", "--job", ids["baseline"]).stdout
    assert all(f"phase.{p}.seconds" in plain for p in PHASES) and "train.samples_per_s" in plain
    for name in ("baseline", "augment", "distill"):
        done = json.loads(env.ok("results", "--job", ids[name], "--json").stdout)
        spent, job = done["summary"]["time"], done["job"]
        wall = (datetime.fromisoformat(job["finished_at"]) - datetime.fromisoformat(job["started_at"])).total_seconds()
        assert set(spent["seconds"]) == set(PHASES) and all(s >= 0 for s in spent["seconds"].values()), name
        assert sum(spent["seconds"].values()) <= spent["wall_seconds"] <= wall, name
        assert spent["seconds"]["train"] > 0 and spent["train_samples_per_s"] > 0, name
    # Robustness trains nothing and times no phases: its summary says so rather than showing zeros.
    assert json.loads(env.ok("results", "--job", ids["robustness"], "--json").stdout)["summary"]["time"] is None
    out = tmp_path / "report"
    env.ok("report", "--budget", "loop", "--out", str(out))
    notes = _section((out / "index.html").read_text(), "notes")
    assert "Where the time went" in notes
    row = _row(notes, f"baseline {ids['baseline'][:8]}")
    assert row[1:3] == ["1", "cpu"] and row[-2].endswith("%") and float(row[-1]) > 0
