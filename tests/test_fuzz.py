"""Fuzzing the ways in: whatever text arrives, budgetq answers with a value or its own error,
never a traceback, and the ledger's entries still sum to every budget afterwards.

The CLI runs in process here (hundreds of runs; a subprocess each would take minutes); the
table in test_cli_errors.py runs the real command for each kind of bad input.
"""

from __future__ import annotations

import io
from contextlib import redirect_stderr, redirect_stdout

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.errors import ConfigError, InvalidInput
from core.money import parse_dollars
from core.settings import _VARIABLES, Settings, load_settings
from producer.plan import ENTRY_KEYS, TOP_KEYS, load_plan

FUZZ = settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
# Text a shell can pass: anything but NUL.
TEXT = st.text(st.characters(exclude_characters="\x00"), max_size=40)
FILE_TEXT = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), max_size=40)  # UTF-8 can hold it
AWKWARD = st.sampled_from([
    "", " ", "0", "1", "0.01", "1.00", "$0.25", "1e3", "1_000", "-1", "-0", "inf", "nan", "１", "0.0000001", "9" * 40,
    "b", "calibrate", "baseline", "telepathy", "ghost", "a" * 300, "seconds=1", "seconds=inf", "seconds", "k=v=w",
    "head", "base", "0001", "../x", "a/b", "x y", "@", "%s", "{}", "[", "'", '"', "\\", "\u202e", "é",
    "redis://h:6379/0?password=x", "redis://:p@ss@h:1/0", "amqp://u:p@h//", "postgresql://u:p@h/db", "mysql://h/db",
    "sqlite:///x.db", "sqlite:////", "filesystem://", "x=json", "x=tests.initiatives.bad_unit", '{"calibrate": "q"}',
])


@FUZZ
@given(st.one_of(TEXT, AWKWARD, st.integers(), st.floats(), st.booleans(), st.none()))
def test_any_dollar_input_parses_to_micros_or_is_refused_with_a_reason(text):
    try:
        micros = parse_dollars(text)
    except InvalidInput as refused:
        assert "\n" not in str(refused)
    else:
        assert isinstance(micros, int) and 0 <= micros <= 10**15


@FUZZ
@given(st.dictionaries(st.sampled_from(sorted(_VARIABLES)), st.one_of(TEXT, AWKWARD), max_size=4))
def test_any_environment_gives_settings_or_one_config_error(env):
    try:
        assert isinstance(load_settings(env), Settings)
    except ConfigError as refused:
        assert "\n" not in str(refused)


SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), TEXT, AWKWARD)
KEYS = st.one_of(st.sampled_from(sorted(TOP_KEYS | ENTRY_KEYS | {"seconds", "steps", "params"})), TEXT)
DOCUMENTS = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEYS, inner, max_size=5), max_leaves=25)
ENTRY = st.fixed_dictionaries(
    {"initiative": st.sampled_from(["calibrate", "baseline", "robustness"]) | TEXT, "rank": st.integers() | AWKWARD,
     "estimate": AWKWARD | st.floats() | st.integers()},
    optional={"name": TEXT | AWKWARD, "queue": TEXT | AWKWARD, "params": DOCUMENTS, "after": DOCUMENTS,
              "max_attempts": st.integers() | AWKWARD},
)
PLANS = st.fixed_dictionaries(
    {"budget": TEXT | AWKWARD, "initiatives": st.lists(ENTRY, max_size=3) | DOCUMENTS},
    optional={"name": TEXT | AWKWARD, "total": AWKWARD | st.floats(), "max_attempts": st.integers()},
)


def plan_text(draw_from) -> st.SearchStrategy[str]:
    as_yaml = draw_from.map(lambda doc: yaml.safe_dump(doc, allow_unicode=True))
    return st.one_of(as_yaml, FILE_TEXT.map(lambda t: "budget: b\ninitiatives: " + t))


@FUZZ
@given(st.one_of(plan_text(PLANS), plan_text(DOCUMENTS)))
def test_any_plan_file_loads_or_is_refused_naming_the_file(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("plan") / "plan.yaml"
    path.write_text(text, encoding="utf-8")
    try:
        plan = load_plan(path)
    except (InvalidInput, ConfigError) as refused:
        assert str(path) in str(refused) and "\n" not in str(refused)
    else:
        assert plan.entries and all(-1_000_000 <= e.rank <= 1_000_000 for e in plan.entries)


def test_a_plan_file_that_is_not_utf8_is_refused_naming_the_file(tmp_path):
    path = tmp_path / "plan.yaml"
    path.write_bytes(b"budget: b\ninitiatives: \xff\xfe\xed\xa0\x80\n")  # a lone surrogate's bytes among them
    with pytest.raises(InvalidInput) as refused:
        load_plan(path)
    assert str(path) in str(refused.value) and "\n" not in str(refused.value)


VALUE = st.one_of(AWKWARD, TEXT)
NAME = st.one_of(st.sampled_from(["b", "c", "demo-1"]), VALUE)


def options(*names: str) -> st.SearchStrategy[list[str]]:
    """Some of ``names``, each with a fuzzed value (``--flag`` alone when it takes none)."""
    pairs = st.lists(st.tuples(st.sampled_from(names), VALUE), max_size=4)
    return pairs.map(lambda chosen: [part for name, value in chosen for part in ((name,) if name in FLAGS else (name, value))])


FLAGS = {"--json", "--dry-run", "--partial"}
COMMAND_LINES = st.one_of(
    st.tuples(NAME, VALUE, options("--json")).map(lambda t: ["budget", "create", t[0], "--total", t[1], *t[2]]),
    st.tuples(NAME, options("--json")).map(lambda t: ["budget", "show", t[0], *t[1]]),
    st.tuples(st.sampled_from(["calibrate", "baseline", "robustness", "augment"]) | VALUE, NAME, VALUE,
              options("--param", "-p", "--queue", "--key", "--after", "--max-attempts", "--json")).map(
        lambda t: ["submit", t[0], "--budget", t[1], "--estimate", t[2], *t[3]]),
    options("--dry-run", "--partial", "--json").map(lambda rest: ["plan", "run", "PLAN", *rest]),
    options("--budget", "--status", "--initiative", "--limit", "--json").map(lambda rest: ["jobs", "list", *rest]),
    st.tuples(st.sampled_from(["show", "cancel"]), VALUE).map(lambda t: ["jobs", t[0], t[1]]),
    options("--older-than", "--json").map(lambda rest: ["jobs", "resend", *rest]),
    options("--job", "--budget", "--json").map(lambda rest: ["results", *rest]),
    st.tuples(VALUE).map(lambda t: ["db", "upgrade", t[0]]),
    st.lists(st.one_of(VALUE, st.sampled_from(sorted(FLAGS))), max_size=6).map(lambda rest: ["budget", "list", *rest]),
)


@pytest.fixture
def in_process_cli(tmp_path, monkeypatch):
    """``budgetq`` called in this process against a fresh SQLite ledger and filesystem broker."""
    from core import queue
    from core.settings import current_settings
    from producer.cli import main

    for name in _VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("BUDGETQ_HOME", str(tmp_path / "home"))
    current_settings.cache_clear()
    queue.default_app.cache_clear()

    def run(*args: str) -> tuple[int, str]:
        out, err = io.StringIO(), io.StringIO()
        with redirect_stdout(out), redirect_stderr(err), pytest.raises(SystemExit) as exited:
            monkeypatch.setattr("sys.argv", ["budgetq", *args])
            main()
        return exited.value.code, err.getvalue()

    assert run("db", "upgrade")[0] == 0
    assert run("budget", "create", "b", "--total", "1.00")[0] == 0
    yield run
    current_settings.cache_clear()
    queue.default_app.cache_clear()


@FUZZ
@given(line=COMMAND_LINES, plan=plan_text(PLANS))
def test_any_command_line_exits_with_a_known_code_and_no_traceback(in_process_cli, tmp_path, line, plan):
    path = tmp_path / "fuzzed.yaml"
    path.write_text(plan, encoding="utf-8")
    args = [str(path) if word == "PLAN" else word for word in line]
    code, stderr = in_process_cli(*args)  # an exception escaping main() fails the test with its traceback
    assert code in {0, 1, 2, 3, 4, 5}, (args, stderr)
    assert "Traceback" not in stderr, (args, stderr)
    assert code == 0 or len([line for line in stderr.splitlines() if line.strip()]) == 1, (args, stderr)
    # Whatever was admitted, the entries still sum to every budget and job.
    assert in_process_cli("budget", "audit")[0] == 0

