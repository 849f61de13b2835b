"""A test initiative that never checks ``should_stop()``: only the Celery time limit stops it."""

import time
from dataclasses import dataclass


@dataclass(frozen=True)
class Params:
    seconds: float = 60.0


def run(params: Params, ctx) -> None:
    deadline = time.monotonic() + params.seconds
    while time.monotonic() < deadline:
        time.sleep(0.05)
    ctx.log_metric("finished", 1.0)
