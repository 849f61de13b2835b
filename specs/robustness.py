"""robustness: evaluate a stored model under text perturbations and rank its weakest slices.

The parameters and their validation, free of torch: the producer checks them at admission and the
worker builds them again from the ledger row. The payload is ``worker.initiatives.robustness``.
"""

from __future__ import annotations

from dataclasses import dataclass

PERTURBATIONS = (
    "keyboard", "ocr", "random_char", "word_swap", "word_delete", "spelling", "synonym", "casing", "punctuation",
)


@dataclass(frozen=True)
class Params:
    model_job: str = ""  # the job whose model artifact to test; empty: resolved at admission from `after:`
    perturbations: tuple[str, ...] = PERTURBATIONS
    max_rows: int = 0  # 0: the whole test split; else a seeded sample of this many rows
    failures_per_perturbation: int = 50
    seed: int = 0
    max_length: int = 64

    def __post_init__(self) -> None:
        unknown = sorted(set(self.perturbations) - set(PERTURBATIONS))
        if unknown or not self.perturbations:
            raise ValueError(f"unknown perturbations {unknown}; choose from {', '.join(PERTURBATIONS)}")
        if self.max_rows < 0 or self.failures_per_perturbation < 0:
            raise ValueError("max_rows and failures_per_perturbation must be at least 0")
