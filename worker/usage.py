"""What a settled attempt tells the cost forecasts: the device it ran on and the training it did."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Optional

from worker.context import MetricRow


def loaded_device() -> Optional[str]:
    """``cuda:<name>`` or ``cpu`` from the torch this process has loaded; None when it has loaded none.

    It never imports torch: called after a payload, it costs nothing the payload did not pay, and
    a payload that did not load torch ran on the CPU. (Importing it earlier, before the claim, would
    eat into the job's time limit without being metered; and in the worker's main process,
    initialising CUDA would break CUDA in every pool process forked from it.)
    """
    torch = sys.modules.get("torch")
    if torch is None:
        return None
    if torch.cuda.is_available():
        return f"cuda:{torch.cuda.get_device_name(torch.cuda.current_device())}"
    return "cpu"


def work_steps(metrics: Iterable[MetricRow]) -> Optional[int]:
    """The optimizer steps the attempt's training runs reached (the longest run), or None.

    A run's ``<run>.steps`` when it logged one, else the last step of its ``<run>.loss`` curve. A
    resumed attempt's steps continue the earlier attempts' numbering, so this is the job's total.
    """
    logged: dict[str, float] = {}
    curve_end: dict[str, int] = {}
    for m in metrics:
        run, _, name = m.name.rpartition(".")
        if not run or m.slice is not None:
            continue
        if name == "steps" and m.step is None:
            logged[run] = m.value
        elif name == "loss" and m.step is not None:
            curve_end[run] = max(curve_end.get(run, 0), m.step)
    steps = {**curve_end, **logged}
    return int(max(steps.values())) if steps else None
