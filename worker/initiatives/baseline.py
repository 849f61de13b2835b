"""baseline: fine-tune a classifier to a validation plateau, store it as the ``model`` artifact, log its full evaluation.

By default training runs up to ``epochs`` epochs and stops early once validation macro-F1 stops
improving, keeping the best weights (``worker.ml.train``); ``steps > 0`` trains exactly that many
steps instead. The evaluation on the test split (accuracy, macro-F1, per-slice and per-class F1,
out-of-scope detection, latency and size) is what robustness and augment read back.
"""

from __future__ import annotations

from dataclasses import dataclass

from worker.ml.train import check_schedule


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


def run(params: Params, ctx) -> None:
    from worker.ml.data import note_val_carved
    from worker.ml.evaluate import evaluate, log_rows
    from worker.ml.lineage import DataSpec, save_model
    from worker.ml.modeling import load_classifier
    from worker.ml.train import config_from, seed_everything, train

    spec = DataSpec(params.dataset, params.variant, params.slice_column, params.seed)
    dataset = spec.load()
    note_val_carved(ctx, dataset)
    seed_everything(params.seed)  # the new classification head is drawn at random
    model, tokenizer = load_classifier(params.model, dataset.labels)
    train(model, tokenizer, dataset.train.texts, dataset.label_ids(dataset.train), config_from(params), ctx,
          val=(dataset.val.texts, dataset.label_ids(dataset.val)))
    folder = save_model(model, tokenizer, dataset.labels, spec, ctx.work_dir / "model")
    ctx.save_artifact("model", folder)
    log_rows(ctx, evaluate(model, tokenizer, dataset, folder=folder, max_length=params.max_length, latency_samples=params.latency_samples))
