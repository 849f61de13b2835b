"""Cost forecasts for plan entries, from what the same initiative cost before on the same device and rate.

A job's work size is the product of its size parameters (optimizer steps, batch size, gradient
accumulation, test rows, sample fraction, seconds, prompt rounds and candidates): the rows it
trains on or scores, roughly. A past job that recorded the steps it actually reached (early
stopping, a budget stop) is sized by those. With two or more sizes in the history the cost is fitted
as a fixed part plus a part per unit of work (least squares, both parts at least zero); with one
size it is scaled in proportion. Low and high are the expected cost times the smallest and largest
ratio of a past job's real cost to what the model says it should have cost: the spread the history
itself shows. No history on this device and rate: the forecast is unknown.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Optional

from models.history import CostPoint

SIZE_PARAMS = ("steps", "batch_size", "grad_accum", "max_rows", "sample_fraction", "seconds", "rounds", "candidates_per_round")


@dataclass(frozen=True)
class Forecast:
    low_micros: int
    expected_micros: int
    high_micros: int
    jobs: int  # past jobs it stands on
    method: str  # "fit" (fixed + per unit of work) or "scaled" (in proportion)


def work_size(params: dict[str, Any], keys: Sequence[str], work_steps: Optional[int] = None) -> Optional[float]:
    """The product of ``params[k]`` over ``keys``; None when one of them is missing or not positive."""
    size = 1.0
    for key in keys:
        value = work_steps if key == "steps" and work_steps is not None else params.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            return None
        size *= value
    return size


def forecast(params: dict[str, Any], history: Sequence[CostPoint]) -> Optional[Forecast]:
    """The forecast for a job with ``params`` from ``history`` (same initiative, device, rate), or None."""
    # Scale only by the size parameters this job sets: a `max_rows` of 0 means "all rows", no size.
    keys = [k for k in SIZE_PARAMS if work_size(params, [k]) is not None]
    target = work_size(params, keys)
    points = [(size, p.charged_micros) for p in history if (size := work_size(p.params, keys, p.work_steps)) is not None]
    if target is None or not points:
        return None
    fitted = _fit(points)
    if fitted is None:  # one size: each past job scaled in proportion; the middle one is expected
        predictions = [cost * target / size for size, cost in points]
        return Forecast(round(min(predictions)), round(statistics.median(predictions)), round(max(predictions)),
                        len(points), "scaled")
    fixed, per_unit = fitted
    expected = fixed + per_unit * target
    ratios = [cost / (fixed + per_unit * size) if fixed + per_unit * size else 1.0 for size, cost in points]
    return Forecast(round(expected * min(ratios)), round(expected), round(expected * max(ratios)), len(points), "fit")


def _fit(points: list[tuple[float, int]]) -> Optional[tuple[float, float]]:
    """Least-squares ``cost = fixed + per_unit * size`` with both parts >= 0; None with fewer than two sizes."""
    sizes = [x for x, _ in points]
    if len(set(sizes)) < 2:
        return None
    mean_x, mean_y = statistics.fmean(sizes), statistics.fmean(c for _, c in points)
    sxx = sum((x - mean_x) ** 2 for x in sizes)
    per_unit = max(0.0, sum((x - mean_x) * (c - mean_y) for x, c in points) / sxx)
    fixed = mean_y - per_unit * mean_x
    if fixed < 0:  # through the origin instead: no job costs less than nothing
        fixed, per_unit = 0.0, sum(x * c for x, c in points) / sum(x * x for x in sizes)
    return fixed, per_unit



@dataclass(frozen=True)
class PlanForecast:
    """Each entry's forecast (None: unknown), the device and rate they assume, and the plan's worst case."""

    device: Optional[str]
    rate_micros_per_hour: Optional[int]
    entries: dict[str, Optional[Forecast]]
    worst_case_micros: int  # every entry spending its whole cap
    left_micros: int

    @property
    def expected_micros(self) -> int:
        return sum(f.expected_micros for f in self.entries.values() if f is not None)

    @property
    def unknown(self) -> int:
        return sum(f is None for f in self.entries.values())


def plan_forecast(store: Any, plan: Any, *, device: Optional[str] = None, rate_micros_per_hour: Optional[int] = None) -> PlanForecast:
    """Forecast every entry of ``plan`` on ``device`` at ``rate`` (default: where jobs run now)."""
    from core.errors import NotFound
    from models import history, queries

    with store.session() as s:
        fleet = history.fleet_rate(s)
        device = device or (fleet[0] if fleet else None)
        rate = rate_micros_per_hour if rate_micros_per_hour is not None else (fleet[1] if fleet else None)
        entries: dict[str, Optional[Forecast]] = {}
        for entry in plan.entries:
            past = [] if device is None or rate is None else history.cost_history(
                s, initiative=entry.initiative, device=device, rate_micros_per_hour=rate)
            entries[entry.name] = forecast(entry.params, past)
        try:
            left = queries.get_budget(s, name=plan.budget).left_micros
        except NotFound:
            if plan.total_micros is None:
                raise
            left = plan.total_micros
    worst = sum(e.estimate_micros for e in plan.entries)
    return PlanForecast(device, rate, entries, worst, left)
