"""Bad input: one line saying what was wrong and how to fix it, a distinct exit code, and a
database exactly as it was, on SQLite and on PostgreSQL."""

from __future__ import annotations

import contextlib
import sqlite3
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import pytest

BAD_INPUT, EXHAUSTED, NOT_FOUND, UNREACHABLE = 2, 3, 4, 5
ONE_CALIBRATE = "initiatives: [{initiative: calibrate, rank: 1, estimate: '0.01'}]\n"
BILLION_LAUGHS = "".join(
    f"{name}: &{name} [{', '.join([f'*{prev}' if prev else 'lol'] * 9)}]\n"
    for prev, name in zip(["", "a", "b", "c", "d", "e", "f", "g"], "abcdefgh")
)

PLANS = {
    "not_yaml": "budget: b\ninitiatives: [\n",
    "not_a_mapping": "- just\n- a list\n",
    "unknown_key": "budget: b\nbudgte: c\n" + ONE_CALIBRATE,
    "no_estimate": "budget: b\ninitiatives: [{initiative: calibrate, rank: 1}]\n",
    "bad_estimate": "budget: b\ninitiatives: [{initiative: calibrate, rank: 1, estimate: 'ten'}]\n",
    "exponent_estimate": "budget: b\ninitiatives: [{initiative: calibrate, rank: 1, estimate: '1e-3'}]\n",
    "exponent_total": "budget: fresh\ntotal: 1e3\n" + ONE_CALIBRATE,
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
    "rank_past_int32": "budget: b\ninitiatives: [{initiative: calibrate, rank: 2147483648, estimate: '0.01'}]\n",
    "rank_past_int64": "budget: b\ninitiatives: [{initiative: calibrate, rank: -99999999999999999999999, estimate: '0.01'}]\n",
    "long_entry_name": f"budget: b\ninitiatives: [{{name: {'n' * 300}, initiative: calibrate, rank: 1, estimate: '0.01'}}]\n",
    "entry_name_not_text": "budget: b\ninitiatives: [{name: [x], initiative: calibrate, rank: 1, estimate: '0.01'}]\n",
    "nul_in_name": 'budget: b\ninitiatives: [{name: "a\\0b", initiative: calibrate, rank: 1, estimate: "0.01"}]\n',
    "long_queue": f"budget: b\ninitiatives: [{{queue: {'q' * 101}, initiative: calibrate, rank: 1, estimate: '0.01'}}]\n",
    "queue_with_slash": "budget: b\ninitiatives: [{queue: ../../etc, initiative: calibrate, rank: 1, estimate: '0.01'}]\n",
    "long_plan_name": f"name: {'p' * 300}\nbudget: b\n" + ONE_CALIBRATE,
    "nul_in_budget": 'budget: "b\\0"\n' + ONE_CALIBRATE,
    "duplicate_key": "budget: b\nbudget: c\n" + ONE_CALIBRATE,
    "duplicate_param": "budget: b\ninitiatives: [{initiative: calibrate, rank: 1, estimate: '0.01', params: {seconds: 1, seconds: 2}}]\n",
    "alias_bomb": BILLION_LAUGHS + "budget: b\ninitiatives: [{initiative: calibrate, rank: 1, estimate: '0.01', params: {seconds: *h}}]\n",
    "deep_nesting": "budget: b\ninitiatives: " + "[" * 5000 + "]" * 5000 + "\n",
    "nesting_past_the_limit": "budget: b\ninitiatives: " + "[" * 40 + "]" * 40 + "\n",
    "over_budget": textwrap.dedent("""\
        budget: b
        initiatives:
          - {name: a, initiative: calibrate, rank: 1, estimate: '0.60'}
          - {name: b, initiative: calibrate, rank: 2, estimate: '0.60'}
        """),
    # The plan names a budget to create, and does not fit it: neither the budget nor a job is written.
    "over_its_new_budget": "budget: fresh\ntotal: '0.50'\ninitiatives: [{initiative: calibrate, rank: 1, estimate: '0.60'}]\n",
}


@dataclass(frozen=True)
class Case:
    args: list[str]
    code: int
    says: str
    env: dict[str, str] = field(default_factory=dict)
    # Also on PostgreSQL. Cases refused before any database is opened (money, settings, options)
    # run there once per kind, not each.
    pg: bool = True

    @property
    def id(self) -> str:
        shown = " ".join(self.args)[:50] + (f" {' '.join(f'{k}={v}' for k, v in self.env.items())}"[:40] if self.env else "")
        return shown.replace("\x00", "\\0")


def plan(name: str, code: int, says: str, *, pg: bool = True) -> Case:
    return Case(["plan", "run", f"{name}.yaml"], code, says, pg=pg)


def submit(*extra: str) -> list[str]:
    return ["submit", "calibrate", "--budget", "b", "--estimate", "0.01", *extra]


CASES = [
    # money
    Case(["budget", "create", "x", "--total", "abc"], BAD_INPUT, "not a dollar amount"),
    Case(["budget", "create", "x", "--total", "NaN"], BAD_INPUT, "not a finite number", pg=False),
    Case(["budget", "create", "x", "--total", "-1"], BAD_INPUT, "negative", pg=False),
    Case(["budget", "create", "x", "--total", "0.0000001"], BAD_INPUT, "more than 6 decimals", pg=False),
    Case(["budget", "create", "x", "--total", "1000000001"], BAD_INPUT, "absurdly large", pg=False),
    Case(["budget", "create", "x", "--total", "1e3"], BAD_INPUT, "not a plain decimal", pg=False),
    Case(["budget", "create", "x", "--total", "1_000"], BAD_INPUT, "not a plain decimal", pg=False),
    Case(["budget", "create", "x", "--total", "１"], BAD_INPUT, "not a plain decimal", pg=False),
    Case(submit()[:-1] + ["inf"], BAD_INPUT, "--estimate 'inf' is not a finite", pg=False),
    # names, keys and queues past their columns or in the wrong shape
    Case(["budget", "create", "bad name!", "--total", "1"], BAD_INPUT, "must be 1-100 letters"),
    Case(["budget", "create", "x" * 101, "--total", "1"], BAD_INPUT, "must be 1-100 letters"),
    Case(["budget", "create", "b", "--total", "1"], BAD_INPUT, "already exists"),
    Case(submit("--key", "k" * 201), BAD_INPUT, "the most is 200"),
    Case(submit("--queue", "q" * 101), BAD_INPUT, "--queue 'qqqq"),
    Case(submit("--queue", "a/b"), BAD_INPUT, "ASCII letters, digits"),
    Case(submit("--queue", ""), BAD_INPUT, "--queue ''"),
    # the rest of submit
    Case(["budget", "show", "nope"], NOT_FOUND, "budget create nope"),
    Case(["submit", "calibrate", "--budget", "nope", "--estimate", "0.01"], NOT_FOUND, "no budget named 'nope'"),
    Case(["submit", "telepathy", "--budget", "b", "--estimate", "0.01"], BAD_INPUT, "unknown initiative 'telepathy'"),
    Case(submit()[:-1] + ["5.00"], EXHAUSTED, "has $1.00 left"),
    Case(submit("--param", "seconds"), BAD_INPUT, "not key=value", pg=False),
    Case(submit("--param", "seconds=abc"), BAD_INPUT, "wants float"),
    Case(submit("--param", "bogus=1"), BAD_INPUT, "no parameter 'bogus'"),
    Case(submit("--param", "seconds=-1"), BAD_INPUT, "seconds must be in"),
    Case(submit("--param", "seconds=nan"), BAD_INPUT, "must be finite"),
    Case(["submit", "baseline", "--budget", "b", "--estimate", "0.01", "--param", "steps=99999999999999999999"], BAD_INPUT,
         "must be within +-9007199254740992"),
    Case(submit("-p", "seconds=1", "-p", "seconds=2"), BAD_INPUT, "given twice", pg=False),
    Case(submit("--after", "ghost"), NOT_FOUND, "no job 'ghost'"),
    Case(submit("--max-attempts", "0"), BAD_INPUT, "--max-attempts", pg=False),
    Case(["submit", "calibrate", "--budget", "b"], BAD_INPUT, "Missing option '--estimate'", pg=False),
    # other commands and their options: every number bounded, finite
    Case(["jobs", "show", "ghost"], NOT_FOUND, "no job 'ghost'"),
    Case(["jobs", "cancel", "ghost"], NOT_FOUND, "no job 'ghost'"),
    Case(["jobs", "list", "--status", "sleeping"], BAD_INPUT, "not a job status", pg=False),
    Case(["jobs", "list", "--limit", "99999999999999999999"], BAD_INPUT, "--limit"),
    Case(["jobs", "resend", "--older-than", "inf"], BAD_INPUT, "--older-than"),
    Case(["jobs", "resend", "--older-than", "1e300"], BAD_INPUT, "--older-than", pg=False),
    Case(["jobs", "resend", "--older-than", "nan"], BAD_INPUT, "--older-than", pg=False),
    Case(["results", "--job", "ghost"], NOT_FOUND, "no job 'ghost'"),
    Case(["db", "upgrade", "garbage"], BAD_INPUT, "cannot migrate to revision 'garbage'"),
    Case(["db", "downgrade", "garbage"], BAD_INPUT, "cannot migrate to revision 'garbage'", pg=False),
    Case(["worker", "--burst", "--concurrency", "100000"], BAD_INPUT, "--concurrency"),
    Case(["worker", "--burst", "--loglevel", "chatty"], BAD_INPUT, "not a log level", pg=False),
    Case(["worker", "--burst", "--queues", "ok,not ok"], BAD_INPUT, "--queues: queue 'not ok'", pg=False),
    # plan files
    Case(["plan", "run", "missing.yaml"], BAD_INPUT, "no such plan file"),
    Case(["plan", "run", "folder.yaml"], BAD_INPUT, "is a folder"),
    Case(["plan", "run", "huge.yaml"], BAD_INPUT, "over 1024 KiB", pg=False),
    Case(["plan", "run", "latin1.yaml"], BAD_INPUT, "not valid YAML", pg=False),
    plan("not_yaml", BAD_INPUT, "not valid YAML"),
    plan("not_a_mapping", BAD_INPUT, "a plan is a mapping", pg=False),
    plan("unknown_key", BAD_INPUT, "unknown key 'budgte'", pg=False),
    plan("no_estimate", BAD_INPUT, "`estimate` is missing", pg=False),
    plan("bad_estimate", BAD_INPUT, "is not a dollar amount", pg=False),
    plan("exponent_estimate", BAD_INPUT, "not a plain decimal"),
    plan("exponent_total", BAD_INPUT, "total '1e3' is not a plain decimal", pg=False),
    plan("unknown_after", BAD_INPUT, "which is not in the plan", pg=False),
    plan("duplicate_names", BAD_INPUT, "two initiatives are named", pg=False),
    plan("unknown_initiative", BAD_INPUT, "unknown initiative 'telepathy'", pg=False),
    plan("bad_param", BAD_INPUT, "wants float", pg=False),
    plan("rank_not_int", BAD_INPUT, "`rank` must be an integer", pg=False),
    plan("rank_past_int32", BAD_INPUT, "`rank` must be an integer from -1000000 to 1000000"),
    plan("rank_past_int64", BAD_INPUT, "`rank` must be an integer from -1000000 to 1000000"),
    plan("long_entry_name", BAD_INPUT, "is 300 characters long; the most is 80"),
    plan("entry_name_not_text", BAD_INPUT, "`name` must be non-empty text"),
    plan("nul_in_name", BAD_INPUT, "control character"),
    plan("long_queue", BAD_INPUT, "`queue` 'qqqq"),
    plan("queue_with_slash", BAD_INPUT, "`queue` '../../etc'"),
    plan("long_plan_name", BAD_INPUT, "plan name 'pppp"),
    plan("nul_in_budget", BAD_INPUT, "`budget` 'b\\x00' holds a control character"),
    plan("duplicate_key", BAD_INPUT, "key 'budget' is given twice (lines 1 and 2)"),
    plan("duplicate_param", BAD_INPUT, "key 'seconds' is given twice", pg=False),
    plan("alias_bomb", BAD_INPUT, "expands to more than"),
    plan("deep_nesting", BAD_INPUT, "nests too deeply"),
    plan("nesting_past_the_limit", BAD_INPUT, "nests deeper than 16 levels", pg=False),
    plan("over_budget", EXHAUSTED, "nothing was admitted"),
    plan("over_its_new_budget", EXHAUSTED, "nothing was admitted"),
    # settings: each refused with its variable's name before anything is written
    Case(["budget", "list"], BAD_INPUT, "DATABASE_URL 'mysql://u:***@h/db' is not a database budgetq supports",
         env={"DATABASE_URL": "mysql://u:hunter2@h/db"}),
    Case(["budget", "list"], BAD_INPUT, "DATABASE_URL", env={"DATABASE_URL": "garbage"}, pg=False),
    Case(["budget", "list"], BAD_INPUT, "is under", env={"BUDGETQ_HOME": "{file}/home", "DATABASE_URL": ""}),
    Case(["budget", "list"], BAD_INPUT, "cannot make the folder", env={"DATABASE_URL": "sqlite:///{file}/ledger.db"}, pg=False),
    Case(submit(), BAD_INPUT, "BROKER_URL 'garbage' is not a broker URL", env={"BROKER_URL": "garbage"}),
    Case(submit(), BAD_INPUT, "BROKER_URL 'redis://:***@h:port/0' is malformed", env={"BROKER_URL": "redis://:sekrit@h:port/0"}),
    Case(submit(), BAD_INPUT, "a Redis database is a number", env={"BROKER_URL": "redis://127.0.0.1:6379/zero"}, pg=False),
    Case(submit(), BAD_INPUT, "LEASE_SECONDS must be a finite number", env={"LEASE_SECONDS": "inf"}),
    Case(submit(), BAD_INPUT, "must be shorter than LEASE_SECONDS", env={"LEASE_SECONDS": "1", "HEARTBEAT_SECONDS": "5"}, pg=False),
    Case(submit(), BAD_INPUT, "PROGRESS_LOG_SECONDS", env={"PROGRESS_LOG_SECONDS": "nan"}, pg=False),
    Case(submit(), BAD_INPUT, "WORKER_PRICE_PER_HOUR", env={"WORKER_PRICE_PER_HOUR": "1e3"}, pg=False),
    Case(submit(), BAD_INPUT, "WORKER_NAME", env={"WORKER_NAME": "w" * 300}, pg=False),
    Case(submit(), BAD_INPUT, "QUEUE_ROUTES: queue", env={"QUEUE_ROUTES": '{"calibrate": "' + "q" * 300 + '"}'}),
    Case(submit(), BAD_INPUT, "is not an initiative module", env={"BUDGETQ_INITIATIVES": "x=json"}),
    Case(submit(), BAD_INPUT, "is not name=package.module", env={"BUDGETQ_INITIATIVES": "x=.relative"}, pg=False),
    Case(submit(), BAD_INPUT, "cannot be loaded from 'no.such.module'", env={"BUDGETQ_INITIATIVES": "x=no.such.module"}, pg=False),
    Case(submit(), BAD_INPUT, "UNIT is 'furlongs'", env={"BUDGETQ_INITIATIVES": "x=tests.initiatives.bad_unit"}, pg=False),
    Case(submit(), BAD_INPUT, "initiative name 'x y'", env={"BUDGETQ_INITIATIVES": "x y=tests.initiatives.stubborn"}, pg=False),
]


def snapshot(db_path) -> dict[str, list]:
    """Every row of every table of a SQLite ledger file."""
    with sqlite3.connect(db_path) as conn:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table' ORDER BY name")]
        return {t: sorted(map(repr, conn.execute(f"SELECT * FROM {t}").fetchall())) for t in tables}


def postgres_snapshot(url: str) -> dict[str, list]:
    import psycopg

    with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://")) as conn:
        tables = [r[0] for r in conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' ORDER BY table_name")]
        return {t: sorted(map(repr, conn.execute(f'SELECT * FROM "{t}"').fetchall())) for t in tables}


def ledger_snapshot(url: str) -> dict[str, list]:
    return snapshot(url.split("///", 1)[1]) if url.startswith("sqlite") else postgres_snapshot(url)


def write_plans(folder: Path) -> None:
    for name, text in PLANS.items():
        (folder / f"{name}.yaml").write_text(text.replace("@tmp", str(folder)))
    (folder / "plain").mkdir()
    (folder / "plain" / "train.jsonl").write_text('{"text": "book a flight", "label": "book_flight"}\n')
    (folder / "folder.yaml").mkdir()
    (folder / "huge.yaml").write_text("budget: b\n" + ONE_CALIBRATE + "# " + "x" * (1 << 20) + "\n")
    (folder / "latin1.yaml").write_bytes("budget: caf\u00e9\n".encode("latin-1") + ONE_CALIBRATE.encode())
    (folder / "a_file").write_text("not a folder\n")


@pytest.fixture(scope="module")
def seeded(request, tmp_path_factory):
    """A ledger with budget ``b`` ($1.00) on each database, and the plan files above.

    One per module and database: every case leaves it as it was (that is what each one checks),
    so the cases share it and each costs one CLI run.
    """
    from tests.conftest import make_env, new_postgres_database

    folder = tmp_path_factory.mktemp(f"bad_input_{request.param}")
    with contextlib.ExitStack() as stack:
        sqlite = request.param == "sqlite"
        url = f"sqlite:///{folder / 'ledger.db'}" if sqlite else stack.enter_context(new_postgres_database())
        env = make_env(folder, database_url=url)
        env.ok("db", "upgrade")
        env.ok("budget", "create", "b", "--total", "1.00")
        write_plans(folder)
        yield env, folder


def run_case(env, folder: Path, case: Case) -> str:
    before = ledger_snapshot(env.vars["DATABASE_URL"])
    extra = {k: v.replace("{file}", str(folder / "a_file")) for k, v in case.env.items()}
    args = [str(folder / a) if a.endswith(".yaml") else a.replace("@tmp", str(folder)) for a in case.args]
    done = type(env)({**env.vars, **extra}).cli(*args)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == case.code, done.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr[-3000:]
    assert case.says in lines[0], lines[0]
    assert ledger_snapshot(env.vars["DATABASE_URL"]) == before
    return lines[0]


RUNS = [(db, case) for db in ("sqlite", "postgres") for case in CASES if db == "sqlite" or case.pg]


@pytest.mark.parametrize("seeded, case", RUNS, ids=[f"{db}: {case.id}" for db, case in RUNS], indirect=["seeded"])
def test_bad_input_gets_one_clear_line_a_distinct_code_and_changes_nothing(seeded, case):
    env, folder = seeded
    run_case(env, folder, case)


@pytest.mark.parametrize("url, code", [
    ("postgresql+psycopg://budget:hunter2@127.0.0.1:1/ledger", UNREACHABLE),
    ("postgresql://budget@127.0.0.1:1/ledger?password=hunter2&connect_timeout=2", UNREACHABLE),
    ("postgresql://budget:hun@ter2@127.0.0.1:1/ledger", BAD_INPUT),  # an '@' in the password: write it %40
])
def test_an_unreachable_database_is_exit_5_and_its_password_is_masked(tmp_path, url, code):
    from tests.conftest import make_env

    env = make_env(tmp_path, database_url=url)
    for args in (["budget", "list"], ["jobs", "list", "--json"], ["db", "upgrade"]):
        done = env.cli(*args)
        assert done.returncode == code, done.stderr
        assert "hun" not in done.stderr + done.stdout and "ter2" not in done.stderr + done.stdout and "***" in done.stderr


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
