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
    seeds: 3             # optional: one job per seed (params.seed, +1, +2), each with its own reservation
```

An entry with ``seeds: N`` fans out into N jobs named ``<name>#seed<k>``, and every entry that runs
after it follows each seed: ``augment#seed1`` runs after ``baseline#seed1``. ``model_job`` in a
plan may name an entry instead of a job id; it resolves to the same seed's job.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Optional

from core.errors import InvalidInput
from core.limits import ENTRY_NAME_LENGTH, PLAN_NAME_LENGTH, check_name, check_rank, check_text
from core.money import parse_dollars
from producer.plan_file import read_yaml
import specs
from specs.datasets import check_dataset

TOP_KEYS = {"name", "budget", "total", "initiatives", "max_attempts"}
ENTRY_KEYS = {"name", "initiative", "rank", "estimate", "queue", "params", "after", "max_attempts", "seeds"}
MAX_SEEDS = 20
SEED_MARK = "#seed"


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
    seeds: int = 1  # as declared; after fan-out every entry is one job (seeds == 1)

    @property
    def group(self) -> str:
        """The declared entry this job came from: the name without its ``#seed<k>``."""
        return self.name.split(SEED_MARK, 1)[0]


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
    entries = _resolve_models(where, _fan_out_seeds(where, entries, extra_initiatives), extra_initiatives)
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
        check_dataset(specs.params_to_json(parsed))
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
    if SEED_MARK in name:
        raise InvalidInput(f"{where}: entry name {name!r} may not contain {SEED_MARK!r}; budgetq adds it to seeded jobs")
    return PlanEntry(
        name=name, initiative=initiative, rank=rank, seeds=_seeds(where, raw.get("seeds")),
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


def _seeds(where: str, value: Any) -> int:
    if value is None:
        return 1
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_SEEDS:
        raise InvalidInput(f"{where}: `seeds` must be an integer from 1 to {MAX_SEEDS}, got {value!r}")
    return value


def _fan_out_seeds(where: str, entries: tuple[PlanEntry, ...], extra_initiatives: str) -> tuple[PlanEntry, ...]:
    """One entry per seed; an entry after a seeded one follows each seed (its own ``seeds`` must agree).

    Entries come in rank order, so every dependency is expanded before the entries that need it.
    """
    counts: dict[str, int] = {}
    expanded: list[PlanEntry] = []
    for entry in sorted(entries, key=lambda e: e.rank):
        inherited = {counts[d] for d in entry.after if counts[d] > 1}
        if len(inherited) > 1 or (inherited and entry.seeds > 1 and inherited != {entry.seeds}):
            raise InvalidInput(
                f"{where}: {entry.name!r} has seeds {entry.seeds} but runs after entries with seeds {sorted(inherited)};"
                " give entries that depend on each other the same number of seeds"
            )
        n = entry.seeds if entry.seeds > 1 else (inherited.pop() if inherited else 1)
        counts[entry.name] = n
        if n == 1:
            expanded.append(replace(entry, seeds=1))
            continue
        if "seed" not in {f.name for f in dataclasses.fields(specs.get(entry.initiative, extra_initiatives).params)}:
            raise InvalidInput(f"{where}: {entry.name!r} asks for {n} seeds but initiative {entry.initiative!r} has no `seed` parameter")
        expanded += [_seeded(entry, k, counts) for k in range(n)]
    return tuple(expanded)


def _seeded(entry: PlanEntry, k: int, counts: dict[str, int]) -> PlanEntry:
    """Seed ``k`` of ``entry``: its own seed parameter, and the same seed of each seeded dependency."""
    def follow(name: str) -> str:
        return f"{name}{SEED_MARK}{k}" if counts.get(name, 1) > 1 else name

    params = {**entry.params, "seed": int(entry.params.get("seed", 0)) + k}
    if isinstance(params.get("model_job"), str) and params["model_job"] in counts:
        params["model_job"] = follow(params["model_job"])
    return replace(entry, name=f"{entry.name}{SEED_MARK}{k}", params=params, after=tuple(follow(d) for d in entry.after), seeds=1)


def _resolve_models(where: str, entries: tuple[PlanEntry, ...], extra_initiatives: str) -> tuple[PlanEntry, ...]:
    """Give each entry that runs on a model the plan entry whose model it uses, by declaration.

    ``model_job`` may name an entry (it must also be in ``after``: it has to finish first) or an
    outside job id (checked against the ledger at admission). Without it, the model comes from the
    entries in ``after``: an entry that stores a model, or one that ran on a model (robustness
    tested the baseline's: augment after robustness improves that baseline). Exactly one source
    must remain; none or several is refused, naming the fix.
    """
    by_name: dict[str, PlanEntry] = {}
    resolved = []
    for entry in entries:
        spec = specs.get(entry.initiative, extra_initiatives)
        if spec.uses_model:
            entry = _with_model(where, entry, by_name, extra_initiatives)
        by_name[entry.name] = entry
        resolved.append(entry)
    return tuple(resolved)


def _with_model(where: str, entry: PlanEntry, by_name: dict[str, PlanEntry], extra_initiatives: str) -> PlanEntry:
    named = entry.params.get("model_job") or ""
    if named in by_name:
        source = by_name[named]
        if not specs.get(source.initiative, extra_initiatives).makes_model:
            raise InvalidInput(f"{where}: {entry.name!r} takes its model from {named!r}, a {source.initiative} entry that stores none")
        if named not in entry.after:
            raise InvalidInput(f"{where}: {entry.name!r} uses the model of {named!r}, so it must also run after it (add it to `after`)")
        return entry
    if named:
        return entry  # an outside job id: the ledger checks it at admission
    sources = sorted({s for s in (model_source(by_name[d], extra_initiatives) for d in entry.after) if s})
    if len(sources) == 1:
        return replace(entry, params={**entry.params, "model_job": sources[0]})
    if not sources:
        raise InvalidInput(
            f"{where}: {entry.name!r} ({entry.initiative}) runs on a model but no entry in its `after` stores one;"
            " add the model's entry (e.g. after: [baseline]) or set params.model_job"
        )
    raise InvalidInput(
        f"{where}: {entry.name!r} runs after several models ({', '.join(sources)}); say which with params.model_job"
    )


def model_source(entry: PlanEntry, extra_initiatives: str = "") -> Optional[str]:
    """The entry whose model ``entry`` stores or ran on, or None."""
    spec = specs.get(entry.initiative, extra_initiatives)
    if spec.makes_model:
        return entry.name
    return entry.params.get("model_job") or None if spec.uses_model else None


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
