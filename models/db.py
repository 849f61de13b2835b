"""The one way into a transaction: ``with ledger.session() as s:`` commits or rolls back.

SQLite (the embedded default) runs in WAL mode with a busy timeout and takes every write
transaction with ``BEGIN IMMEDIATE``, so concurrent writers queue on the lock instead of failing
on upgrade. PostgreSQL runs at Read Committed; the operations rely on guarded UPDATEs, whose row
locks serialise writers to the same budget.
"""

from __future__ import annotations

import os
import re
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy.exc
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session

from core.errors import BackendUnavailable, ConfigError, InvalidInput
from core.settings import mask_url


def migrations_dir() -> Path:
    """The alembic scripts: ``models/migrations`` in an installed package, the top-level ``alembic/`` in a checkout.

    pyproject.toml ships ``alembic/`` as the package data ``models.migrations``; a checkout (or an
    editable install) reads it where it lies.
    """
    here = Path(__file__).resolve().parent
    for folder in (here / "migrations", here.parent / "alembic"):
        if (folder / "env.py").is_file() and (folder / "versions").is_dir():
            return folder
    raise ConfigError(f"budgetq's migrations are missing (looked in {here / 'migrations'} and {here.parent / 'alembic'}); reinstall budgetq")


def normalise_url(url: str) -> str:
    """``postgresql://`` means psycopg 3 here: the driver budgetq installs."""
    for plain in ("postgresql://", "postgres://"):
        if url.startswith(plain):
            return "postgresql+psycopg://" + url[len(plain):]
    return url


def make_engine(url: str) -> Engine:
    url = normalise_url(url)
    try:
        if url.startswith("sqlite"):
            return _sqlite_engine(url)
        # A bounded connect, and keepalives that notice a server gone away: a worker must learn the
        # database is down in seconds (and spool, retry), never hang its consumer on a dead socket.
        return create_engine(
            url, isolation_level="READ COMMITTED", pool_recycle=1800,
            connect_args={"connect_timeout": 5, "keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5, "keepalives_count": 3},
        )
    except (sqlalchemy.exc.ArgumentError, sqlalchemy.exc.NoSuchModuleError, ImportError, ValueError) as exc:
        raise ConfigError(f"DATABASE_URL {mask_url(url)!r} is not usable: {_first_line(exc)}") from None


def _sqlite_engine(url: str) -> Engine:
    path = url.split("///", 1)[-1].split("?", 1)[0]
    if path and path != ":memory:":
        try:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(
                f"DATABASE_URL {mask_url(url)!r}: cannot make the folder {Path(path).parent} ({exc.strerror});"
                " point DATABASE_URL (or BUDGETQ_HOME) at a folder you can write"
            ) from None
    engine = create_engine(url, connect_args={"timeout": 60, "check_same_thread": False})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record) -> None:
        # Let SQLAlchemy, not pysqlite, decide when transactions begin (the documented recipe).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=60000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection) -> None:
        # Take the write lock up front: a deferred transaction that reads, then writes, fails
        # with SQLITE_BUSY on upgrade instead of waiting.
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


class Ledger:
    """An engine and its sessions. Build one per process (after a fork, build a new one)."""

    def __init__(self, url: str) -> None:
        self.url = normalise_url(url)
        self.engine = make_engine(self.url)
        # A forked child (a Celery pool process) must never use, or close, the parent's pooled
        # connections: that would interleave two processes on one socket. It starts a pool of its own.
        engine = weakref.ref(self.engine)
        os.register_at_fork(after_in_child=lambda: (e := engine()) is not None and e.dispose(close=False))

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @contextmanager
    def session(self) -> Iterator[Session]:
        try:
            with Session(self.engine, expire_on_commit=False) as s, s.begin():
                yield s
        except (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError) as exc:
            raise BackendUnavailable(
                f"database at {mask_url(self.url)} failed: {_first_line(exc.orig)}; check DATABASE_URL and that the server is up"
            ) from exc
        except (sqlalchemy.exc.DataError, OverflowError) as exc:
            # The last line of defence: callers check lengths and ranges before they write, so this
            # names a check that is missing. The transaction is rolled back: nothing was written.
            raise InvalidInput(f"a value does not fit the ledger ({_first_line(getattr(exc, 'orig', exc))}); shorten it or use a smaller number") from exc

    def require_head(self) -> None:
        """Refuse to run against a database whose schema is not at the latest migration."""
        current, head = self.revisions()
        if current != head:
            raise ConfigError(
                f"the database at {mask_url(self.url)} is at schema revision {current or 'none'},"
                f" not {head}; run `budgetq db upgrade`"
            )

    def revisions(self) -> tuple[str | None, str]:
        from alembic.runtime.migration import MigrationContext
        from alembic.script import ScriptDirectory

        head = ScriptDirectory.from_config(alembic_config(self.url)).get_current_head()
        try:
            with self.engine.connect() as conn:
                current = MigrationContext.configure(conn).get_current_revision()
        except (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError) as exc:
            raise BackendUnavailable(
                f"cannot reach the database at {mask_url(self.url)}: {_first_line(exc.orig)}; check DATABASE_URL"
            ) from exc
        return current, head or ""

    def upgrade(self, revision: str = "head") -> None:
        from alembic import command

        with _migrating(self.url, revision):
            command.upgrade(alembic_config(self.url, engine=self.engine), revision)

    def downgrade(self, revision: str) -> None:
        from alembic import command

        with _migrating(self.url, revision):
            command.downgrade(alembic_config(self.url, engine=self.engine), revision)


@contextmanager
def _migrating(url: str, revision: str) -> Iterator[None]:
    from alembic.util import CommandError

    if not _REVISION.fullmatch(revision):
        raise InvalidInput(f"{revision!r} is not a revision; use head, base or a revision such as 0001")
    try:
        yield
    except (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError) as exc:
        raise BackendUnavailable(f"cannot reach the database at {mask_url(url)}: {_first_line(exc.orig)}; check DATABASE_URL") from exc
    except CommandError as exc:
        raise InvalidInput(f"cannot migrate to revision {revision!r}: {_first_line(exc)}; use head, base or a revision such as 0001") from None


# The revisions budgetq's migrations take: an id or head/base, optionally with a step (head-1,
# 0001+1), or a bare step (-1, +2). Alembic meets other text with assertions, not errors.
_REVISION = re.compile(r"(?:[A-Za-z0-9_]{1,32}(?:[+-][0-9]{1,3})?|[+-][0-9]{1,3})", re.ASCII)


def alembic_config(url: str, engine: Engine | None = None):
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    config.attributes["engine"] = engine
    return config


def _first_line(exc: BaseException | None) -> str:
    return mask_url(str(exc).strip().splitlines()[0]) if exc and str(exc).strip() else type(exc).__name__
