"""Plans: rank order, all or nothing by default, --partial, --dry-run, and re-runs that admit nothing twice."""

import json
import textwrap

import pytest

from tests.test_cli_errors import snapshot

PLAN = textwrap.dedent("""\
    budget: p
    total: "1.00"
    initiatives:
      - {name: small, initiative: calibrate, rank: 1, estimate: "0.30", params: {seconds: 1}}
      - {name: large, initiative: calibrate, rank: 2, estimate: "0.60"}
      - {name: too-much, initiative: calibrate, rank: 3, estimate: "0.20"}
      - {name: follower, initiative: calibrate, rank: 4, estimate: "0.05", after: [too-much]}
    """)


@pytest.fixture
def plan(embedded, tmp_path):
    path = tmp_path / "plan.yaml"
    path.write_text(PLAN)
    return str(path)


def decisions(done) -> dict[str, str]:
    doc = json.loads(done.stdout)
    entries = doc["entries"] if isinstance(doc, dict) else doc  # a dry run wraps them with its totals
    return {d["name"]: d["reason"] or "admitted" for d in entries}


def test_a_dry_run_shows_what_would_be_admitted_and_writes_nothing(embedded, plan):
    db = embedded.vars["DATABASE_URL"].split("///", 1)[1]
    before = snapshot(db)
    seen = decisions(embedded.ok("plan", "run", plan, "--dry-run", "--partial", "--json"))
    assert seen == {
        "small": "admitted", "large": "admitted", "too-much": "needs $0.20, $0.10 left",
        "follower": "runs after 'too-much', which was rejected",
    }
    assert snapshot(db) == before


def test_a_dry_run_without_history_says_unknown_and_shows_the_worst_case_against_what_is_left(embedded, plan):
    doc = json.loads(embedded.ok("plan", "run", plan, "--dry-run", "--json").stdout)
    assert {e["forecast"] for e in doc["entries"]} == {"unknown"}
    assert (doc["worst_case"], doc["left"], doc["worst_case_fits"], doc["unknown_forecasts"]) == ("1.150000", "1.000000", False, 4)
    shown = embedded.ok("plan", "run", plan, "--dry-run").stdout
    assert "unknown" in shown and "worst case (every cap spent): $1.15 against $1.00 left: does NOT fit" in shown


def test_partial_admits_what_fits_in_rank_order_and_rejects_dependents_of_the_rejected(embedded, plan):
    seen = decisions(embedded.ok("plan", "run", plan, "--partial", "--json"))
    assert seen["small"] == seen["large"] == "admitted"
    assert "has $0.10 left" in seen["too-much"] and "rejected" in seen["follower"]
    budget = json.loads(embedded.ok("budget", "show", "p", "--json").stdout)
    assert budget["reserved"] == "0.900000" and budget["jobs"] == {"admitted": 2}


def test_running_a_plan_again_admits_nothing_twice(embedded, plan, tmp_path):
    fits = tmp_path / "fits.yaml"
    fits.write_text(PLAN.split("  - {name: too-much")[0])
    first = json.loads(embedded.ok("plan", "run", str(fits), "--json").stdout)
    again = json.loads(embedded.ok("plan", "run", str(fits), "--json").stdout)
    assert [d["job_id"] for d in first] == [d["job_id"] for d in again]
    assert json.loads(embedded.ok("budget", "show", "p", "--json").stdout)["reserved"] == "0.900000"
