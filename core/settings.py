"""Typed settings: one pydantic-settings object, read once per process and passed down.

A malformed variable fails at start-up with its name. Unset (or empty) variables take the
embedded defaults: a SQLite ledger and a filesystem broker under ``BUDGETQ_HOME`` (no servers).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import socket
from contextvars import ContextVar
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from core.errors import ConfigError, InvalidInput
from core.limits import check_name
from core.money import parse_dollars

_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.\-]*://\S*$")
# `scheme://user:password@host`: the password runs to the last '@' of the URL (a password may hold
# '@' itself), so everything from the ':' to that '@' is hidden. Over-masking is the safe mistake.
_PASSWORD_IN_URL = re.compile(r"(?P<head>[a-zA-Z][a-zA-Z0-9+.\-]*://[^/:@\s'\"]*:)(?P<password>[^\s'\"]*)@")
# `?password=...` in a URL's query, or `password=...` in a libpq key=value string.
_PASSWORD_PARAMETER = re.compile(r"(?P<head>\b(?:password|passwd|pwd)=)(?P<password>[^&\s'\"]+)", re.IGNORECASE)


def mask_url(text: str) -> str:
    """Replace every password in ``text`` with ``***``: ``user:password@`` in URLs and ``password=`` parameters."""
    text = _PASSWORD_IN_URL.sub(lambda m: f"{m.group('head')}***@", text)
    return _PASSWORD_PARAMETER.sub(lambda m: f"{m.group('head')}***", text)


class PasswordMask(logging.Filter):
    """A log handler filter that masks passwords in each record's message and traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = mask_url(record.getMessage()), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = mask_url(record.exc_text)
        return True


def _json_object(value: Any, shape: str) -> dict[str, Any]:
    """A JSON object given as text (or already parsed); anything else raises ``shape`` as the error."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise ValueError(shape) from None
    if not isinstance(value, dict):
        raise ValueError(shape)
    return value


def _finite(name: str, value: float, *, low: float, high: float) -> float:
    if not math.isfinite(value) or not low <= value <= high:
        raise ValueError(f"{name} must be a finite number from {low:g} to {high:g}")
    return value


class Settings(BaseSettings):
    """Every setting budgetq reads from the environment (the variable names are the aliases)."""

    model_config = SettingsConfigDict(frozen=True, extra="ignore", env_ignore_empty=True, case_sensitive=True)

    home: Path = Field(Path(".budgetq"), validation_alias="BUDGETQ_HOME")
    database_url: str = Field("", validation_alias="DATABASE_URL")  # empty: SQLite under home
    broker_url: str = Field("filesystem://", validation_alias="BROKER_URL")
    price_micros_per_hour: int = Field(1_000_000, validation_alias="WORKER_PRICE_PER_HOUR")
    spot: bool = Field(False, validation_alias="WORKER_SPOT")
    instance_type: str = Field("local", validation_alias="WORKER_INSTANCE_TYPE")
    worker_name: str = Field("", validation_alias="WORKER_NAME")  # empty: host-pid
    concurrency: int = Field(1, ge=1, le=1024, validation_alias="WORKER_CONCURRENCY")
    lease_seconds: float = Field(30.0, validation_alias="LEASE_SECONDS")
    heartbeat_seconds: float = Field(5.0, validation_alias="HEARTBEAT_SECONDS")
    max_attempts: int = Field(3, ge=1, le=100, validation_alias="MAX_ATTEMPTS")
    resend_after_seconds: float = Field(60.0, validation_alias="RESEND_AFTER_SECONDS")
    queue_routes: Annotated[dict[str, str], NoDecode] = Field(default_factory=dict, validation_alias="QUEUE_ROUTES")
    artifact_location: str = Field("", validation_alias="ARTIFACT_DIR")  # empty: under home
    checkpoint_location: str = Field("", validation_alias="CHECKPOINT_DIR")  # empty: under home
    # fsspec options for remote ARTIFACT_DIR / CHECKPOINT_DIR (e.g. {"client_kwargs": {"endpoint_url": ...}}).
    storage_options: Annotated[dict[str, Any], NoDecode] = Field(default_factory=dict, validation_alias="STORAGE_OPTIONS")
    extra_initiatives: str = Field("", validation_alias="BUDGETQ_INITIATIVES")
    clinc150_dir: str = Field("", validation_alias="CLINC150_DIR")
    # Downloaded data (CLINC150 files, NLTK's WordNet copy): $BUDGETQ_HOME/cache when BUDGETQ_HOME is
    # set, else the user's ~/.cache/budgetq, shared by every project on the machine.
    cache_location: str = Field("", validation_alias="BUDGETQ_CACHE")
    # Debian's wordnet-base; without it (and without WordNet on NLTK's own data path) the steps that
    # need WordNet are skipped with a note on the job.
    wordnet_dir: Path = Field(Path("/usr/share/wordnet"), validation_alias="WORDNET_DIR")
    # Off a terminal a worker logs a running job's step, loss and cost at most this often (and at
    # most every 10% of its steps).
    progress_log_seconds: float = Field(30.0, validation_alias="PROGRESS_LOG_SECONDS")
    # Spot preemption notices besides SIGTERM: a metadata URL polled every few seconds, or a file.
    preemption_notice_url: str = Field("", validation_alias="PREEMPTION_NOTICE_URL")
    preemption_notice_kind: Literal["aws", "gcp"] = Field("aws", validation_alias="PREEMPTION_NOTICE_KIND")
    preemption_notice_file: str = Field("", validation_alias="PREEMPTION_NOTICE_FILE")
    preemption_poll_seconds: float = Field(5.0, validation_alias="PREEMPTION_POLL_SECONDS")

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, env_settings, dotenv_settings, file_secret_settings):
        # load_settings(env) reads the mapping it is given and nothing else (never the process environment).
        if _GIVEN_ONLY.get():
            return (init_settings,)
        return (init_settings, env_settings, dotenv_settings, file_secret_settings)

    @model_validator(mode="before")
    @classmethod
    def _defaults_from_home(cls, data: Any) -> Any:
        if isinstance(data, dict):
            data = {k: v for k, v in data.items() if v not in (None, "")}
            home = Path(data.get("BUDGETQ_HOME") or ".budgetq").absolute()
            data.setdefault("BUDGETQ_CACHE", str(home / "cache" if data.get("BUDGETQ_HOME") else Path.home() / ".cache" / "budgetq"))
            data["BUDGETQ_HOME"] = home
            data.setdefault("DATABASE_URL", f"sqlite:///{home / 'ledger.db'}")
            data.setdefault("WORKER_NAME", f"{socket.gethostname()[:80]}-{os.getpid()}")
        return data

    @field_validator("price_micros_per_hour", mode="before")
    @classmethod
    def _price(cls, value: Any) -> int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        try:
            return parse_dollars(value, what="WORKER_PRICE_PER_HOUR")
        except InvalidInput as exc:
            raise ValueError(str(exc)) from None

    @field_validator("lease_seconds")
    @classmethod
    def _lease(cls, value: float) -> float:
        return _finite("LEASE_SECONDS", value, low=0.5, high=86_400)

    @field_validator("heartbeat_seconds")
    @classmethod
    def _heartbeat(cls, value: float) -> float:
        return _finite("HEARTBEAT_SECONDS", value, low=0.05, high=3_600)

    @field_validator("resend_after_seconds")
    @classmethod
    def _resend(cls, value: float) -> float:
        return _finite("RESEND_AFTER_SECONDS", value, low=0, high=86_400)

    @field_validator("progress_log_seconds")
    @classmethod
    def _progress_log(cls, value: float) -> float:
        return _finite("PROGRESS_LOG_SECONDS", value, low=0, high=86_400)

    @field_validator("database_url")
    @classmethod
    def _database(cls, value: str) -> str:
        scheme = value.split("://", 1)[0].lower() if "://" in value else ""
        if scheme not in _DATABASE_SCHEMES:
            raise ValueError(
                f"DATABASE_URL {mask_url(value)!r} is not a database budgetq supports;"
                " use sqlite:///PATH or postgresql+psycopg://USER:PASSWORD@HOST/DB"
            )
        if value.split("://", 1)[1].split("?", 1)[0].count("@") > 1:
            # SQLAlchemy would split at the first '@' and put the rest of the password in the host
            # name, which then shows in every "cannot resolve host" error.
            raise ValueError(f"DATABASE_URL {mask_url(value)!r} has a password holding '@'; write it as %40 (URL-encoded)")
        return value

    @field_validator("broker_url")
    @classmethod
    def _broker(cls, value: str) -> str:
        for url in value.split(";"):  # Celery takes fail-over brokers separated by ';'
            _check_broker(url.strip())
        return value

    @field_validator("home", "artifact_location", "checkpoint_location")
    @classmethod
    def _folder(cls, value: Any, info) -> Any:
        if value and "://" not in str(value):  # an object-store URL is checked by _location
            _check_folder(Path(value), name=str(cls.model_fields[info.field_name].validation_alias))
        return value

    @field_validator("worker_name")
    @classmethod
    def _worker_name(cls, value: str) -> str:
        return _as_value_error(check_name, value, what="WORKER_NAME")

    @field_validator("instance_type")
    @classmethod
    def _instance_type(cls, value: str) -> str:
        return _as_value_error(check_name, value, what="WORKER_INSTANCE_TYPE")

    @model_validator(mode="after")
    def _lease_outlives_heartbeats(self) -> "Settings":
        if self.heartbeat_seconds >= self.lease_seconds:
            raise ValueError(
                f"HEARTBEAT_SECONDS ({self.heartbeat_seconds:g}) must be shorter than LEASE_SECONDS ({self.lease_seconds:g}),"
                " or every running job's lease expires between heartbeats"
            )
        return self

    @field_validator("preemption_poll_seconds")
    @classmethod
    def _poll(cls, value: float) -> float:
        return _finite("PREEMPTION_POLL_SECONDS", value, low=0.05, high=600)

    @field_validator("preemption_notice_url")
    @classmethod
    def _notice_url(cls, value: str) -> str:
        if value and not re.match(r"^https?://[^/\s]+(/\S*)?$", value):
            raise ValueError("PREEMPTION_NOTICE_URL must be an http(s) URL, like http://169.254.169.254")
        return value.rstrip("/")

    @field_validator("artifact_location", "checkpoint_location")
    @classmethod
    def _location(cls, value: str, info) -> str:
        name = "ARTIFACT_DIR" if info.field_name == "artifact_location" else "CHECKPOINT_DIR"
        if "://" in value and not _URL.match(value):
            raise ValueError(f"{name} must be a folder or a URL like s3://bucket/prefix, gs://bucket/prefix or file:///path")
        return value.rstrip("/") if "://" in value else value

    @field_validator("storage_options", mode="before")
    @classmethod
    def _storage_options(cls, value: Any) -> dict[str, Any]:
        shape = 'STORAGE_OPTIONS must be a JSON object of fsspec options, like {"client_kwargs": {"endpoint_url": "http://minio:9000"}}'
        return _json_object(value, shape)

    @field_validator("queue_routes", mode="before")
    @classmethod
    def _routes(cls, value: Any) -> dict[str, str]:
        shape = 'QUEUE_ROUTES must be JSON mapping initiative names to queue names, like {"baseline": "gpu"}'
        value = _json_object(value, shape)
        if not all(isinstance(k, str) and isinstance(v, str) and v for k, v in value.items()):
            raise ValueError(shape)
        for queue in value.values():
            _as_value_error(check_name, queue, what="QUEUE_ROUTES: queue")
        return value

    @property
    def embedded_broker(self) -> bool:
        return self.broker_url.startswith("filesystem://")

    @property
    def broker_folder(self) -> Path:
        return self.home / "broker"

    @property
    def artifact_url(self) -> str:
        """Where artifacts go: a local folder, or an fsspec URL (s3://, gs://, file://...)."""
        return self.artifact_location or str(self.home / "artifacts")

    @property
    def checkpoint_url(self) -> str:
        """Where checkpoints go: a local folder, or an fsspec URL shared by the whole fleet."""
        return self.checkpoint_location or str(self.home / "checkpoints")

    @property
    def artifact_dir(self) -> Path:
        """The local artifact folder (with a URL ``ARTIFACT_DIR``: this worker's download cache)."""
        if self.artifact_location and "://" not in self.artifact_location:
            return Path(self.artifact_location)
        return self.home / "artifacts"

    @property
    def checkpoint_dir(self) -> Path:
        """The local checkpoint folder (with a URL ``CHECKPOINT_DIR``: this worker's cache of it)."""
        if self.checkpoint_location and "://" not in self.checkpoint_location:
            return Path(self.checkpoint_location)
        return self.home / "checkpoints"

    @property
    def cache_dir(self) -> Path:
        """Where downloaded data is kept (``BUDGETQ_CACHE``)."""
        return Path(self.cache_location).absolute()

    @property
    def spool_dir(self) -> Path:
        """Settlements finished while the database was unreachable wait here (local disk)."""
        return self.home / "spool"

    def queue_for(self, initiative: str) -> str:
        """One queue per initiative unless ``QUEUE_ROUTES`` says otherwise."""
        return self.queue_routes.get(initiative, initiative)

    def with_changes(self, **changes: Any) -> "Settings":
        """A copy with some fields changed (the worker sets its slot count from ``--concurrency``)."""
        return self.model_copy(update=changes)


def load_settings(env: Optional[dict[str, str]] = None) -> Settings:
    """Read every setting once; raise ``ConfigError`` naming the first bad variable."""
    try:
        if env is None:
            return Settings()
        token = _GIVEN_ONLY.set(True)
        try:
            return Settings(**{k: v for k, v in env.items() if k in _VARIABLES})
        finally:
            _GIVEN_ONLY.reset(token)
    except ValidationError as exc:
        raise ConfigError(_first_problem(exc)) from None


@lru_cache(maxsize=1)
def current_settings() -> Settings:
    """This process's settings, read from the environment the first time they are asked for."""
    return load_settings()


_GIVEN_ONLY: ContextVar[bool] = ContextVar("budgetq_settings_given_only", default=False)
_VARIABLES = {str(f.validation_alias) for f in Settings.model_fields.values()}
_DATABASE_SCHEMES = {"sqlite", "sqlite+pysqlite", "postgresql", "postgres", "postgresql+psycopg"}
_BROKER_URL = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+]*)://", re.ASCII)


def _as_value_error(check, value: Any, **kwargs: Any) -> Any:
    """Run a check that raises ``InvalidInput`` inside a pydantic validator (which wants ``ValueError``)."""
    try:
        return check(value, **kwargs)
    except InvalidInput as exc:
        raise ValueError(str(exc)) from None


def _check_broker(url: str) -> None:
    """A broker URL kombu can parse, for a transport that is installed; checked before anything is written."""
    from kombu.transport import TRANSPORT_ALIASES, resolve_transport
    from kombu.utils.imports import symbol_by_name
    from kombu.utils.url import parse_url

    shown = mask_url(url)
    match = _BROKER_URL.match(url)
    scheme = match.group("scheme") if match else ""
    if scheme not in TRANSPORT_ALIASES or scheme == "memory":  # memory:// cannot reach another process
        raise ValueError(
            f"BROKER_URL {shown!r} is not a broker URL; use redis://HOST:6379/0, amqp://USER:PASSWORD@HOST//"
            " or leave it unset for the embedded filesystem broker"
        )
    if scheme == "filesystem":
        return
    try:
        parts = parse_url(url)
    except ValueError as exc:
        raise ValueError(f"BROKER_URL {shown!r} is malformed ({mask_url(str(exc))}); write it like redis://HOST:6379/0") from None
    except TypeError:  # kombu's parser fails on a setting given twice, e.g. ?password= in the query
        raise ValueError(f"BROKER_URL {shown!r} is malformed; give the password once, like redis://:PASSWORD@HOST:6379/0") from None
    database = (parts.get("virtual_host") or "").strip("/")
    if scheme in ("redis", "rediss") and database and not database.isdigit():
        raise ValueError(f"BROKER_URL {shown!r}: a Redis database is a number, like redis://HOST:6379/0")
    try:
        symbol_by_name(resolve_transport(scheme))
    except ImportError as exc:
        raise ValueError(f"BROKER_URL {shown!r} needs a package that is not installed ({exc})") from None


def _shortened(text: str) -> str:
    return text if len(text) <= 60 else text[:45] + "..." + text[-10:]


def _check_folder(folder: Path, *, name: str) -> None:
    """A folder budgetq may create: it and every existing parent must be a folder, not a file."""
    for path in (folder, *folder.absolute().parents):
        try:
            exists = path.exists()
        except OSError as exc:  # a name too long for the filesystem, say
            raise ValueError(f"{name}={_shortened(str(folder))!r} is not a usable path ({exc.strerror}); point {name} at a folder") from None
        if exists:
            if not path.is_dir():
                where = "is a file" if path == folder else f"is under {path}, which is a file"
                raise ValueError(f"{name}={_shortened(str(folder))!r} {where}; point {name} at a folder")
            return


def _first_problem(exc: ValidationError) -> str:
    error = exc.errors()[0]
    name = next((str(part) for part in error.get("loc", ()) if str(part) in _VARIABLES), "a setting")
    message = str(error.get("msg", "is malformed")).removeprefix("Value error, ")
    if message.startswith(name) or any(message.startswith(variable) for variable in _VARIABLES):
        return message
    value = error.get("input")
    shown = f"={value!r}" if isinstance(value, (str, int, float)) else ""
    return f"{name}{shown} is not valid: {message}"
