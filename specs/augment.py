"""augment: augment a model's weakest slices, retrain, and compare with an equal-compute control.

The parameters and their validation, free of torch: the producer checks them at admission and the
worker builds them again from the ledger row. The payload is ``worker.initiatives.augment``.
"""

from __future__ import annotations

from dataclasses import dataclass

from specs.training import check_schedule

AUGMENTERS = ("char_noise", "word_noise", "synonym", "style", "contextual")


@dataclass(frozen=True)
class Params:
    model_job: str = ""  # the job whose model artifact to improve; empty: resolved at admission from `after:`
    k: int = 2  # how many of the weakest slices to target
    variants: int = 2  # per training text and augmenter
    augmenters: tuple[str, ...] = ("char_noise", "word_noise", "synonym", "style")
    mlm_path: str = ""  # a masked LM folder or hub id; given, contextual substitution joins the augmenters
    choose: int = 0  # > 0: keep only the best this-many augmenters, chosen on validation by short trials
    trial_steps: int = 0  # steps of each choice trial; 0: one epoch of the original training data
    steps: int = 0  # > 0: exactly this many steps per arm, no early stopping
    # True: the augmented arm draws each targeted slice's rows (original and variants) only as often as
    # the control draws its originals, so the variants replace draws instead of shifting the class prior.
    # False adds them as extra draws, which cost targeted F1 in every seed measured (bench/augment_study.py).
    balance: bool = True
    epochs: int = 20  # the cap, in epochs of the augmented data, shared by both arms
    batch_size: int = 32
    grad_accum: int = 1
    lr: float = 5e-5  # lower than baseline's: this continues from a fine-tuned model
    warmup_ratio: float = 0.1
    seed: int = 0
    max_length: int = 64
    checkpoint_every: int = 100
    eval_every: int = 0  # 0: once per epoch of the original data, in both arms
    patience: int = 3
    min_delta: float = 0.0

    def __post_init__(self) -> None:
        unknown = sorted(set(self.augmenters) - set(AUGMENTERS))
        if unknown or not self.augmenters:
            raise ValueError(f"unknown augmenters {unknown}; choose from {', '.join(AUGMENTERS)}")
        if "contextual" in self.augmenters and not self.mlm_path:
            raise ValueError("the contextual augmenter needs mlm_path")
        if self.choose < 0 or self.trial_steps < 0:
            raise ValueError("choose and trial_steps must be 0 or more")
        for name in ("k", "variants"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        check_schedule(self)
