"""Money is integer micro-dollars everywhere in code and in the database.

Users type and read dollars as decimal strings; ``parse_dollars`` is the only way in.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

from core.errors import InvalidInput

MICROS_PER_DOLLAR = 1_000_000
# Far above any compute budget, far below a BIGINT's range (9.2e18 micros).
MAX_DOLLARS = Decimal(1_000_000_000)
# Plain ASCII decimals only: `1`, `1.25`, `$0.25`. Python's Decimal would also take `1e3`, `1_000`
# and non-ASCII digits such as `１`, which a person reading a plan or a shell history would misread.
_PLAIN = re.compile(r"\$?(?P<whole>[0-9]+)(?:\.(?P<fraction>[0-9]+))?", re.ASCII)
_LONGEST = 40  # characters: longer text is refused before Decimal reads it


def parse_dollars(text: object, *, what: str = "amount") -> int:
    """Parse a dollar string such as ``"1.00"`` or ``"$0.25"`` into micro-dollars."""
    raw = "" if isinstance(text, bool) else str(text).strip()
    shown = _shown(text)
    match = _PLAIN.fullmatch(raw)
    if match is None:
        raise InvalidInput(f"{what} {shown} {_why_not_plain(raw)}")
    whole, fraction = match.group("whole").lstrip("0") or "0", match.group("fraction") or ""
    if len(fraction) > 6:
        raise InvalidInput(f"{what} {shown} has more than 6 decimals; the smallest unit is $0.000001")
    if len(whole) > len(str(MAX_DOLLARS)) or Decimal(f"{whole}.{fraction or '0'}") > MAX_DOLLARS:
        raise InvalidInput(f"{what} {shown} is absurdly large; the most budgetq takes is ${MAX_DOLLARS}")
    return int(whole) * MICROS_PER_DOLLAR + int(fraction.ljust(6, "0"))


def _why_not_plain(raw: str) -> str:
    """Why ``raw`` is refused, and how to write it instead."""
    try:
        value = Decimal(raw.removeprefix("$")) if len(raw) <= _LONGEST else None
    except (InvalidOperation, ValueError):
        value = None
    if value is not None and not value.is_finite():
        return "is not a finite number; write it like 1.00"
    if (value is not None and value.is_signed()) or raw.lstrip("$").startswith("-"):
        return "is negative; amounts are zero or more dollars"
    if value is not None:
        return "is not a plain decimal; write it with ASCII digits and a point only, like 1000 or 0.25 (no exponent or '_')"
    return "is not a dollar amount; write it like 1.00 or 0.25"


def _shown(text: object) -> str:
    shown = repr(text if isinstance(text, str) else str(text))
    return shown if len(shown) <= 60 else shown[:57] + "...'"


def format_micros(micros: int) -> str:
    """Render micro-dollars as ``$1.25`` or ``$0.001234``: exact, never rounded."""
    sign = "-" if micros < 0 else ""
    dollars, rest = divmod(abs(micros), MICROS_PER_DOLLAR)
    fraction = f"{rest:06d}".rstrip("0").ljust(2, "0")
    return f"{sign}${dollars}.{fraction}"


def dollars(micros: int) -> str:
    """Micro-dollars as a plain decimal string for JSON output, e.g. ``"0.250000"`` (six decimals, exact)."""
    return f"{Decimal(micros).scaleb(-6):.6f}"


PARTS_PER_MILLION = 1_000_000


def parse_share(text: object, *, what: str = "share") -> int:
    """Parse a share of a budget, ``"0.5"`` or ``"50%"``, into exact parts per million (above 0, at most 1)."""
    raw = str(text).strip()
    percent = raw.endswith("%")
    try:
        value = Decimal(raw.removesuffix("%").strip())
    except (InvalidOperation, ValueError):
        raise InvalidInput(f"{what} {text!r} is not a share of the budget; write it like 0.5 or 80%") from None
    if percent:
        value /= 100
    if not value.is_finite() or not 0 < value <= 1:
        raise InvalidInput(f"{what} {text!r} must be above 0 and at most 1 (or 100%); write it like 0.5 or 80%")
    ppm = value * PARTS_PER_MILLION
    if ppm != ppm.to_integral_value():
        raise InvalidInput(f"{what} {text!r} is finer than one part in a million; round it")
    return int(ppm)


def format_share(ppm: int) -> str:
    """Parts per million as an exact percentage: ``50%``, ``12.5%``."""
    whole, rest = divmod(ppm, PARTS_PER_MILLION // 100)
    return f"{whole}.{rest:04d}".rstrip("0").rstrip(".") + "%"
