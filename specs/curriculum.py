"""curriculum: a loss-based curriculum against uniform and random-curriculum controls at equal steps.

The parameters and their validation, free of torch: the producer checks them at admission and the
worker builds them again from the ledger row. The payload is ``worker.initiatives.curriculum``.
"""

from __future__ import annotations

from dataclasses import dataclass

from specs.training import check_schedule

ARMS = ("uniform", "curriculum", "random")
SAMPLERS = ("rank", "selective")


@dataclass(frozen=True)
class Params:
    dataset: str = "clinc150"
    variant: str = "full"  # clinc150 only: full, small, imbalanced or 10shot
    slice_column: str = "domain"
    model: str = ""  # local folder or hub id; empty: the pretrained MiniLM-L6
    steps: int = 0  # > 0: exactly this many steps per arm, no early stopping
    epochs: int = 40  # the cap when steps is 0, as baseline's
    batch_size: int = 32
    grad_accum: int = 1
    lr: float = 1e-4
    warmup_ratio: float = 0.1
    seed: int = 0
    max_length: int = 64
    checkpoint_every: int = 100
    s_max: float = 100.0  # selection pressure: the hardest row is this many times likelier than the easiest
    # selective (loss percentile ** beta, constant) beat uniform on imbalanced CLINC150, 3 seeds, interval
    # above 0; rank (annealed rank pressure) did not (docs/BENCHMARKS.md, "Curriculum, settled").
    sampler: str = "selective"
    beta: float = 2.0  # the selective sampler's exponent (0 is uniform)
    anneal: str = "linear"  # linear or cosine, in log(s), from s_max down to 1
    anneal_fraction: float = 0.5  # share of the steps after which sampling is uniform
    quantile_every: int = 10  # log the loss distribution every this many steps
    eval_every: int = 0  # score the validation split every this many steps; 0: as baseline
    patience: int = 3
    min_delta: float = 0.0
    target_accuracy: float = 0.8  # validation accuracy whose first crossing gives steps_to_target

    def __post_init__(self) -> None:
        check_schedule(self)
        if self.quantile_every < 1:
            raise ValueError("quantile_every must be at least 1")
        if self.s_max < 1:
            raise ValueError("s_max must be at least 1 (1 is uniform sampling)")
        if self.sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {', '.join(SAMPLERS)}")
        if not 0 <= self.beta <= 10:
            raise ValueError("beta must be between 0 and 10")
        if self.anneal not in ("linear", "cosine"):
            raise ValueError("anneal must be linear or cosine")
        if not 0 < self.anneal_fraction <= 1:
            raise ValueError("anneal_fraction must be in (0, 1]")
        if not 0 < self.target_accuracy <= 1:
            raise ValueError("target_accuracy must be in (0, 1]")
