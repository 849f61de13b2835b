"""Typed settings, read once from the environment and passed down.

A malformed variable fails at start-up with its name. Unset variables take the embedded
defaults: a SQLite ledger and a filesystem broker under ``BUDGETQ_HOME`` (no servers).
"""

from __future__ import annotations

import json
import os
import re
import socket
from dataclasses import dataclass, field
from pathlib import Path

from models.errors import ConfigError, InvalidInput
from models.money import parse_dollars

_PASSWORD_IN_URL = re.compile(r"(?P<head>[a-zA-Z][a-zA-Z0-9+.\-]*://[^/:@\s]*:)(?P<password>[^@\s]+)@")


def mask_url(text: str) -> str:
    """Replace any password inside ``scheme://user:password@host`` with ``***``."""
    return _PASSWORD_IN_URL.sub(lambda m: f"{m.group('head')}***@", text)


@dataclass(frozen=True)
class Settings:
    home: Path
    database_url: str
    broker_url: str
    price_micros_per_hour: int
    spot: bool
    instance_type: str
    worker_name: str
    concurrency: int
    lease_seconds: float
    heartbeat_seconds: float
    max_attempts: int
    resend_after_seconds: float
    queue_routes: dict[str, str] = field(default_factory=dict)

    @property
    def embedded_broker(self) -> bool:
        return self.broker_url.startswith("filesystem://")

    @property
    def broker_folder(self) -> Path:
        return self.home / "broker"

    @property
    def artifact_dir(self) -> Path:
        return Path(os.environ.get("ARTIFACT_DIR") or self.home / "artifacts")

    @property
    def checkpoint_dir(self) -> Path:
        return Path(os.environ.get("CHECKPOINT_DIR") or self.home / "checkpoints")

    def queue_for(self, initiative: str) -> str:
        """One queue per initiative unless ``QUEUE_ROUTES`` says otherwise."""
        return self.queue_routes.get(initiative, initiative)


def load_settings(env: dict[str, str] | None = None) -> Settings:
    """Read every setting once; raise ``ConfigError`` naming the first bad variable."""
    env = dict(os.environ if env is None else env)
    home = Path(env.get("BUDGETQ_HOME") or ".budgetq").absolute()
    return Settings(
        home=home,
        database_url=env.get("DATABASE_URL") or f"sqlite:///{home / 'ledger.db'}",
        broker_url=env.get("BROKER_URL") or "filesystem://",
        price_micros_per_hour=_money(env, "WORKER_PRICE_PER_HOUR", "1.00"),
        spot=_flag(env, "WORKER_SPOT", "false"),
        instance_type=env.get("WORKER_INSTANCE_TYPE") or "local",
        worker_name=env.get("WORKER_NAME") or f"{socket.gethostname()}-{os.getpid()}",
        concurrency=_number(env, "WORKER_CONCURRENCY", "1", int, minimum=1),
        lease_seconds=_number(env, "LEASE_SECONDS", "30", float, minimum=0.5),
        heartbeat_seconds=_number(env, "HEARTBEAT_SECONDS", "5", float, minimum=0.05),
        max_attempts=_number(env, "MAX_ATTEMPTS", "3", int, minimum=1),
        resend_after_seconds=_number(env, "RESEND_AFTER_SECONDS", "60", float, minimum=0),
        queue_routes=_routes(env),
    )


def _money(env: dict[str, str], name: str, default: str) -> int:
    try:
        return parse_dollars(env.get(name) or default, what=name)
    except InvalidInput as exc:
        raise ConfigError(str(exc)) from None


def _flag(env: dict[str, str], name: str, default: str) -> bool:
    raw = (env.get(name) or default).strip().lower()
    if raw in {"1", "true", "yes", "on"}:
        return True
    if raw in {"0", "false", "no", "off"}:
        return False
    raise ConfigError(f"{name}={raw!r} is not a boolean; use true or false")


def _number(env: dict[str, str], name: str, default: str, kind: type, *, minimum: float):
    raw = env.get(name) or default
    try:
        value = kind(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a{'n integer' if kind is int else ' number'}") from None
    if not value >= minimum:
        raise ConfigError(f"{name}={raw!r} must be at least {minimum}")
    return value


def _routes(env: dict[str, str]) -> dict[str, str]:
    raw = env.get("QUEUE_ROUTES")
    if not raw:
        return {}
    try:
        routes = json.loads(raw)
    except json.JSONDecodeError:
        raise ConfigError('QUEUE_ROUTES is not JSON; write it like {"baseline": "gpu"}') from None
    if not isinstance(routes, dict) or not all(isinstance(v, str) and v for v in routes.values()):
        raise ConfigError('QUEUE_ROUTES must map initiative names to queue names, like {"baseline": "gpu"}')
    return routes
