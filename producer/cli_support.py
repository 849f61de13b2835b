"""What every ``budgetq`` command module shares: opening the ledger and the common options."""

from __future__ import annotations

import typer

from core.settings import Settings, load_settings
from models.db import Ledger

JSON = typer.Option(False, "--json", help="Print JSON instead of a table.")
MAX_SECONDS = 10 * 365 * 86_400  # a bound for every duration option: finite, and within a timedelta


def open_ledger(*, at_head: bool = True) -> tuple[Settings, Ledger]:
    """The settings and the ledger; with ``at_head``, refuse a ledger whose schema is not migrated."""
    settings = load_settings()
    store = Ledger(settings.database_url)
    if at_head:
        store.require_head()
    return settings, store
