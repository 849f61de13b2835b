"""baseline: fine-tune a classifier, store it as the ``model`` artifact, log its full evaluation.

The evaluation (accuracy, macro-F1, per-slice F1, out-of-scope detection, latency and size) is what
robustness and augment read back to decide where the model is weakest.
"""

from __future__ import annotations

from specs.baseline import Params





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
