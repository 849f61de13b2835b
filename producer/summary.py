"""Which initiative bought the most improvement per dollar: grouped by plan entry, ranked within a unit.

Every initiative declares the unit of its ``improvement`` (``specs.Unit``): F1 points, accuracy
points, or a speed ratio. Figures of different units are never ranked against each other. A group
is one plan entry (its seeds are replicates: ``base#seed0``, ``base#seed1`` … form the group
``base``), or one initiative for jobs submitted outside a plan. Each group shows:

- the improvement: the mean across seeds with a 95% t-interval; for a single run, the paired
  bootstrap interval the payload computed on the test set (``improvement.ci_low``/``ci_high``);
- beside it, the change in overall accuracy and macro-F1 on the same test set, so a targeted gain
  bought with losses elsewhere is visible, and flagged (``tradeoff``);
- per dollar: the mean improvement over what one run cost, failed runs' money included (the
  group's charges divided by its jobs).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import specs
from core.stats import Estimate, mean_ci
from models.views import ImprovementRow

SEED_MARK = "#seed"


@dataclass(frozen=True)
class GroupSummary:
    group: str  # the plan entry, or the initiative for jobs outside a plan
    initiative: str
    unit: Optional[specs.Unit]
    jobs: int
    succeeded: int
    charged_micros: int
    improvement: Optional[Estimate]
    accuracy_delta: Optional[Estimate]
    macro_f1_delta: Optional[Estimate]
    tradeoff: bool  # some run gained on its target while overall accuracy or macro-F1 fell

    @property
    def cost_per_run_micros(self) -> int:
        return self.charged_micros // max(1, self.jobs)

    @property
    def per_dollar(self) -> Optional[float]:
        if self.improvement is None or self.cost_per_run_micros == 0:
            return None
        return self.improvement.mean / (self.cost_per_run_micros / 1_000_000)


def group_of(row: ImprovementRow) -> str:
    """``plan:<plan>:<entry>#seed<k>`` -> ``<plan>:<entry>``; no plan key -> the initiative."""
    key = row.idempotency_key or ""
    if key.startswith("plan:"):
        return key[len("plan:"):].split(SEED_MARK, 1)[0]
    return row.initiative


def summarize(rows: list[ImprovementRow], extra_initiatives: str = "") -> list[GroupSummary]:
    """One summary per group, ranked within each unit by improvement per dollar (best first)."""
    groups: dict[str, list[ImprovementRow]] = {}
    for row in rows:
        groups.setdefault(group_of(row), []).append(row)
    out = [_summary(name, members, extra_initiatives) for name, members in groups.items()]
    return sorted(out, key=lambda g: (str(g.unit or "~"), g.per_dollar is None, -(g.per_dollar or 0), g.group))


def _summary(name: str, members: list[ImprovementRow], extra_initiatives: str) -> GroupSummary:
    initiative = members[0].initiative
    try:
        unit = specs.get(initiative, extra_initiatives).unit
    except Exception:  # noqa: BLE001 - an initiative no longer registered still shows its cost
        unit = None
    done = [m for m in members if m.status == "succeeded"]
    return GroupSummary(
        group=name, initiative=initiative, unit=unit, jobs=len(members), succeeded=len(done),
        charged_micros=sum(m.charged_micros for m in members),
        improvement=_improvement(done) if unit else None,
        accuracy_delta=_estimate(done, "overall.accuracy_delta"),
        macro_f1_delta=_estimate(done, "overall.macro_f1_delta"),
        tradeoff=any(m.metrics.get("tradeoff", 0) > 0 for m in done),
    )


def _improvement(done: list[ImprovementRow]) -> Optional[Estimate]:
    values = [m.metrics["improvement"] for m in done if "improvement" in m.metrics]
    if len(values) != 1:
        return mean_ci(values) if values else None
    # One run: the paired bootstrap interval on the test set, when the payload computed one.
    (only,) = [m for m in done if "improvement" in m.metrics]
    low, high = only.metrics.get("improvement.ci_low"), only.metrics.get("improvement.ci_high")
    return Estimate(values[0], 1, low, high)


def _estimate(done: list[ImprovementRow], name: str) -> Optional[Estimate]:
    values = [m.metrics[name] for m in done if name in m.metrics]
    return mean_ci(values) if values else None


def describe(estimate: Optional[Estimate], digits: int = 2) -> str:
    """``+1.23 ± 0.45 (n=3)``, ``+1.23 [0.40, 2.10]`` for a single run with a bootstrap interval, or ``+1.23``."""
    if estimate is None:
        return ""
    text = f"{estimate.mean:+.{digits}f}"
    if estimate.n > 1 and estimate.half_width is not None:
        return f"{text} ± {estimate.half_width:.{digits}f} (n={estimate.n})"
    if estimate.low is not None and estimate.high is not None:
        return f"{text} [{estimate.low:+.{digits}f}, {estimate.high:+.{digits}f}]"
    return text


def as_json(group: GroupSummary) -> dict:
    def est(e: Optional[Estimate]) -> Optional[dict]:
        return None if e is None else {"mean": e.mean, "n": e.n, "ci_low": e.low, "ci_high": e.high}

    return {
        "group": group.group, "initiative": group.initiative, "unit": group.unit.value if group.unit else None,
        "jobs": group.jobs, "succeeded": group.succeeded, "charged_micros": group.charged_micros,
        "cost_per_run_micros": group.cost_per_run_micros, "improvement": est(group.improvement),
        "overall_accuracy_delta": est(group.accuracy_delta), "overall_macro_f1_delta": est(group.macro_f1_delta),
        "tradeoff": group.tradeoff, "improvement_per_dollar": group.per_dollar,
    }

