"""Limits on what people type that ends up in the ledger and on the broker: names, keys, ranks.

Each limit is below its column's length, so a name that passes always fits: PostgreSQL refuses an
over-long value (and any NUL character), where SQLite would store it silently.
"""

from __future__ import annotations

import re

from core.errors import InvalidInput

# Queue names become file names (the filesystem broker) and keys (Redis): plain ASCII, no separators.
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,99}", re.ASCII)
KEY_LENGTH = 200  # jobs.idempotency_key
# A plan's idempotency keys are `plan:<plan>:<entry>[#seed<k>]`; these keep them within KEY_LENGTH.
PLAN_NAME_LENGTH = 80
ENTRY_NAME_LENGTH = 80
RANK_LIMIT = 1_000_000  # jobs.rank is a 32-bit INTEGER on PostgreSQL; plans need a handful of ranks


def check_name(value: object, *, what: str) -> str:
    """A queue, worker or initiative name: 1-100 ASCII letters, digits, '_', '.' or '-'."""
    if not isinstance(value, str) or not NAME.fullmatch(value):
        raise InvalidInput(f"{what} {_shown(value)} must be 1-100 ASCII letters, digits, '_', '.' or '-' (starting with a letter or digit)")
    return value


def check_text(value: object, *, what: str, longest: int) -> str:
    """Free text stored in the ledger (a key, a plan or entry name): 1-``longest`` printable characters."""
    if not isinstance(value, str) or not value.strip():
        raise InvalidInput(f"{what} must be non-empty text, got {_shown(value)}")
    if len(value) > longest:
        raise InvalidInput(f"{what} {_shown(value)} is {len(value)} characters long; the most is {longest}")
    if not value.isprintable():
        raise InvalidInput(f"{what} {_shown(value)} holds a control character; use printable text")
    return value


def check_rank(value: object, *, what: str = "rank") -> int:
    """A rank: an integer from -RANK_LIMIT to RANK_LIMIT."""
    if not isinstance(value, int) or isinstance(value, bool) or not -RANK_LIMIT <= value <= RANK_LIMIT:
        raise InvalidInput(f"{what} must be an integer from {-RANK_LIMIT} to {RANK_LIMIT}, got {_shown(value)}")
    return value


def _shown(value: object) -> str:
    shown = repr(value)
    return shown if len(shown) <= 60 else shown[:45] + "..." + shown[-10:]
