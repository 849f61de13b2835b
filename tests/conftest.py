"""Real backends for the tests: SQLite files, a fresh PostgreSQL database, a Redis DB.

A backend that is not running skips its tests locally, but fails them in CI (``CI=true``), where
``.ci/run`` has started every server.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from models.db import Ledger

REPO = Path(__file__).resolve().parents[1]
PG_ADMIN_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/9")
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def unavailable(what: str, exc: Exception) -> None:
    message = f"{what} is not reachable ({exc})"
    if IN_CI:
        pytest.fail(message + "; .ci/run should have started it")
    pytest.skip(message)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'ledger.db'}"


@contextmanager
def new_postgres_database() -> Iterator[str]:
    """A fresh database on the test server, dropped afterwards; its URL."""
    import psycopg

    admin = PG_ADMIN_URL.replace("postgresql+psycopg://", "postgresql://")
    name = f"budgetq_test_{uuid.uuid4().hex[:12]}"
    try:
        with psycopg.connect(admin, autocommit=True, connect_timeout=3) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.OperationalError as exc:
        unavailable("PostgreSQL", exc)
    try:
        yield PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def postgres_url() -> Iterator[str]:
    with new_postgres_database() as url:
        yield url


@pytest.fixture
def redis_url() -> str:
    import redis

    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).flushdb()
    except redis.exceptions.ConnectionError as exc:
        unavailable("Redis", exc)
    return REDIS_URL


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request) -> str:
    """Each ledger test runs on both databases."""
    return request.getfixturevalue(f"{request.param}_url")


@pytest.fixture
def store(db_url: str) -> Iterator[Ledger]:
    ledger = Ledger(db_url)
    ledger.upgrade()
    yield ledger
    ledger.engine.dispose()


def _ends_with_pytest() -> None:
    """In a worker about to start: a SIGTERM (a warm shutdown) when pytest dies, so a killed test run
    leaves no worker behind. Linux only; elsewhere the fixtures' own teardown is all there is."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG


@dataclass
class Env:
    """The environment a CLI or worker subprocess runs with."""

    vars: dict[str, str]

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "producer", *args], env=self.vars, cwd=REPO, capture_output=True,
            text=True, timeout=timeout,
        )

    def ok(self, *args: str) -> subprocess.CompletedProcess:
        done = self.cli(*args)
        assert done.returncode == 0, f"budgetq {' '.join(args)} exited {done.returncode}: {done.stderr}"
        return done

    def worker(self, *args: str, **popen) -> subprocess.Popen:
        # A session of its own, so a test can kill the worker and all its pool processes at once.
        return subprocess.Popen(
            [sys.executable, "-m", "producer", "worker", "--loglevel", "info", *args], env=self.vars, cwd=REPO,
            start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            preexec_fn=_ends_with_pytest, **popen,
        )

    def spawn(self, log: Path, *args: str, **env: str) -> subprocess.Popen:
        """A worker writing its log to ``log`` (readable while it runs), with extra environment."""
        handle = open(log, "w")
        return subprocess.Popen(
            [sys.executable, "-m", "producer", "worker", "--loglevel", "info", *args], env={**self.vars, **env}, cwd=REPO,
            start_new_session=True, stdout=handle, stderr=subprocess.STDOUT, text=True, preexec_fn=_ends_with_pytest,
        )

    def burst(self, *args: str, timeout: float = 180) -> str:
        proc = self.worker("--burst", *args)
        try:
            out, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the worker and its pool processes (its own session)
            out, _ = proc.communicate()
            raise AssertionError(f"burst worker did not finish in {timeout}s:\n{out[-4000:]}")
        assert proc.returncode == 0, out[-4000:]
        return out


def make_env(tmp_path: Path, *, database_url: str, broker_url: str | None = None, **extra: str) -> Env:
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "BROKER_URL"}}
    env.update(
        BUDGETQ_HOME=str(tmp_path / "home"), DATABASE_URL=database_url, LEASE_SECONDS="5",
        HEARTBEAT_SECONDS="0.5", RESEND_AFTER_SECONDS="30", PYTHONUNBUFFERED="1",
    )
    if broker_url:
        env["BROKER_URL"] = broker_url
    env.update(extra)
    return Env(env)


@pytest.fixture
def embedded(tmp_path: Path, sqlite_url: str) -> Env:
    """The default: a SQLite ledger and the filesystem broker, no servers."""
    env = make_env(tmp_path, database_url=sqlite_url)
    env.ok("db", "upgrade")
    return env


@pytest.fixture
def distributed(tmp_path: Path, postgres_url: str, redis_url: str) -> Env:
    """PostgreSQL and Redis, as a multi-machine deployment runs."""
    env = make_env(tmp_path, database_url=postgres_url, broker_url=redis_url)
    env.ok("db", "upgrade")
    return env


def wait_for(predicate, *, timeout: float, interval: float = 0.2, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


# --- private servers for fault tests (started here, stopped by their own PID) ---------------------


@pytest.fixture
def private_redis(tmp_path: Path):
    from tests.servers import PrivateRedis

    if shutil.which("redis-server") is None:
        unavailable("redis-server", FileNotFoundError("not on PATH"))
    server = PrivateRedis(tmp_path / "redis").start()
    yield server
    server.stop()


@pytest.fixture
def private_postgres():
    from tests.servers import PG_BIN, PrivatePostgres

    if not (PG_BIN / "initdb").exists():
        unavailable("PostgreSQL's initdb", FileNotFoundError(str(PG_BIN / "initdb")))
    server = PrivatePostgres().start()
    yield server
    server.destroy()


@pytest.fixture(scope="session")
def s3_server():
    try:
        from tests.servers import S3Server

        server = S3Server().start()
    except ImportError as exc:
        unavailable("moto's S3 server (pip install 'moto[server]' s3fs)", exc)
    yield server
    server.stop()


@dataclass
class Bucket:
    url: str
    env: dict[str, str]


@pytest.fixture
def s3_bucket(s3_server, monkeypatch) -> Bucket:
    """A fresh bucket on the test's S3 server; this process and the workers it starts reach it by env."""
    for name, value in s3_server.env.items():
        monkeypatch.setenv(name, value)
    return Bucket(f"s3://{s3_server.bucket()}", dict(s3_server.env))


@pytest.fixture
def metadata_server():
    """An IMDSv2- and GCP-shaped metadata server on 127.0.0.1 (tests never touch the real address)."""
    from tests.servers import MetadataServer

    server = MetadataServer().start()
    yield server
    server.stop()
