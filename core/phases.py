"""The phase metrics a training job logs about its wall time, and how the producer reads them back.

A payload (``worker.ml.phases``) logs ``phase.<name>.seconds`` for each of ``PHASES``, which never
overlap, ``payload.seconds`` for its whole run, and ``train.samples_per_s``: training rows per
second of ``train`` time. Worker and producer share these names through this torch-free module.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Optional

PHASES = ("load", "tokenize", "train", "evaluate", "save", "checkpoint")
WALL = "payload.seconds"
SAMPLES_PER_S = "train.samples_per_s"


def phase_metric(name: str) -> str:
    return f"phase.{name}.seconds"


@dataclass(frozen=True)
class TimeSplit:
    """One attempt's wall time by phase."""

    seconds: dict[str, float]  # by phase, every one of PHASES (0 where the job had none)
    wall: float  # the payload's whole run
    samples_per_s: float

    @property
    def other(self) -> float:
        """Wall time in no phase (the payload's own bookkeeping between them)."""
        return max(0.0, self.wall - sum(self.seconds.values()))

    @property
    def train_share(self) -> float:
        return self.seconds["train"] / self.wall if self.wall > 0 else 0.0


def time_split(values: Mapping[str, float]) -> Optional[TimeSplit]:
    """The split from one attempt's scalar metrics by name; None when it logged no phases."""
    if WALL not in values:
        return None
    seconds = {name: values.get(phase_metric(name), 0.0) for name in PHASES}
    return TimeSplit(seconds, values[WALL], values.get(SAMPLES_PER_S, 0.0))
