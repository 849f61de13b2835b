"""baseline: fine-tune a classifier, store it as the ``model`` artifact, log its full evaluation.

The evaluation (accuracy, macro-F1, per-slice F1, out-of-scope detection, latency and size) is what
robustness and augment read back to decide where the model is weakest.
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


def run(params: Params, ctx) -> None:
    from worker.ml.evaluate import evaluate, log_rows
    from worker.ml.lineage import DataSpec, save_model
    from worker.ml.modeling import load_classifier
    from worker.ml.train import config_from, seed_everything, train

    spec = DataSpec(params.dataset, params.variant, params.slice_column, params.seed)
    dataset = spec.load()
    seed_everything(params.seed)  # the new classification head is drawn at random
    model, tokenizer = load_classifier(params.model, dataset.labels)
    train(model, tokenizer, dataset.train.texts, dataset.label_ids(dataset.train), config_from(params), ctx)
    folder = save_model(model, tokenizer, dataset.labels, spec, ctx.work_dir / "model")
    ctx.save_artifact("model", folder)
    log_rows(ctx, evaluate(model, tokenizer, dataset, folder=folder, max_length=params.max_length, latency_samples=params.latency_samples))
