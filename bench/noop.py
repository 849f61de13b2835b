"""An initiative that does nothing, so the queue benchmark measures budgetq's own overhead.

Registered only for the benchmark, through ``BUDGETQ_INITIATIVES=noop=bench.noop``.
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class Params:
    pass


def run(params: Params, ctx) -> None:
    return None
