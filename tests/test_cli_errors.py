"""Bad input: one line saying what was wrong and how to fix it, a distinct exit code, and a
database exactly as it was."""

import sqlite3
import textwrap

import pytest

BAD_INPUT, EXHAUSTED, NOT_FOUND, UNREACHABLE = 2, 3, 4, 5

PLANS = {
    "not_yaml": "budget: b\ninitiatives: [\n",
    "not_a_mapping": "- just\n- a list\n",
    "unknown_key": "budget: b\nbudgte: c\ninitiatives: [{initiative: calibrate, rank: 1, estimate: '0.01'}]\n",
    "no_estimate": "budget: b\ninitiatives: [{initiative: calibrate, rank: 1}]\n",
    "bad_estimate": "budget: b\ninitiatives: [{initiative: calibrate, rank: 1, estimate: 'ten'}]\n",
    "unknown_after": "budget: b\ninitiatives: [{initiative: calibrate, rank: 1, estimate: '0.01', after: [ghost]}]\n",
    "duplicate_names": textwrap.dedent("""\
        budget: b
        initiatives:
          - {initiative: calibrate, rank: 1, estimate: '0.01'}
          - {initiative: calibrate, rank: 2, estimate: '0.01'}
        """),
    "unknown_initiative": "budget: b\ninitiatives: [{initiative: telepathy, rank: 1, estimate: '0.01'}]\n",
    "bad_param": "budget: b\ninitiatives: [{initiative: calibrate, rank: 1, estimate: '0.01', params: {seconds: fast}}]\n",
    "rank_not_int": "budget: b\ninitiatives: [{initiative: calibrate, rank: first, estimate: '0.01'}]\n",
    "missing_dataset": "budget: b\ninitiatives: [{initiative: baseline, rank: 1, estimate: '0.01', params: {dataset: nowhere/data}}]\n",
    "no_slice_column": "budget: b\ninitiatives: [{initiative: baseline, rank: 1, estimate: '0.01', params: {dataset: '@tmp/plain'}}]\n",
    "over_budget": textwrap.dedent("""\
        budget: b
        initiatives:
          - {name: a, initiative: calibrate, rank: 1, estimate: '0.60'}
          - {name: b, initiative: calibrate, rank: 2, estimate: '0.60'}
        """),
}

CASES = [
    # (args, exit code, what the message must say)
    (["budget", "create", "x", "--total", "abc"], BAD_INPUT, "not a dollar amount"),
    (["budget", "create", "x", "--total", "NaN"], BAD_INPUT, "not a finite number"),
    (["budget", "create", "x", "--total", "-1"], BAD_INPUT, "negative"),
    (["budget", "create", "x", "--total", "0.0000001"], BAD_INPUT, "more than 6 decimals"),
    (["budget", "create", "x", "--total", "1e15"], BAD_INPUT, "absurdly large"),
    (["budget", "create", "bad name!", "--total", "1"], BAD_INPUT, "must be 1-100 letters"),
    (["budget", "create", "b", "--total", "1"], BAD_INPUT, "already exists"),
    (["budget", "show", "nope"], NOT_FOUND, "budget create nope"),
    (["submit", "calibrate", "--budget", "nope", "--estimate", "0.01"], NOT_FOUND, "no budget named 'nope'"),
    (["submit", "telepathy", "--budget", "b", "--estimate", "0.01"], BAD_INPUT, "unknown initiative 'telepathy'"),
    (["submit", "calibrate", "--budget", "b", "--estimate", "5.00"], EXHAUSTED, "has $1.00 left"),
    (["submit", "calibrate", "--budget", "b", "--estimate", "inf"], BAD_INPUT, "--estimate 'inf' is not a finite"),
    (["submit", "calibrate", "--budget", "b", "--estimate", "0.01", "--param", "seconds"], BAD_INPUT, "not key=value"),
    (["submit", "calibrate", "--budget", "b", "--estimate", "0.01", "--param", "seconds=abc"], BAD_INPUT, "wants float"),
    (["submit", "calibrate", "--budget", "b", "--estimate", "0.01", "--param", "bogus=1"], BAD_INPUT, "no parameter 'bogus'"),
    (["submit", "calibrate", "--budget", "b", "--estimate", "0.01", "--param", "seconds=-1"], BAD_INPUT, "seconds must be in"),
    (["submit", "calibrate", "--budget", "b", "--estimate", "0.01", "--param", "seconds=nan"], BAD_INPUT, "must be finite"),
    (["submit", "calibrate", "--budget", "b", "--estimate", "0.01", "-p", "seconds=1", "-p", "seconds=2"], BAD_INPUT, "given twice"),
    (["submit", "calibrate", "--budget", "b", "--estimate", "0.01", "--after", "ghost"], NOT_FOUND, "no job 'ghost'"),
    (["submit", "calibrate", "--budget", "b"], BAD_INPUT, "Missing option '--estimate'"),
    (["submit", "robustness", "--budget", "b", "--estimate", "0.01"], BAD_INPUT, "--param model_job=<job id>"),
    (["submit", "augment", "--budget", "b", "--estimate", "0.01", "--param", "model_job=ghost"], NOT_FOUND, "no job 'ghost'"),
    (["jobs", "show", "ghost"], NOT_FOUND, "no job 'ghost'"),
    (["jobs", "cancel", "ghost"], NOT_FOUND, "no job 'ghost'"),
    (["jobs", "list", "--status", "sleeping"], BAD_INPUT, "not a job status"),
    (["results", "--job", "ghost"], NOT_FOUND, "no job 'ghost'"),
    (["plan", "run", "missing.yaml"], BAD_INPUT, "no such plan file"),
    *[(["plan", "run", f"{name}.yaml"], BAD_INPUT, hint) for name, hint in [
        ("not_yaml", "not valid YAML"), ("not_a_mapping", "a plan is a mapping"), ("unknown_key", "unknown key 'budgte'"),
        ("no_estimate", "`estimate` is missing"), ("bad_estimate", "is not a dollar amount"),
        ("unknown_after", "which is not in the plan"), ("duplicate_names", "two initiatives are named"),
        ("unknown_initiative", "unknown initiative 'telepathy'"), ("bad_param", "wants float"),
        ("rank_not_int", "`rank` must be an integer"),
    ]],
    (["plan", "run", "over_budget.yaml"], EXHAUSTED, "nothing was admitted"),
    (["submit", "baseline", "--budget", "b", "--estimate", "0.01", "--param", "dataset=nowhere/data"], BAD_INPUT, "no such folder"),
    (["submit", "baseline", "--budget", "b", "--estimate", "0.01", "--param", "dataset=@tmp/plain"], BAD_INPUT,
     "set slice_column: label"),
    (["submit", "baseline", "--budget", "b", "--estimate", "0.01", "-p", "dataset=@tmp/plain", "-p", "slice_column=topic"],
     BAD_INPUT, "no slice column 'topic'"),
    (["plan", "run", "missing_dataset.yaml", "--dry-run"], BAD_INPUT, "no such folder"),
    (["plan", "run", "no_slice_column.yaml", "--dry-run"], BAD_INPUT, "no slice column 'domain'"),
]


def snapshot(db_path) -> dict[str, list]:
    with sqlite3.connect(db_path) as conn:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table' ORDER BY name")]
        return {t: conn.execute(f"SELECT * FROM {t} ORDER BY 1").fetchall() for t in tables}


@pytest.fixture
def seeded(embedded, tmp_path):
    embedded.ok("budget", "create", "b", "--total", "1.00")
    for name, text in PLANS.items():
        (tmp_path / f"{name}.yaml").write_text(text.replace("@tmp", str(tmp_path)))
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "train.jsonl").write_text('{"text": "book a flight", "label": "book_flight"}\n')
    return embedded


@pytest.mark.parametrize("args, code, says", CASES, ids=[" ".join(c[0])[:60] for c in CASES])
def test_bad_input_gets_one_clear_line_a_distinct_code_and_changes_nothing(seeded, tmp_path, args, code, says):
    db = seeded.vars["DATABASE_URL"].split("///", 1)[1]
    before = snapshot(db)
    args = [str(tmp_path / a) if a.endswith(".yaml") else a.replace("@tmp", str(tmp_path)) for a in args]
    done = seeded.cli(*args)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == code, done.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    assert says in lines[0]
    assert snapshot(db) == before


def test_an_unreachable_database_is_exit_5_and_its_password_is_masked(tmp_path):
    from tests.conftest import make_env

    env = make_env(tmp_path, database_url="postgresql+psycopg://budget:hunter2@127.0.0.1:1/ledger")
    done = env.cli("budget", "list")
    assert done.returncode == UNREACHABLE
    assert "hunter2" not in done.stderr + done.stdout and "budget:***@127.0.0.1" in done.stderr


def test_an_unreachable_broker_leaves_the_job_admitted_for_resend(embedded):
    embedded.ok("budget", "create", "b", "--total", "1.00")
    embedded.vars["BROKER_URL"] = "redis://:sekrit@127.0.0.1:1/0"
    done = embedded.cli("submit", "calibrate", "--budget", "b", "--estimate", "0.01")
    assert done.returncode == UNREACHABLE
    assert "sekrit" not in done.stderr and "jobs resend" in done.stderr
    del embedded.vars["BROKER_URL"]
    assert '"status": "admitted"' in embedded.ok("jobs", "list", "--json").stdout
    assert "re-published 1 job" in embedded.ok("jobs", "resend", "--older-than", "0").stdout


def test_a_database_behind_the_schema_is_refused_until_upgraded(embedded):
    embedded.ok("db", "downgrade", "base")
    done = embedded.cli("budget", "list")
    assert done.returncode == BAD_INPUT and "run `budgetq db upgrade`" in done.stderr
    embedded.ok("db", "upgrade")
    embedded.ok("budget", "list")


def test_a_malformed_setting_names_its_variable(embedded):
    embedded.vars["WORKER_PRICE_PER_HOUR"] = "cheap"
    done = embedded.cli("budget", "list")
    assert done.returncode == BAD_INPUT and "WORKER_PRICE_PER_HOUR" in done.stderr
