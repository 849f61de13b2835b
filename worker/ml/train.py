"""The fine-tuning loop: plain torch, resumable, stoppable between steps.

AdamW with linear warmup then linear decay; gradient accumulation; bf16/fp16 autocast on CUDA when
a GPU is present. Every ``checkpoint_every`` optimizer steps the full state goes to
``checkpoint_dir/<run>/``; a new attempt resumes from the newest one at the same step with the same
data order, so the loss curve continues where the preempted attempt left it.
"""

from __future__ import annotations

import contextlib
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.errors import BudgetStop
from worker.ml.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from worker.ml.modeling import encode, pick_device


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 300  # optimizer steps
    batch_size: int = 32
    grad_accum: int = 1  # micro-batches per optimizer step
    lr: float = 5e-5
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    seed: int = 0
    max_length: int = 64
    checkpoint_every: int = 50


@dataclass
class TrainResult:
    step: int
    resumed_from: int  # 0 when this attempt started fresh
    losses: list[float] = field(default_factory=list)  # this attempt's per-step losses


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (every device)."""
    import random

    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def train(model: Any, tokenizer: Any, texts: Sequence[str], label_ids: Sequence[int], cfg: TrainConfig, ctx: Any, *,
          run: str = "train", batches: Any = None, loss_fn: Callable[..., Any] | None = None,
          on_step: Callable[[int], None] | None = None) -> TrainResult:
    """Fine-tune ``model`` in place for ``cfg.steps`` optimizer steps, resuming from the latest checkpoint.

    Logs ``<run>.loss`` and ``<run>.lr`` per step. Raises ``BudgetStop`` after checkpointing when
    ``ctx.should_stop()`` turns true. Optional hooks (none given: plain fine-tuning):
    ``batches`` replaces the seeded shuffle with any object whose ``indices(micro)`` names the rows of
    micro-batch ``micro``; ``loss_fn(model, batch, labels, indices) -> loss`` replaces the model's mean
    cross-entropy and runs the forward pass itself, so it can ask for what it needs (per-row logits,
    hidden states, another model's outputs for the same rows); ``on_step(step)`` runs after each step.
    """
    seed_everything(cfg.seed)
    loop = _Loop(model, tokenizer, texts, label_ids, cfg, Path(ctx.checkpoint_dir) / run, batches, loss_fn)
    result = TrainResult(step=loop.saved_step, resumed_from=loop.saved_step)
    model.train()
    with _progress(cfg.steps, result.step, run) as advance:
        for step in range(result.step + 1, cfg.steps + 1):
            if ctx.should_stop():
                loop.stop(result.step)
            lr = loop.scheduler.get_last_lr()[0]  # the rate this step uses; the scheduler moves on after it
            loss = loop.optimizer_step(step)
            result.losses.append(loss)
            result.step = step
            ctx.log_metric(f"{run}.loss", loss, step=step)
            ctx.log_metric(f"{run}.lr", lr, step=step)
            if step % cfg.checkpoint_every == 0 or step == cfg.steps:
                loop.checkpoint(step)
            if on_step is not None:
                on_step(step)
            advance()
    model.eval()
    return result


class _Loop:
    """One training run's state: model, optimizer, schedule, data order, and its checkpoint folder."""

    def __init__(self, model, tokenizer, texts, label_ids, cfg: TrainConfig, folder: Path, batches=None, loss_fn=None) -> None:
        import torch

        self.model, self.tokenizer, self.texts, self.cfg, self.folder = model, tokenizer, texts, cfg, folder
        self.device = pick_device()
        model.to(self.device)
        self.labels = torch.tensor(list(label_ids))
        self.batches = batches if batches is not None else _Batches(len(texts), cfg.batch_size, cfg.seed)
        self.loss_fn = loss_fn
        self.optimizer, self.scheduler, self.scaler = _optimizer(model, cfg, self.device)
        latest = latest_checkpoint(folder)
        self.saved_step = load_checkpoint(latest, **self._state()) if latest else 0

    def _state(self) -> dict[str, Any]:
        return dict(model=self.model, optimizer=self.optimizer, scheduler=self.scheduler, scaler=self.scaler)

    def checkpoint(self, step: int) -> None:
        save_checkpoint(self.folder, step, **self._state())
        self.saved_step = step

    def stop(self, step: int) -> None:
        # Checkpoint the progress since the last periodic save, so the next attempt resumes right here.
        if step > self.saved_step:
            self.checkpoint(step)
        raise BudgetStop(f"stopped after step {step}; checkpoint in {self.folder}")

    def optimizer_step(self, step: int) -> float:
        """One optimizer step over ``grad_accum`` micro-batches; returns the mean loss."""
        import torch

        cfg = self.cfg
        total = 0.0
        for j in range(cfg.grad_accum):
            indices = self.batches.indices((step - 1) * cfg.grad_accum + j)
            batch = encode(self.tokenizer, [self.texts[i] for i in indices], max_length=cfg.max_length, device=self.device)
            with _autocast(self.device):
                loss = self._loss(batch, self.labels[indices].to(self.device), indices) / cfg.grad_accum
            (self.scaler.scale(loss) if self.scaler else loss).backward()
            total += loss.item()  # a sync point per micro-batch; the loss curve needs the value anyway
        if self.scaler:
            self.scaler.unscale_(self.optimizer)  # clip the true gradients, not the scaled ones
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        if self.scaler:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return total

    def _loss(self, batch: dict[str, Any], labels: Any, indices: list[int]) -> Any:
        if self.loss_fn is None:
            return self.model(**batch, labels=labels).loss
        return self.loss_fn(self.model, batch, labels, indices)


def _optimizer(model: Any, cfg: TrainConfig, device: str):
    import torch

    # No weight decay on biases and LayerNorm weights (the BERT recipe).
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr)
    warmup = max(1, int(cfg.steps * cfg.warmup_ratio))

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (cfg.steps - step) / max(1, cfg.steps - warmup))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    # fp16 needs loss scaling; bf16 (Ampere and later) has the range to go without.
    scaler = torch.amp.GradScaler("cuda") if device == "cuda" and not torch.cuda.is_bf16_supported() else None
    return optimizer, scheduler, scaler


def _autocast(device: str):
    import torch

    if device != "cuda":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast("cuda", dtype=dtype)


class _Batches:
    """Micro-batch ``m`` of a seeded per-epoch shuffle: a pure function of ``m``, so resuming at any
    step replays exactly the batches the interrupted attempt would have seen."""

    def __init__(self, size: int, batch_size: int, seed: int) -> None:
        self.size, self.batch_size, self.seed = size, min(batch_size, size), seed
        self.per_epoch = math.ceil(size / self.batch_size)
        self._epoch, self._order = -1, None

    def indices(self, micro: int) -> list[int]:
        import torch

        epoch, position = divmod(micro, self.per_epoch)
        if epoch != self._epoch:
            generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            self._epoch, self._order = epoch, torch.randperm(self.size, generator=generator).tolist()
        return self._order[position * self.batch_size : (position + 1) * self.batch_size]


@contextlib.contextmanager
def _progress(total: int, done: int, run: str):
    """A rich progress bar on an interactive terminal; nothing in logs and CI."""
    if not sys.stderr.isatty():
        yield lambda: None
        return
    from rich.console import Console
    from rich.progress import Progress

    with Progress(console=Console(stderr=True), transient=True) as progress:
        task = progress.add_task(run, total=total, completed=done)
        yield lambda: progress.advance(task)


def config_from(params: Any) -> TrainConfig:
    """A ``TrainConfig`` from the same-named fields of an initiative's ``Params``."""
    from dataclasses import fields

    return TrainConfig(**{f.name: getattr(params, f.name) for f in fields(TrainConfig) if hasattr(params, f.name)})
