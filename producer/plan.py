"""Plan files: a YAML list of initiatives to admit against one budget, in rank order.

```yaml
name: roadmap            # optional; the file's stem by default. Keys the admissions, so a re-run
budget: roadmap          # admits nothing twice.
total: "1.00"            # optional: create the budget with this total if it does not exist
initiatives:
  - name: baseline       # unique in the plan; `after:` refers to it. Defaults to the initiative.
    initiative: baseline
    rank: 1
    estimate: "0.10"
    queue: gpu           # optional; one queue per initiative by default
    params: {epochs: 1}
    after: []            # names that must succeed first
```
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from core.errors import InvalidInput
from core.limits import ENTRY_NAME_LENGTH, PLAN_NAME_LENGTH, check_name, check_rank, check_text
from core.money import parse_dollars
from producer.plan_file import read_yaml
import specs

TOP_KEYS = {"name", "budget", "total", "initiatives", "max_attempts"}
ENTRY_KEYS = {"name", "initiative", "rank", "estimate", "queue", "params", "after", "max_attempts"}


@dataclass(frozen=True)
class PlanEntry:
    name: str
    initiative: str
    rank: int
    estimate_micros: int
    params: dict[str, Any]
    queue: Optional[str] = None
    after: tuple[str, ...] = ()
    max_attempts: Optional[int] = None


@dataclass(frozen=True)
class Plan:
    name: str
    budget: str
    total_micros: Optional[int]
    entries: tuple[PlanEntry, ...] = field(default_factory=tuple)
    max_attempts: Optional[int] = None

    def key(self, entry: PlanEntry) -> str:
        return f"plan:{self.name}:{entry.name}"


def load_plan(path: Path, *, extra_initiatives: str = "") -> Plan:
    """Read and validate a plan; any problem raises ``InvalidInput`` naming the file and entry."""
    where = str(path)
    doc = read_yaml(Path(path))
    if not isinstance(doc, dict):
        raise InvalidInput(f"{where}: a plan is a mapping with `budget` and `initiatives`")
    _no_unknown_keys(where, doc, TOP_KEYS)
    budget = _text(where, doc, "budget")
    _checked(where, check_text, budget, what="`budget`", longest=100)
    raw_entries = doc.get("initiatives")
    if not isinstance(raw_entries, list) or not raw_entries:
        raise InvalidInput(f"{where}: `initiatives` must be a non-empty list")
    entries = tuple(_entry(f"{where}: initiatives[{i}]", raw, extra_initiatives) for i, raw in enumerate(raw_entries))
    _check_graph(where, entries)
    total = doc.get("total")
    name = doc.get("name") or Path(path).stem
    _checked(where, check_text, name, what="plan name" if doc.get("name") else "plan name (the file's name; set `name:` to choose one)",
             longest=PLAN_NAME_LENGTH)
    return Plan(
        name=name,
        budget=budget,
        total_micros=None if total is None else parse_dollars(total, what=f"{where}: total"),
        entries=tuple(sorted(entries, key=lambda e: e.rank)),
        max_attempts=_attempts(where, doc.get("max_attempts")),
    )


def _entry(where: str, raw: Any, extra_initiatives: str) -> PlanEntry:
    if not isinstance(raw, dict):
        raise InvalidInput(f"{where}: each initiative is a mapping with `initiative`, `rank` and `estimate`")
    _no_unknown_keys(where, raw, ENTRY_KEYS)
    initiative = _text(where, raw, "initiative")
    rank = _checked(where, check_rank, raw.get("rank"), what="`rank`")
    if "estimate" not in raw:
        raise InvalidInput(f"{where}: `estimate` is missing; give the most this job may spend, like \"0.25\"")
    params = raw.get("params") or {}
    if not isinstance(params, dict):
        raise InvalidInput(f"{where}: `params` must be a mapping")
    try:
        parsed = specs.parse_params(initiative, params, extra_initiatives)
    except InvalidInput as exc:
        raise InvalidInput(f"{where}: {exc}") from None
    after = raw.get("after") or []
    if isinstance(after, str):
        after = [after]
    if not isinstance(after, list) or not all(isinstance(a, str) for a in after):
        raise InvalidInput(f"{where}: `after` must be a list of initiative names in this plan")
    queue = raw.get("queue")
    if queue is not None:
        _checked(where, check_name, queue, what="`queue`")
    name = raw.get("name") or initiative
    _checked(where, check_text, name, what="`name`", longest=ENTRY_NAME_LENGTH)
    return PlanEntry(
        name=name, initiative=initiative, rank=rank,
        estimate_micros=parse_dollars(raw["estimate"], what=f"{where}: estimate"),
        params=specs.params_to_json(parsed), queue=queue, after=tuple(after),
        max_attempts=_attempts(where, raw.get("max_attempts")),
    )


def _check_graph(where: str, entries: tuple[PlanEntry, ...]) -> None:
    by_name: dict[str, PlanEntry] = {}
    for entry in entries:
        if entry.name in by_name:
            raise InvalidInput(f"{where}: two initiatives are named {entry.name!r}; give each a unique `name`")
        by_name[entry.name] = entry
    for entry in entries:
        for dep in entry.after:
            if dep not in by_name:
                raise InvalidInput(f"{where}: {entry.name!r} runs after {dep!r}, which is not in the plan")
            if by_name[dep].rank >= entry.rank:
                raise InvalidInput(
                    f"{where}: {entry.name!r} runs after {dep!r} so it must rank after it (rank {entry.rank} <= {by_name[dep].rank})"
                )


def _attempts(where: str, value: Any) -> Optional[int]:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 100:
        raise InvalidInput(f"{where}: `max_attempts` must be an integer from 1 to 100")
    return value


def _text(where: str, doc: dict, key: str) -> str:
    value = doc.get(key)
    if not isinstance(value, str) or not value.strip():
        raise InvalidInput(f"{where}: `{key}` is missing or not text")
    return value.strip()


def _no_unknown_keys(where: str, doc: dict, allowed: set[str]) -> None:
    unknown = sorted(set(map(str, doc)) - allowed)
    if unknown:
        raise InvalidInput(f"{where}: unknown key {unknown[0]!r}; allowed keys: {', '.join(sorted(allowed))}")


def _checked(where: str, check, value: Any, **kwargs: Any) -> Any:
    try:
        return check(value, **kwargs)
    except InvalidInput as exc:
        raise InvalidInput(f"{where}: {exc}") from None
