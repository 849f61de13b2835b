"""baseline: fine-tune a classifier on a dataset and store it as the ``model`` artifact.

The parameters and their validation, free of torch: the producer checks them at admission and the
worker builds them again from the ledger row. The payload is ``worker.initiatives.baseline``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Params:
    dataset: str = "clinc150"  # clinc150, hf:NAME[:CONFIG], or a folder of train/val/test files
    variant: str = "full"  # clinc150 only: full, small or imbalanced
    slice_column: str = "domain"
    model: str = ""  # local folder or hub id; empty: the pretrained MiniLM-L6
    steps: int = 600
    batch_size: int = 32
    grad_accum: int = 1
    lr: float = 1e-4  # MiniLM is small; BERT-base's 2e-5 leaves its new 150-way head undertrained
    warmup_ratio: float = 0.1
    seed: int = 0
    max_length: int = 64  # CLINC150 queries are short; 64 word pieces cover all of them
    checkpoint_every: int = 100
    latency_samples: int = 50

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "grad_accum", "checkpoint_every", "latency_samples", "max_length"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError("warmup_ratio must be in [0, 1)")
