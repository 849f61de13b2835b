"""Validation of the training fields that baseline, augment, curriculum and distill share.

``steps > 0`` trains exactly that many optimizer steps; ``steps = 0`` trains up to ``epochs`` and stops
early on a validation plateau (``worker.ml.train``).
"""

from __future__ import annotations

from typing import Any


def check_schedule(params: Any) -> None:
    """Validate the training fields an initiative's ``Params`` shares with ``TrainConfig`` (ValueError)."""
    for name in ("epochs", "batch_size", "grad_accum", "checkpoint_every", "patience", "max_length"):
        if getattr(params, name, 1) < 1:
            raise ValueError(f"{name} must be at least 1")
    for name in ("steps", "eval_every", "min_delta"):
        if getattr(params, name, 0) < 0:
            raise ValueError(f"{name} must not be negative ({name}=0: {_ZERO_MEANS[name]})")
    if not 0 <= getattr(params, "warmup_ratio", 0) < 1:
        raise ValueError("warmup_ratio must be in [0, 1)")


_ZERO_MEANS = {"steps": "train up to epochs with early stopping", "eval_every": "validate once per epoch",
               "min_delta": "any gain counts"}
