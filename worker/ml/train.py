"""The fine-tuning loop: plain torch, resumable, stoppable between steps, early-stopped on validation.

Two ways to say how long to train. ``steps > 0``: exactly that many optimizer steps, no early
stopping. ``steps == 0`` (the initiatives' default): up to ``epochs`` epochs, scored on the
validation split every ``eval_every`` steps, stopping once ``patience`` evaluations in a row failed to
beat the best validation macro-F1 by ``min_delta``; the best weights are restored at the end.
Macro-F1 rather than accuracy because it weighs every class alike: on an imbalanced dataset
accuracy keeps rising while the rare classes get worse, and on a balanced one the two agree.

AdamW with linear warmup then linear decay to zero at the planned last step (``steps``, or
``epochs`` full epochs). The decay horizon is the cap, fixed before the first step, so a resumed
attempt follows the same schedule; early stopping only cuts it short. Warmup is ``warmup_ratio`` of
the planned steps but at most one epoch: a long cap must not delay the first plateau check.
Gradient accumulation; bf16/fp16 autocast and fused AdamW on CUDA when a GPU is present. Every
``checkpoint_every`` optimizer steps the full state, early-stopping state and best weights included,
goes to ``checkpoint_dir/<run>/``; a new attempt resumes from the newest one at the same step with
the same data order, so the loss curve continues where the preempted attempt left it.

Speed (measured by ``bench/gpu_efficiency.py``): the training texts are tokenized once per run and
kept on the device, each micro-batch a slice of them padded to its own longest row, exactly what
tokenizing the batch would give; the losses stay on the device and reach the host (one sync) only
where they are reported: every ``SYNC_STEPS`` steps or ``SYNC_SECONDS`` seconds, before a
validation, a checkpoint or a stop, and at the end. Where the time goes is logged through
``worker.ml.phases``.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch

from core.errors import BudgetStop
from worker.ml.checkpoint import latest_checkpoint, load_checkpoint, load_extra, save_checkpoint
from worker.ml.modeling import Pretokenized, autocast, pick_device
from worker.ml.phases import Phases

# Losses reach the host in bursts: a host sync per step would stall a GPU while Python queues the next.
SYNC_STEPS = 10
SYNC_SECONDS = 1.0


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 0  # > 0: exactly this many optimizer steps, no early stopping; 0: up to ``epochs``
    epochs: int = 40  # the cap when ``steps`` is 0
    max_steps: int = 0  # > 0 (with ``steps`` 0): this cap in steps instead of ``epochs``, early stopping still on
    batch_size: int = 32
    grad_accum: int = 1  # micro-batches per optimizer step
    lr: float = 5e-5
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    seed: int = 0
    max_length: int = 64
    checkpoint_every: int = 50
    eval_every: int = 0  # optimizer steps between validations; 0: see ``Plan``
    patience: int = 3  # validations without a gain of ``min_delta`` (macro-F1) before stopping
    min_delta: float = 0.0


@dataclass
class TrainResult:
    step: int
    resumed_from: int  # 0 when this attempt started fresh
    losses: list[float] = field(default_factory=list)  # this attempt's per-step losses
    best_step: int = 0  # the step whose weights the model ends with
    stopped_early: bool = False


@dataclass(frozen=True)
class Plan:
    """How many steps a run may take, how often it validates, and how long it warms up."""

    steps: int  # the cap: the last step, unless early stopping comes first
    per_epoch: int  # optimizer steps per pass over the training rows
    eval_every: int
    warmup: int
    early_stopping: bool

    @classmethod
    def of(cls, cfg: TrainConfig, rows: int, val_rows: int) -> "Plan":
        """The plan for ``rows`` training rows with ``val_rows`` validation rows (0: no validation).

        The default cadence is once per epoch, or once per ``val_rows`` training rows when the
        validation split is the larger: a validation pass costs about a third of a training pass
        over as many rows (forward only), so validation stays under a third of the compute. With
        fixed ``steps`` there is no default cadence: nothing is validated unless ``eval_every`` asks.
        """
        rows_per_step = min(cfg.batch_size, max(1, rows)) * cfg.grad_accum
        per_epoch = max(1, math.ceil(math.ceil(rows / min(cfg.batch_size, max(1, rows))) / cfg.grad_accum))
        steps = cfg.steps or cfg.max_steps or cfg.epochs * per_epoch
        eval_every = cfg.eval_every or (0 if cfg.steps else max(per_epoch, math.ceil(val_rows / rows_per_step)))
        warmup = max(1, int(steps * cfg.warmup_ratio))
        if not cfg.steps:
            warmup = min(warmup, per_epoch)
        return cls(steps, per_epoch, eval_every, warmup, early_stopping=not cfg.steps and val_rows > 0)


@dataclass
class EarlyStopping:
    """The best validation score so far, where it was reached, and the evaluations since."""

    patience: int
    min_delta: float
    best: float = -1.0
    best_step: int = 0
    waited: int = 0  # evaluations in a row without a gain of ``min_delta``
    stopped: bool = False
    weights: Optional[dict[str, Any]] = None  # the best step's weights, on the CPU

    def observe(self, step: int, score: float, model: Any) -> None:
        """Take one validation score; keep the weights when it is the best, stop when patience runs out."""
        if score > self.best + self.min_delta or self.best_step == 0:
            self.best, self.best_step, self.waited = score, step, 0
            self.weights = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        else:
            self.waited += 1
            self.stopped = self.waited >= self.patience

    def state(self) -> dict[str, Any]:
        return {"best": self.best, "best_step": self.best_step, "waited": self.waited, "stopped": self.stopped}

    def restore(self, state: dict[str, Any], weights: Optional[dict[str, Any]]) -> None:
        self.best, self.best_step, self.waited, self.stopped = state["best"], state["best_step"], state["waited"], state["stopped"]
        self.weights = weights


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (every device)."""
    import random

    import numpy as np
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def train(model: Any, tokenizer: Any, texts: Sequence[str], label_ids: Sequence[int], cfg: TrainConfig, ctx: Any, *,
          run: str = "train", val: Optional[tuple[Sequence[str], Sequence[int]]] = None, batches: Any = None,
          loss_fn: Callable[..., Any] | None = None, on_step: Callable[[int], None] | None = None,
          on_eval: Callable[[int, float, float], None] | None = None, phases: Optional[Phases] = None,
          on_checkpoint: Callable[[Path, int], None] | None = None) -> TrainResult:
    """Fine-tune ``model`` in place as ``cfg`` plans (see the module docstring), resuming from the latest checkpoint.

    ``val`` is (texts, label ids) of the validation split. Logs ``<run>.loss`` and ``<run>.lr`` per
    step, ``<run>.val_accuracy`` and ``<run>.val_macro_f1`` per validation, and at the end
    ``<run>.rows``, ``<run>.steps``, ``<run>.epochs_run``, ``<run>.stopped_early`` and
    ``<run>.best_step``. Raises ``BudgetStop`` after checkpointing when ``ctx.should_stop()`` turns
    true. Optional hooks (none given: plain fine-tuning): ``batches`` replaces the seeded shuffle with
    any object whose ``indices(micro)`` names the rows of micro-batch ``micro``; ``loss_fn(model,
    batch, labels, indices) -> loss`` replaces the model's mean cross-entropy and runs the forward
    pass itself, so it can ask for what it needs (per-row logits, hidden states, another model's
    outputs for the same rows); ``on_step(step)`` runs after each step; ``on_eval(step, accuracy,
    macro_f1)`` after each validation; ``on_checkpoint(folder, step)`` writes a hook's own state
    into each checkpoint (it travels and resumes with it). ``phases`` (the job's, from ``worker.ml.phases.recorded``)
    is charged this run's load, tokenize, train, evaluate and checkpoint time and its training rows.
    """
    phases = phases if phases is not None else Phases()
    seed_everything(cfg.seed)
    val = val if val and len(val[0]) else None  # an empty validation split validates nothing
    plan = Plan.of(cfg, len(texts), len(val[0]) if val else 0)
    with phases("load"):
        loop = _Loop(model, tokenizer, texts, label_ids, cfg, plan, Path(ctx.checkpoint_dir) / run, batches, loss_fn, phases)
    # Each saved checkpoint is handed to the context, which makes it durable (object storage).
    loop.on_saved, loop.on_checkpoint = getattr(ctx, "checkpoint_saved", None), on_checkpoint
    result = TrainResult(step=loop.saved_step, resumed_from=loop.saved_step)
    model.train()
    with phases("train"), _progress(ctx, plan.steps, run) as advance:
        reported = _Reported(ctx, run, result, advance)
        try:
            _steps(ctx, loop, plan, result, reported, val, run, on_step, on_eval)
        finally:
            # Interrupted (a soft time limit, an error), the steps taken still reach the loss curve.
            with contextlib.suppress(Exception):
                reported.flush()
    return _finish(ctx, loop, result, run, len(texts))


def _steps(ctx: Any, loop: "_Loop", plan: Plan, result: TrainResult, reported: "_Reported", val, run: str,
           on_step, on_eval) -> None:
    """The steps from where this attempt starts to the cap, an early stop or a ``BudgetStop``."""
    for step in range(result.step + 1, plan.steps + 1):
        if loop.early.stopped:
            break  # a resumed attempt of a run that had already stopped early
        if ctx.should_stop():
            reported.flush()
            loop.stop(result.step)
        lr = loop.scheduler.get_last_lr()[0]  # the rate this step uses; the scheduler moves on after it
        reported.add(step, lr, loop.optimizer_step(step))
        if val and plan.eval_every and (step % plan.eval_every == 0 or step == plan.steps):
            reported.flush()
            _validate(ctx, loop, val, step, run, on_eval)
        if step % loop.cfg.checkpoint_every == 0 or step == plan.steps or loop.early.stopped:
            reported.flush()
            loop.checkpoint(step)
        if on_step is not None:
            on_step(step)
    reported.flush()


class _Reported:
    """Per-step losses held on the device until a flush brings them all to the host in one sync,
    then logged, appended to the result and reported as progress, step by step in order."""

    def __init__(self, ctx: Any, run: str, result: TrainResult, advance: Callable[[int, float], None]) -> None:
        import time

        self.ctx, self.run, self.result, self.advance, self.clock = ctx, run, result, advance, time.perf_counter
        self.pending: list[tuple[int, float, Any]] = []  # (step, lr, loss on the device)
        self.since = self.clock()

    def add(self, step: int, lr: float, loss: Any) -> None:
        self.pending.append((step, lr, loss))
        if len(self.pending) >= SYNC_STEPS or self.clock() - self.since >= SYNC_SECONDS:
            self.flush()

    def flush(self) -> None:
        self.since = self.clock()
        if not self.pending:
            return
        values = torch.stack([loss for _, _, loss in self.pending]).tolist()  # the one sync
        for (step, lr, _), loss in zip(self.pending, values):
            self.result.losses.append(loss)
            self.result.step = step
            self.ctx.log_metric(f"{self.run}.loss", loss, step=step)
            self.ctx.log_metric(f"{self.run}.lr", lr, step=step)
            self.advance(step, loss)
        self.pending.clear()


def _validate(ctx: Any, loop: "_Loop", val, step: int, run: str, on_eval) -> None:
    """Score the validation split, log it, and let early stopping see the macro-F1 (all of it evaluate time)."""
    with loop.phases("evaluate"):
        _score_validation(ctx, loop, val, step, run, on_eval)


def _score_validation(ctx: Any, loop: "_Loop", val, step: int, run: str, on_eval) -> None:
    from worker.ml.evaluate import accuracy, infer, macro_f1

    texts, truth = val
    predicted = infer(loop.model, loop.tokenizer, texts, max_length=loop.cfg.max_length).predictions()
    loop.model.train()  # infer switched to eval mode; training goes on after this
    right, f1 = accuracy(truth, predicted), macro_f1(truth, predicted)
    ctx.log_metric(f"{run}.val_accuracy", right, step=step)
    ctx.log_metric(f"{run}.val_macro_f1", f1, step=step)
    if loop.plan.early_stopping:
        loop.early.observe(step, f1, loop.model)
    if on_eval is not None:
        on_eval(step, right, f1)


def _finish(ctx: Any, loop: "_Loop", result: TrainResult, run: str, rows: int) -> TrainResult:
    """Restore the best weights (early stopping only), log how the run ended, switch to eval mode."""
    result.step = max(result.step, loop.saved_step)
    result.stopped_early = loop.early.stopped
    result.best_step = result.step
    if loop.plan.early_stopping and loop.early.weights is not None:
        loop.model.load_state_dict(loop.early.weights)
        result.best_step = loop.early.best_step
    for name, value in (("rows", rows), ("steps", result.step), ("epochs_run", result.step / loop.plan.per_epoch),
                        ("stopped_early", float(result.stopped_early)), ("best_step", result.best_step)):
        ctx.log_metric(f"{run}.{name}", value)
    loop.model.eval()
    return result


class _Loop:
    """One training run's state: model, optimizer, schedule, data order, early stopping, checkpoint folder."""

    def __init__(self, model, tokenizer, texts, label_ids, cfg: TrainConfig, plan: Plan, folder: Path, batches=None,
                 loss_fn=None, phases: Optional[Phases] = None) -> None:
        self.model, self.tokenizer, self.cfg, self.plan, self.folder = model, tokenizer, cfg, plan, folder
        self.phases = phases if phases is not None else Phases()
        self.device = pick_device()
        model.to(self.device)
        with self.phases("tokenize"):
            self.tokens = Pretokenized(tokenizer, texts, max_length=cfg.max_length, device=self.device)
        self.labels = torch.tensor(list(label_ids), device=self.device)
        self.batches = batches if batches is not None else _Batches(len(texts), cfg.batch_size, cfg.seed)
        self.loss_fn = loss_fn
        self.optimizer, self.scheduler, self.scaler = _optimizer(model, cfg, plan, self.device)
        self.early = EarlyStopping(cfg.patience, cfg.min_delta)
        with self.phases("checkpoint"):
            latest = latest_checkpoint(folder)
            self.saved_step = load_checkpoint(latest, **self._state()) if latest else 0
            if latest:
                extra, weights = load_extra(latest)
                if "early_stopping" in extra:
                    self.early.restore(extra["early_stopping"], weights)
        self.on_saved: Callable[[Path], None] | None = None
        self.on_checkpoint: Callable[[Path, int], None] | None = None

    def _state(self) -> dict[str, Any]:
        return dict(model=self.model, optimizer=self.optimizer, scheduler=self.scheduler, scaler=self.scaler)

    def checkpoint(self, step: int) -> None:
        with self.phases("checkpoint"):
            hook = self.on_checkpoint
            saved = save_checkpoint(self.folder, step, **self._state(), extra={"early_stopping": self.early.state()},
                                    tensors=self.early.weights, also=(lambda folder: hook(folder, step)) if hook else None)
            self.saved_step = step
            if self.on_saved is not None:
                self.on_saved(saved)

    def stop(self, step: int) -> None:
        # Checkpoint the progress since the last periodic save, so the next attempt resumes right here.
        if step > self.saved_step:
            self.checkpoint(step)
        raise BudgetStop(f"stopped after step {step}; checkpoint in {self.folder}")

    def optimizer_step(self, step: int) -> Any:
        """One optimizer step over ``grad_accum`` micro-batches; returns the mean loss, still on the device."""
        cfg = self.cfg
        total = None
        for j in range(cfg.grad_accum):
            indices = self.batches.indices((step - 1) * cfg.grad_accum + j)
            batch = self.tokens.batch(indices)
            with autocast(self.device):
                loss = self._loss(batch, self.labels[indices], indices) / cfg.grad_accum
            (self.scaler.scale(loss) if self.scaler else loss).backward()
            total = loss.detach().float() if total is None else total + loss.detach().float()  # no host sync here
            self.phases.samples += len(indices)
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


def _optimizer(model: Any, cfg: TrainConfig, plan: Plan, device: str):
    # No weight decay on biases and LayerNorm weights (the BERT recipe).
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    # Fused AdamW updates every parameter in a few CUDA kernels instead of a few per tensor; CPU keeps the default.
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr, fused=True if device == "cuda" else None)
    warmup, last = plan.warmup, plan.steps

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (last - step) / max(1, last - warmup))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    # fp16 needs loss scaling; bf16 (Ampere and later) has the range to go without.
    scaler = torch.amp.GradScaler("cuda") if device == "cuda" and not torch.cuda.is_bf16_supported() else None
    return optimizer, scheduler, scaler


class _Batches:
    """Micro-batch ``m`` of a seeded per-epoch shuffle: a pure function of ``m``, so resuming at any
    step replays exactly the batches the interrupted attempt would have seen."""

    def __init__(self, size: int, batch_size: int, seed: int) -> None:
        self.size, self.batch_size, self.seed = size, min(batch_size, size), seed
        self.per_epoch = math.ceil(size / self.batch_size)
        self._epoch, self._order = -1, None

    def indices(self, micro: int) -> list[int]:
        epoch, position = divmod(micro, self.per_epoch)
        if epoch != self._epoch:
            generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            self._epoch, self._order = epoch, torch.randperm(self.size, generator=generator).tolist()
        return self._order[position * self.batch_size : (position + 1) * self.batch_size]


@contextlib.contextmanager
def _progress(ctx: Any, total: int, run: str):
    """Report each step to the context; the worker shows it (a live display on a terminal, a line
    now and then in a log), so the loop draws nothing itself."""
    yield lambda step, loss: ctx.progress(step=step, total=total, loss=loss, stage=run)


def config_from(params: Any) -> TrainConfig:
    """A ``TrainConfig`` from the same-named fields of an initiative's ``Params``."""
    from dataclasses import fields

    return TrainConfig(**{f.name: getattr(params, f.name) for f in fields(TrainConfig) if hasattr(params, f.name)})
