"""distill: a smaller student cut from a stored model, trained on the teacher's outputs and internals.

The parameters and their validation, free of torch: the producer checks them at admission and the
worker builds them again from the ledger row. The payload is ``worker.initiatives.distill``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from specs.training import check_schedule

LAYER_MAPS = ("uniform", "ends", "bottom")  # which teacher layers the student's copy (worker.initiatives.distill.student.teacher_layers)
ATTENTION_LAYERS = ("all", "last")  # attention/value relations on every student layer, or the last only (MiniLM)


@dataclass(frozen=True)
class Params:
    model_job: str = ""  # the job whose model artifact teaches; empty: resolved at admission from `after:`
    layers: int = 3  # student encoder layers; MiniLM-L6's teacher has 6
    layer_map: str = "uniform"  # uniform (evenly spaced, ending with the last), ends (first and last kept), bottom
    prune_vocab: bool = True  # keep only the word pieces the training split uses
    quantize: bool = False  # also measure an int8 student through ONNX Runtime (CPU serving; not stored)
    temperature: float = 2.0
    alpha: float = 0.5  # weight of the hard-label cross-entropy; 1 - alpha goes to the soft targets
    # Intermediate targets, each added on top of the logit terms; 0 turns one off (and its work).
    hidden_weight: float = 1.0  # MSE between the student's hidden states and the teacher's mapped layers
    attention_weight: float = 1.0  # KL between attention probability maps, per head
    value_weight: float = 0.0  # KL between MiniLM's value relations
    attention_layers: str = "all"  # all: every student layer vs its mapped teacher layer; last: the last only
    # 30% x 2 epochs kept 96.4% of a MiniLM teacher's validation accuracy with 3 layers, 10% x 1 93.9%,
    # all the data x 2 98.3% (docs/BENCHMARKS.md, "Distillation").
    sample_fraction: float = 0.3  # stratified share of the training split
    steps: int = 0  # > 0: exactly this many steps, no early stopping
    epochs: int = 2  # the cap in passes over the sample when steps is 0; early stopping may end it sooner
    batch_size: int = 32
    lr: float = 2e-4  # a short run: a high rate, as baseline's for MiniLM
    warmup_ratio: float = 0.1
    seed: int = 0
    max_length: int = 64
    checkpoint_every: int = 50
    eval_every: int = 0  # 0: as baseline
    patience: int = 3
    min_delta: float = 0.0
    serving_batch: int = 64  # the batch throughput (and so improvement) is measured at; latency is at batch 1
    latency_samples: int = 50
    speed_rounds: int = 3  # teacher and student timed in alternation; each keeps its best round

    def __post_init__(self) -> None:
        check_schedule(self)
        for name in ("layers", "serving_batch", "latency_samples", "speed_rounds"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if not self.temperature > 0 or not 0 <= self.alpha <= 1:
            raise ValueError("temperature must be positive and alpha in [0, 1]")
        for name in ("hidden_weight", "attention_weight", "value_weight"):
            weight = getattr(self, name)
            if not math.isfinite(weight) or weight < 0:
                raise ValueError(f"{name} must be a finite number >= 0 (0 turns that loss off)")
        if not 0 < self.sample_fraction <= 1 or not 0 <= self.warmup_ratio < 1:
            raise ValueError("sample_fraction must be in (0, 1] and warmup_ratio in [0, 1)")
        if self.layer_map not in LAYER_MAPS:
            raise ValueError(f"layer_map must be one of {', '.join(LAYER_MAPS)}")
        if self.attention_layers not in ATTENTION_LAYERS:
            raise ValueError(f"attention_layers must be one of {', '.join(ATTENTION_LAYERS)}")
