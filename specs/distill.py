"""distill: a smaller student cut from a stored model, trained on its soft targets.

The parameters and their validation, free of torch: the producer checks them at admission and the
worker builds them again from the ledger row. The payload is ``worker.initiatives.distill``.
"""

from __future__ import annotations

from dataclasses import dataclass

from specs.training import check_schedule


@dataclass(frozen=True)
class Params:
    model_job: str = ""  # the job whose model artifact teaches; empty: resolved at admission from `after:`
    layers: int = 2  # student encoder layers; MiniLM-L6's teacher has 6
    prune_vocab: bool = True  # keep only the word pieces the training split uses
    quantize: bool = False  # also measure an int8 dynamically quantized student (CPU serving)
    temperature: float = 2.0
    alpha: float = 0.5  # weight of the hard-label cross-entropy; 1 - alpha goes to the soft targets
    sample_fraction: float = 1.0  # stratified share of the training split the student trains on
    steps: int = 0  # > 0: exactly this many steps, no early stopping
    epochs: int = 40  # the cap when steps is 0, as baseline's
    batch_size: int = 32
    lr: float = 2e-4  # the student's cut-down layers move further than a fine-tune: a high rate
    warmup_ratio: float = 0.1
    seed: int = 0
    max_length: int = 64
    checkpoint_every: int = 100
    eval_every: int = 0  # 0: as baseline
    patience: int = 3
    min_delta: float = 0.0
    latency_samples: int = 50
    speed_rounds: int = 3  # teacher and student timed in alternation; each keeps its best round

    def __post_init__(self) -> None:
        check_schedule(self)
        for name in ("layers", "latency_samples", "speed_rounds"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.temperature <= 0 or not 0 <= self.alpha <= 1:
            raise ValueError("temperature must be positive and alpha in [0, 1]")
        if not 0 < self.sample_fraction <= 1:
            raise ValueError("sample_fraction must be in (0, 1]")
