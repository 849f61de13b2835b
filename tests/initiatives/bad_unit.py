"""A module that looks like an initiative but declares a unit budgetq does not know."""

from dataclasses import dataclass

UNIT = "furlongs"


@dataclass(frozen=True)
class Params:
    seconds: float = 1.0


def run(params: Params, ctx) -> None:
    ctx.log_metric("finished", 1.0)
