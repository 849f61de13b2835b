"""distill: a 2-3x smaller student from a stored model, trained to a validation plateau.

The teacher is the ``model`` artifact of ``model_job`` (default: the latest baseline). The student
keeps ``layers`` of the teacher's encoder layers and, with ``prune_vocab``, only the word pieces the
training corpus uses (``worker.ml.distill``). It trains on a stratified ``sample_fraction`` of the
training split (default: all of it) against the teacher's soft targets at ``temperature``, mixed with
the hard labels at weight ``alpha``, for up to ``epochs`` epochs with the same early stopping on
validation macro-F1 as baseline (``steps > 0``: exactly that many steps).

Teacher and student are measured in the same run on the same machine by the same evaluation as
baseline (accuracy, macro-F1, per-slice F1, out-of-scope AUROC, latency, throughput, parameters,
size), then timed once more in alternation (``speed.*``) for the ratios. The student's rows are
logged unprefixed, as baseline logs its model's, because the student is this job's ``model``
artifact and later jobs (robustness, augment with ``model_job``) read them so; the teacher's carry
``teacher.``. ``improvement`` is the throughput ratio (student / teacher at batch
64): distillation buys serving speed, and ``accuracy_retained`` says what it cost, as do
``overall.accuracy_delta`` and ``overall.macro_f1_delta`` (student minus teacher, points) and
``tradeoff`` (1 when the student is faster but worse). A speed ratio has no test-set bootstrap
interval, so none is logged.
"""

from __future__ import annotations

from specs.distill import Params


def run(params: Params, ctx) -> None:
    from core.errors import PermanentError
    from worker.ml.data import note_val_carved
    from worker.ml.distill import build_student, stratified_sample
    from worker.ml.evaluate import comparison_rows, infer, log_rows
    from worker.ml.lineage import MODEL_ARTIFACT, load_model, model_source, save_model
    from worker.ml.train import config_from, seed_everything, train

    source = model_source(ctx, params.model_job)
    teacher, teacher_tokenizer, spec, dataset = load_model(source, ctx)
    note_val_carved(ctx, dataset)
    if params.layers >= teacher.config.num_hidden_layers:
        raise PermanentError(f"layers={params.layers}: the teacher has only {teacher.config.num_hidden_layers}")
    # The teacher first: its report is worth keeping even when the budget stops the student's training.
    teacher_test = infer(teacher, teacher_tokenizer, dataset.test.texts, max_length=params.max_length)
    teacher_rows = _evaluate(teacher, teacher_tokenizer, dataset, ctx.fetch_artifact(source, MODEL_ARTIFACT), params, teacher_test)
    log_rows(ctx, teacher_rows, prefix="teacher.")
    sample = stratified_sample(dataset.train, params.sample_fraction, params.seed)
    ctx.log_metric("distill.train_rows", len(sample))
    soft = infer(teacher, teacher_tokenizer, sample.texts, max_length=params.max_length).logits
    seed_everything(params.seed)
    student, tokenizer = build_student(teacher, teacher_tokenizer, layers=params.layers,
                                       corpus=dataset.train.texts if params.prune_vocab else ())
    train(student, tokenizer, sample.texts, dataset.label_ids(sample), config_from(params), ctx, run="distill",
          val=(dataset.val.texts, dataset.label_ids(dataset.val)), loss_fn=_soft_loss(soft, params))
    folder = save_model(student, tokenizer, dataset.labels, spec, ctx.work_dir / "model")
    ctx.save_artifact("model", folder)
    student_test = infer(student, tokenizer, dataset.test.texts, max_length=params.max_length)
    student_rows = _evaluate(student, tokenizer, dataset, folder, params, student_test)
    log_rows(ctx, student_rows)
    models = {"teacher": (teacher, teacher_tokenizer), "student": (student, tokenizer)}
    if params.quantize:
        models.update(_int8_student(ctx, student, tokenizer, dataset, params))
    speed = _paired_speed(models, dataset.test.texts, params)
    for who, values in speed.items():
        for name, value in values.items():
            ctx.log_metric(f"speed.{who}.{name}", value)
    throughput = _log_ratios(ctx, {r.name: r.value for r in teacher_rows if r.slice is None},
                             {r.name: r.value for r in student_rows if r.slice is None}, speed)
    log_rows(ctx, comparison_rows(dataset.label_ids(dataset.test), teacher_test.predictions(), student_test.predictions(),
                                  improvement=throughput, gain_above=1.0))


def _evaluate(model, tokenizer, dataset, folder, params: Params, test):
    from worker.ml.evaluate import evaluate

    return evaluate(model, tokenizer, dataset, folder=folder, max_length=params.max_length,
                    latency_samples=params.latency_samples, test=test)


def _soft_loss(teacher_logits, params: Params):
    import torch

    from worker.ml.distill import soft_target_loss

    return soft_target_loss(torch.from_numpy(teacher_logits), temperature=params.temperature, alpha=params.alpha)


def _int8_student(ctx, student, tokenizer, dataset, params: Params) -> dict:
    """The int8 student (not stored) with its test accuracy logged under ``int8.``; none on a GPU machine."""
    import torch

    from worker.ml.distill import quantized
    from worker.ml.evaluate import classification_rows, infer, log_rows

    if torch.cuda.is_available():
        return {}  # dynamic int8 kernels are CPU-only, and ``infer`` would move the model to the GPU
    model = quantized(student)
    predicted = infer(model, tokenizer, dataset.test.texts, max_length=params.max_length).predictions()
    log_rows(ctx, [r for r in classification_rows(dataset, dataset.test, predicted) if r.slice is None], prefix="int8.")
    return {"int8": (model, tokenizer)}


def _paired_speed(models: dict, texts, params: Params) -> dict[str, dict[str, float]]:
    """Latency p50 and throughput per model, measured in alternation, best of ``speed_rounds``.

    On a machine shared with other jobs a burst of load during one model's turn would otherwise
    decide the ratio; alternating and keeping each model's best turn compares them under like load.
    """
    from worker.ml.evaluate import efficiency_rows

    best: dict[str, dict[str, float]] = {who: {} for who in models}
    for _ in range(params.speed_rounds):
        for who, (model, tokenizer) in models.items():
            for row in efficiency_rows(model, tokenizer, texts, None, samples=params.latency_samples):
                if row.name in ("latency_p50_ms", "throughput_per_s"):
                    keep = max if row.name == "throughput_per_s" else min
                    best[who][row.name] = keep(best[who].get(row.name, row.value), row.value)
    return best


def _log_ratios(ctx, teacher: dict[str, float], student: dict[str, float], speed: dict) -> float:
    """Log size, parameter, speed and accuracy ratios; return the throughput ratio (the improvement)."""
    throughput = speed["student"]["throughput_per_s"] / speed["teacher"]["throughput_per_s"]
    ctx.log_metric("size_ratio", teacher["size_bytes"] / student["size_bytes"])  # times smaller on disk
    ctx.log_metric("param_ratio", teacher["param_count"] / student["param_count"])
    ctx.log_metric("throughput_ratio", throughput)  # times faster at batch 64
    ctx.log_metric("latency_ratio", speed["teacher"]["latency_p50_ms"] / speed["student"]["latency_p50_ms"])
    ctx.log_metric("accuracy_retained", student["accuracy"] / teacher["accuracy"])
    return throughput
