"""Where a training job's wall time goes: named phases that never overlap, logged as metrics.

A payload opens ``recorded(ctx)`` around its whole ``run`` and wraps each part in
``phases("load")``, ``phases("evaluate")`` and so on; the training loop adds ``tokenize``,
``train`` and ``checkpoint`` inside. A phase entered inside another pauses the outer one, so the
phases partition the time they cover and their sum never exceeds the payload's wall time.
At the end (a budget stop or a failure included) the job logs ``phase.<name>.seconds`` for every
phase, ``payload.seconds`` (the payload's whole run, phases or not) and ``train.samples_per_s``:
training rows per second of ``train`` time, the figure a GPU worker's price is judged by.

On CUDA the GPU runs behind the Python that queues its work, so a phase switch first waits for the
device: otherwise a validation pass would be charged the training kernels still in flight.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator
from typing import Any

from core.phases import PHASES, SAMPLES_PER_S, WALL, phase_metric


class Phases:
    """Seconds per phase and training rows seen; ``phases(name)`` times a block."""

    def __init__(self) -> None:
        self.seconds = dict.fromkeys(PHASES, 0.0)
        self.samples = 0  # training rows through forward and backward, over every run of the job
        self._open: list[list[Any]] = []  # [name, since] from the outermost phase to the innermost

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        if name not in self.seconds:
            raise ValueError(f"unknown phase {name!r}; known: {', '.join(PHASES)}")
        self._switch()
        self._open.append([name, time.perf_counter()])
        try:
            yield
        finally:
            self._switch()
            self._open.pop()
            if self._open:
                self._open[-1][1] = time.perf_counter()  # the outer phase resumes now, not where it paused

    def _switch(self) -> None:
        """Charge the innermost open phase up to now, and restart its clock."""
        _wait_for_device()
        if self._open:
            now = time.perf_counter()
            self.seconds[self._open[-1][0]] += now - self._open[-1][1]
            self._open[-1][1] = now

    def samples_per_s(self) -> float:
        return self.samples / self.seconds["train"] if self.seconds["train"] > 0 else 0.0

    def log(self, ctx: Any, wall: float) -> None:
        for name, seconds in self.seconds.items():
            ctx.log_metric(phase_metric(name), seconds)
        ctx.log_metric(WALL, wall)
        ctx.log_metric(SAMPLES_PER_S, self.samples_per_s())


@contextlib.contextmanager
def recorded(ctx: Any) -> Iterator[Phases]:
    """A ``Phases`` for one payload run, logged to ``ctx`` when the run ends, however it ends."""
    phases, start = Phases(), time.perf_counter()
    try:
        yield phases
    finally:
        phases.log(ctx, time.perf_counter() - start)


def _wait_for_device() -> None:
    torch = sys.modules.get("torch")  # never import torch just to find there is nothing to wait for
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()
