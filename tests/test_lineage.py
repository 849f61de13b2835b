"""Lineage by declaration: a job runs on the model of the job it names, never on another budget's latest.

And seeds as a feature: a plan entry with ``seeds: N`` fans out, and its dependents follow each seed.
"""

import json
import textwrap

import pytest

from tests.test_cli_errors import snapshot

SEEDED = textwrap.dedent("""\
    budget: s
    total: "1.00"
    initiatives:
      - {name: base, initiative: baseline, rank: 1, estimate: "0.10", seeds: 3, params: {seed: 7}}
      - {name: rob, initiative: robustness, rank: 2, estimate: "0.05", after: [base]}
      - {name: aug, initiative: augment, rank: 3, estimate: "0.10", after: [rob]}
      - {name: cal, initiative: calibrate, rank: 4, estimate: "0.01", params: {seconds: 1}}
    """)


def admitted(env, plan_path) -> dict[str, dict]:
    decisions = json.loads(env.ok("plan", "run", str(plan_path), "--json").stdout)
    return {d["name"]: json.loads(env.ok("jobs", "show", d["job_id"], "--json").stdout) for d in decisions}


def test_a_seeded_entry_fans_out_and_its_dependents_follow_each_seed(embedded, tmp_path):
    path = tmp_path / "seeded.yaml"
    path.write_text(SEEDED)
    jobs = admitted(embedded, path)
    assert sorted(jobs) == sorted([f"{n}#seed{k}" for n in ("base", "rob", "aug") for k in range(3)] + ["cal"])
    for k in range(3):
        base, rob, aug = jobs[f"base#seed{k}"], jobs[f"rob#seed{k}"], jobs[f"aug#seed{k}"]
        assert base["params"]["seed"] == 7 + k and rob["params"]["seed"] == k and aug["params"]["seed"] == k
        assert rob["after"] == [base["id"]] and rob["params"]["model_job"] == base["id"]
        # augment runs after robustness and improves the model robustness tested: seed k's baseline.
        assert aug["after"] == [rob["id"]] and aug["params"]["model_job"] == base["id"]
        assert base["idempotency_key"].endswith(f":base#seed{k}")
    assert json.loads(embedded.ok("budget", "show", "s", "--json").stdout)["reserved"] == "0.760000"  # each its own reservation


@pytest.mark.parametrize("entries, says", [
    ("- {name: rob, initiative: robustness, rank: 1, estimate: '0.05'}", "no entry in its `after` stores one"),
    ("- {name: a, initiative: baseline, rank: 1, estimate: '0.05'}\n"
     "- {name: b, initiative: baseline, rank: 2, estimate: '0.05'}\n"
     "- {name: rob, initiative: robustness, rank: 3, estimate: '0.05', after: [a, b]}", "say which with params.model_job"),
    ("- {name: a, initiative: baseline, rank: 1, estimate: '0.05'}\n"
     "- {name: rob, initiative: robustness, rank: 2, estimate: '0.05', params: {model_job: a}}", "must also run after it"),
    ("- {name: a, initiative: baseline, rank: 1, estimate: '0.05', seeds: 2}\n"
     "- {name: rob, initiative: robustness, rank: 2, estimate: '0.05', seeds: 3, after: [a]}", "the same number of seeds"),
    ("- {name: a, initiative: baseline, rank: 1, estimate: '0.05', seeds: 0}", "`seeds` must be an integer from 1 to 20"),
])
def test_a_plan_without_one_clear_model_source_is_refused_and_writes_nothing(embedded, tmp_path, entries, says):
    path = tmp_path / "bad.yaml"
    path.write_text("budget: s\ntotal: '1.00'\ninitiatives:\n" + textwrap.indent(entries, "  ") + "\n")
    db = embedded.vars["DATABASE_URL"].split("///", 1)[1]
    before = snapshot(db)
    for args in (("plan", "run", str(path)), ("plan", "run", str(path), "--dry-run")):
        done = embedded.cli(*args)
        assert done.returncode == 2 and says in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert snapshot(db) == before


def test_a_submitted_job_takes_its_model_from_its_own_budget_only(embedded):
    for budget in ("team-a", "team-b"):
        embedded.ok("budget", "create", budget, "--total", "1.00")
    base = {b: json.loads(embedded.ok("submit", "baseline", "--budget", b, "--estimate", "0.10", "--json").stdout)["id"]
            for b in ("team-a", "team-b")}
    rob = json.loads(embedded.ok("submit", "robustness", "--budget", "team-b", "--estimate", "0.05", "--after", base["team-b"],
                                 "--json").stdout)
    assert rob["params"]["model_job"] == base["team-b"]

    other = embedded.cli("submit", "robustness", "--budget", "team-b", "--estimate", "0.05", "--param", f"model_job={base['team-a']}")
    assert other.returncode == 2 and "belongs to budget 'team-a'" in other.stderr
    none = embedded.cli("submit", "robustness", "--budget", "team-b", "--estimate", "0.05")
    assert none.returncode == 2 and "--param model_job=<job id>" in none.stderr
    named = json.loads(embedded.ok("submit", "augment", "--budget", "team-b", "--estimate", "0.05",
                                   "--param", f"model_job={base['team-b']}", "--json").stdout)
    assert named["after"] == [base["team-b"]]  # it waits for the model it names
