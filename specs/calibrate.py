"""calibrate: a timed matmul and transformer forward pass that prices a worker.

The parameters and their validation, free of torch: the producer checks them at admission and the
worker builds them again from the ledger row. The payload is ``worker.initiatives.calibrate``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Params:
    seconds: float = 5.0  # wall time to spend, split between the two benchmarks
    matrix_size: int = 512
    batch_size: int = 32
    seq_len: int = 64
    d_model: int = 256
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.seconds <= 3600:
            raise ValueError("seconds must be in (0, 3600]")
        for name in ("matrix_size", "batch_size", "seq_len", "d_model"):
            if not 1 <= getattr(self, name) <= 16384:
                raise ValueError(f"{name} must be in [1, 16384]")
        if self.d_model % 4:
            raise ValueError("d_model must be a multiple of 4 (4 attention heads)")
