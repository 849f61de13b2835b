"""A loss-based curriculum that costs no extra forward passes.

``LossTable`` remembers each training row's latest loss and the step it was seen, filled from the
per-row losses of the batches the training loop computes anyway (cross-entropy with
``reduction='none'``): nothing ever re-scores the training set. ``CurriculumSampler`` draws each
batch by rank (Loshchilov & Hutter 2015, online batch selection): the row with the r-th highest loss
of N is drawn with probability proportional to ``exp(-log(s) * r / N)``, so the hardest row is
``s`` times likelier than the easiest. The pressure ``s`` anneals from ``s_max`` to 1 (uniform).

``sampler="selective"`` is the stronger variant, after Selective-Backprop (Jiang et al. 2019): a
row's probability is proportional to its loss percentile raised to ``beta``, held constant for the
whole run (no annealing), so easy rows keep being drawn, only less often. It reads the same table,
so it too costs no forward pass of its own.

Rows not yet seen rank above every seen row: an unknown loss is treated as a high one, so the first
steps sweep the corpus before they focus. Ages (steps since a loss was measured) are logged beside the
quantiles because the losses go stale as the model moves.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

import torch.nn.functional as F

ANNEALS = ("linear", "cosine")


class LossTable:
    """The latest known loss and the step it was measured at, per training row."""

    def __init__(self, size: int) -> None:
        import numpy as np

        self.losses = np.full(size, np.inf)  # inf: never seen, ranks as the highest loss
        self.seen_at = np.full(size, -1)
        self.clock = 1  # the step whose losses arrive next; ``tick`` moves it after each step

    def observe(self, indices: Sequence[int], losses: Sequence[float]) -> None:
        self.losses[list(indices)] = list(losses)
        self.seen_at[list(indices)] = self.clock

    def tick(self, step: int) -> None:
        self.clock = step + 1

    def save(self, path: Path) -> None:
        """Write the table (NumPy arrays, no pickle) under a temporary name, then rename: never half a file."""
        import numpy as np

        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial")
        with partial.open("wb") as handle:
            np.savez(handle, losses=self.losses, seen_at=self.seen_at, clock=np.array(self.clock))
        partial.replace(path)

    @classmethod
    def resume(cls, path: Optional[Path], size: int) -> LossTable:
        """The table a previous attempt saved at ``path``, or a fresh one (every row unseen)."""
        import numpy as np

        table = cls(size)
        if path is not None and path.is_file():
            with np.load(path, allow_pickle=False) as saved:
                if len(saved["losses"]) == size:
                    table.losses, table.seen_at, table.clock = saved["losses"], saved["seen_at"], int(saved["clock"])
        return table

    def summary(self) -> dict[str, float]:
        """Quantiles and mean of the known losses, their mean age in steps, and the unseen share."""
        import numpy as np

        known = np.isfinite(self.losses)
        if not known.any():
            return {"unseen": 1.0}
        values = self.losses[known]
        p10, p50, p90 = np.quantile(values, [0.1, 0.5, 0.9])
        age = float(np.mean(self.clock - 1 - self.seen_at[known]))
        return {"p10": p10, "p50": p50, "p90": p90, "mean": float(values.mean()), "age": age,
                "unseen": float(1 - known.mean())}


def per_row_loss(table: LossTable) -> Any:
    """A ``loss_fn`` for ``train``: mean cross-entropy, recording each row's own loss on the way."""
    def loss_fn(model: Any, batch: dict[str, Any], labels: Any, indices: Sequence[int]) -> Any:
        losses = F.cross_entropy(model(**batch).logits.float(), labels, reduction="none")
        table.observe(indices, losses.detach().cpu().tolist())  # the values the backward pass uses anyway
        return losses.mean()

    return loss_fn


def pressure(step: int, *, steps: int, s_max: float, anneal: str, anneal_fraction: float) -> float:
    """Selection pressure at ``step`` (1-based): ``s_max`` at the start, 1 once annealing ends.

    Interpolated in log space: probabilities depend on ``log(s)``, so a linear schedule in ``log(s)``
    relaxes the preference for high-loss rows at an even rate.
    """
    horizon = max(1.0, anneal_fraction * steps)
    done = min(1.0, (step - 1) / horizon)
    weight = 1 - done if anneal == "linear" else 0.5 * (1 + math.cos(math.pi * done))
    return math.exp(math.log(s_max) * weight)


def rank_probabilities(losses: Any, s: float, generator: Any) -> Any:
    """Selection probability per row: ``exp(-log(s) * rank / N)`` normalized, rank 0 = highest loss.

    Ties (every unseen row, for instance) are broken at random so no row is favoured by its index.
    """
    import numpy as np

    n = len(losses)
    jitter = generator.permutation(n)
    order = np.lexsort((jitter, -losses))  # highest loss first, random among equals
    ranks = np.empty(n)
    ranks[order] = np.arange(n)
    weights = np.exp(-math.log(s) * ranks / n)
    return weights / weights.sum()


def percentile_probabilities(losses: Any, beta: float, generator: Any) -> Any:
    """Selective-Backprop's rule: probability proportional to ``percentile ** beta``, where the
    highest loss has percentile 1 and the lowest ``1/N`` (never 0: every row stays drawable)."""
    import numpy as np

    n = len(losses)
    order = np.lexsort((generator.permutation(n), -losses))
    percentile = np.empty(n)
    percentile[order] = (n - np.arange(n)) / n
    weights = percentile**beta
    return weights / weights.sum()


class CurriculumSampler:
    """Batches drawn by loss rank under an annealed pressure; a ``batches`` hook for ``train``.

    With ``shuffled=True`` it is the random-curriculum control: the same schedule and the same skew,
    but each row is ranked by another row's loss (a fixed random permutation), so the favoured rows
    are unrelated to difficulty.
    """

    def __init__(self, table: LossTable, *, batch_size: int, steps: int, grad_accum: int = 1, s_max: float = 100.0,
                 anneal: str = "linear", anneal_fraction: float = 0.5, seed: int = 0, shuffled: bool = False,
                 sampler: str = "rank", beta: float = 2.0) -> None:
        import numpy as np

        self.table, self.batch_size, self.grad_accum = table, min(batch_size, len(table.losses)), grad_accum
        self.schedule = {"steps": steps, "s_max": s_max, "anneal": anneal, "anneal_fraction": anneal_fraction}
        self.seed, self.kind, self.beta = seed, sampler, beta
        self.permutation = np.random.default_rng(seed + 7919).permutation(len(table.losses)) if shuffled else None

    def probabilities(self, step: int) -> Any:
        """The selection probability of every row at ``step``, from the losses known now."""
        import numpy as np

        losses = self.table.losses if self.permutation is None else self.table.losses[self.permutation]
        generator = np.random.default_rng((self.seed, step))
        if self.kind == "selective":
            return percentile_probabilities(losses, self.beta, generator)
        return rank_probabilities(losses, pressure(step, **self.schedule), generator)

    def indices(self, micro: int) -> list[int]:
        """Rows of micro-batch ``micro``: drawn without replacement within the batch."""
        import numpy as np

        step = micro // self.grad_accum + 1
        p = self.probabilities(step)
        generator = np.random.default_rng((self.seed, micro, 1))
        return generator.choice(len(p), size=self.batch_size, replace=False, p=p).tolist()
