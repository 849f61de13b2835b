"""baseline: fine-tune a classifier to a validation plateau, store it as the ``model`` artifact, log its full evaluation.

By default training runs up to ``epochs`` epochs and stops early once validation macro-F1 stops
improving, keeping the best weights (``worker.ml.train``); ``steps > 0`` trains exactly that many
steps instead. The evaluation on the test split (accuracy, macro-F1, per-slice and per-class F1,
out-of-scope detection, latency and size) is what robustness and augment read back. Where the
wall time went (load, tokenize, train, evaluate, save, checkpoint) is logged as ``phase.*.seconds``
(``worker.ml.phases``).
"""

from __future__ import annotations

from specs.baseline import Params


def run(params: Params, ctx) -> None:
    from worker.ml.evaluate import evaluate, log_rows
    from worker.ml.lineage import DataSpec, save_model
    from worker.ml.modeling import load_classifier
    from worker.ml.phases import recorded
    from worker.ml.train import config_from, seed_everything, train

    with recorded(ctx) as phases:
        with phases("load"):
            spec, dataset = DataSpec.of(params, ctx)
            seed_everything(params.seed)  # the new classification head is drawn at random
            model, tokenizer = load_classifier(params.model, dataset.labels)
        train(model, tokenizer, dataset.train.texts, dataset.label_ids(dataset.train), config_from(params), ctx,
              val=(dataset.val.texts, dataset.label_ids(dataset.val)), phases=phases)
        with phases("save"):
            folder = save_model(model, tokenizer, dataset.labels, spec, ctx.work_dir / "model")
            ctx.save_artifact("model", folder)
        with phases("evaluate"):
            rows = evaluate(model, tokenizer, dataset, folder=folder, max_length=params.max_length,
                            latency_samples=params.latency_samples)
        log_rows(ctx, rows)
