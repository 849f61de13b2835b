"""Confidence intervals for the numbers users act on: a mean across seeds, with Student's t.

Pure Python (the producer imports it): a table of two-sided 95% t quantiles for small samples, the
normal quantile beyond it.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Optional

# t_{0.975, df} for df = 1..30 (two-sided 95%).
_T975 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)
_Z975 = 1.960


def t975(df: int) -> float:
    """The two-sided 95% quantile of Student's t with ``df`` degrees of freedom."""
    if df < 1:
        raise ValueError("a t interval needs at least two values")
    return _T975[df - 1] if df <= len(_T975) else _Z975


@dataclass(frozen=True)
class Estimate:
    """A mean with its 95% interval; ``low``/``high`` are None for a single value."""

    mean: float
    n: int
    low: Optional[float] = None
    high: Optional[float] = None

    @property
    def half_width(self) -> Optional[float]:
        return None if self.low is None or self.high is None else (self.high - self.low) / 2

    def excludes_zero(self) -> bool:
        """True when the interval lies wholly above or below 0."""
        return self.low is not None and self.high is not None and (self.low > 0 or self.high < 0)


def mean_ci(values: Sequence[float]) -> Estimate:
    """Mean and 95% t-interval of independent replicates (seeds); no interval for one value."""
    if not values:
        raise ValueError("no values")
    mean = statistics.fmean(values)
    if len(values) == 1:
        return Estimate(mean, 1)
    half = t975(len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))
    return Estimate(mean, len(values), mean - half, mean + half)
