"""baseline: fine-tune a classifier on a dataset and store it as the ``model`` artifact.

The parameters and their validation, free of torch: the producer checks them at admission and the
worker builds them again from the ledger row. The payload is ``worker.initiatives.baseline``.
"""

from __future__ import annotations

from dataclasses import dataclass

from specs.training import check_schedule


@dataclass(frozen=True)
class Params:
    dataset: str = "clinc150"  # clinc150, hf:NAME[:CONFIG], or a folder of train/val/test files
    variant: str = "full"  # clinc150 only: full, small, imbalanced or 10shot
    slice_column: str = "domain"  # or label: each class its own slice
    model: str = ""  # local folder or hub id; empty: the pretrained MiniLM-L6
    steps: int = 0  # > 0: exactly this many optimizer steps, no early stopping
    epochs: int = 40  # the cap; early stopping ends well before it (docs/BENCHMARKS.md, "ML answers")
    batch_size: int = 32
    grad_accum: int = 1
    # MiniLM is small; BERT-base's 2e-5 leaves its new 150-way head undertrained. On 10-shot CLINC150,
    # 2e-4 reaches the validation plateau of 1e-4 in half the epochs (bench/explore_defaults.py).
    lr: float = 2e-4
    warmup_ratio: float = 0.1  # of the planned steps, at most one epoch
    seed: int = 0
    max_length: int = 64  # CLINC150 queries are short; 64 word pieces cover all of them
    checkpoint_every: int = 100
    eval_every: int = 0  # steps between validations; 0: once per epoch (less often if val outnumbers train)
    patience: int = 3  # validations without a macro-F1 gain before stopping
    min_delta: float = 0.0
    latency_samples: int = 50

    def __post_init__(self) -> None:
        check_schedule(self)
        if self.latency_samples < 1:
            raise ValueError("latency_samples must be at least 1")
