"""distill: a 2-3x smaller, faster student from a stored model, trained on its outputs and internals.

The teacher is the ``model`` artifact of ``model_job`` (default: the latest baseline). The student
keeps ``layers`` of the teacher's encoder layers (chosen by ``layer_map``) and, with
``prune_vocab``, only the word pieces the training corpus uses (``worker.initiatives.distill.student``). It trains
``epochs`` passes over a stratified ``sample_fraction`` of the training split with the frozen
teacher run on every batch: soft targets at ``temperature`` mixed with the hard labels at weight
``alpha``, plus the intermediate targets (hidden states, attention maps, value relations) at their
own weights.

Teacher and student are measured in the same run on the same machine by the same evaluation as
baseline (accuracy, macro-F1, per-slice F1, out-of-scope AUROC, size) on the test split, and on the
validation split (``val.accuracy``, ``teacher.val.accuracy``) for choosing a configuration without
touching test. Speed is timed separately with teacher and student in alternation in one process,
CPU fp32 (``worker.initiatives.distill.serving``): latency p50 at batch 1 and throughput at ``serving_batch``
(``speed.<who>.*``); on a machine with CUDA, the same timing again on the GPU, logged apart
(``speed.cuda.<who>.*``, ``speed.cuda.throughput_ratio``). The student's rows are logged unprefixed, as baseline logs its model's,
because the student is this job's ``model`` artifact and later jobs read them so; the teacher's
carry ``teacher.``. ``improvement`` is the throughput ratio at the serving batch (a speed ratio):
distillation buys serving speed, and ``accuracy_retained`` and ``overall.*_delta`` say what it cost.
"""

from __future__ import annotations

import torch

from specs.distill import Params


def run(params: Params, ctx) -> None:
    from core.errors import PermanentError
    from worker.ml.evaluate import comparison_rows, infer, log_rows
    from worker.ml.lineage import MODEL_ARTIFACT, load_model, model_source, save_model
    from worker.ml.phases import recorded

    with recorded(ctx) as phases:
        with phases("load"):
            source = model_source(ctx, params.model_job)
            teacher, teacher_tokenizer, spec, dataset = load_model(source, ctx)
        if params.layers >= teacher.config.num_hidden_layers:
            raise PermanentError(f"layers={params.layers}: the teacher has only {teacher.config.num_hidden_layers}")
        with phases("evaluate"):
            teacher_test = infer(teacher, teacher_tokenizer, dataset.test.texts, max_length=params.max_length)
            teacher_rows = _evaluate(teacher, teacher_tokenizer, dataset, ctx.fetch_artifact(source, MODEL_ARTIFACT), params, teacher_test)
            log_rows(ctx, teacher_rows, prefix="teacher.")
            teacher_val = val_accuracy(teacher, teacher_tokenizer, dataset, params)
            ctx.log_metric("teacher.val.accuracy", teacher_val)
        student = train_student(teacher, teacher_tokenizer, dataset, params, ctx, phases)
        with phases("save"):
            folder = save_model(student.model, student.tokenizer, dataset.labels, spec, ctx.work_dir / "model")
            ctx.save_artifact("model", folder)
        with phases("evaluate"):  # accuracy, then the paired speed measurement
            student_test = infer(student.model, student.tokenizer, dataset.test.texts, max_length=params.max_length)
            student_rows = _evaluate(student.model, student.tokenizer, dataset, folder, params, student_test)
            log_rows(ctx, student_rows)
            student_val = val_accuracy(student.model, student.tokenizer, dataset, params)
            ctx.log_metric("val.accuracy", student_val)
            ctx.log_metric("val.accuracy_retained", student_val / teacher_val)
            speed = _speed(ctx, teacher, teacher_tokenizer, student, dataset, params)
            throughput = _log_ratios(ctx, _overall(teacher_rows), _overall(student_rows), speed)
            log_rows(ctx, comparison_rows(dataset.label_ids(dataset.test), teacher_test.predictions(), student_test.predictions(),
                                          improvement=throughput, gain_above=1.0))


def train_student(teacher, teacher_tokenizer, dataset, params: Params, ctx, phases=None):
    """Cut the student from ``teacher`` and train it (resuming from this job's checkpoints); a ``Student``."""
    from worker.initiatives.distill.student import DistillLoss, LossWeights, build_student, stratified_sample, teacher_layers
    from worker.ml.train import config_from, seed_everything, train

    from worker.ml.phases import Phases

    phases = phases if phases is not None else Phases()
    sample = stratified_sample(dataset.train, params.sample_fraction, params.seed)
    ctx.log_metric("distill.train_rows", len(sample))
    seed_everything(params.seed)
    with phases("load"):
        student = build_student(teacher, teacher_tokenizer, layers=params.layers, layer_map=params.layer_map,
                                corpus=dataset.train.texts if params.prune_vocab else ())
    weights = LossWeights(params.temperature, params.alpha, params.hidden_weight, params.attention_weight,
                          params.value_weight, params.attention_layers)
    # Intermediate targets: the uniform map whatever the initialisation, so the student's last layer
    # is always pulled toward the teacher's last, the one its classifier head reads.
    targets = teacher_layers(teacher.config.num_hidden_layers, params.layers, "uniform")
    loss_fn = DistillLoss(teacher, weights, targets=targets, teacher_ids=student.teacher_ids)

    def log_terms(step: int) -> None:
        for name, value in loss_fn.last_terms.items():
            ctx.log_metric(f"distill.loss.{name}", value, step=step)

    # Up to ``epochs`` passes, stopped early on a validation plateau with the best weights kept.
    train(student.model, student.tokenizer, sample.texts, dataset.label_ids(sample), config_from(params), ctx, run="distill",
          val=(dataset.val.texts, dataset.label_ids(dataset.val)), loss_fn=loss_fn, on_step=log_terms, phases=phases)
    return student


def val_accuracy(model, tokenizer, dataset, params: Params) -> float:
    """Accuracy on the validation split: what a choice between configurations may look at."""
    from worker.ml.evaluate import infer

    predicted = infer(model, tokenizer, dataset.val.texts, max_length=params.max_length).predictions()
    truth = dataset.label_ids(dataset.val)
    return float(sum(int(p) == t for p, t in zip(predicted, truth)) / max(1, len(truth)))


def _evaluate(model, tokenizer, dataset, folder, params: Params, test):
    from worker.ml.evaluate import evaluate

    return evaluate(model, tokenizer, dataset, folder=folder, max_length=params.max_length,
                    latency_samples=params.latency_samples, test=test)


def _overall(rows) -> dict[str, float]:
    return {r.name: r.value for r in rows if r.slice is None}


def _speed(ctx, teacher, teacher_tokenizer, student, dataset, params: Params) -> dict[str, dict[str, float]]:
    """CPU fp32 teacher and student (and the int8 student with ``quantize``) timed in alternation; the CPU
    figures are the ones compared. With a GPU, teacher and student are timed again there (``speed.cuda.*``)."""
    from worker.initiatives.distill.serving import TorchPredictor, paired_speed

    predictors = {"teacher": TorchPredictor(teacher, teacher_tokenizer, max_length=params.max_length),
                  "student": TorchPredictor(student.model, student.tokenizer, max_length=params.max_length)}
    if params.quantize:
        predictors["int8"] = _int8_student(ctx, student, dataset, params)
    speed = paired_speed(predictors, dataset.test.texts, serving_batch=params.serving_batch,
                         samples=params.latency_samples, rounds=params.speed_rounds)
    ctx.log_metric("speed.latency_batch", 1)
    ctx.log_metric("speed.serving_batch", params.serving_batch)
    for who, values in speed.items():
        for name, value in values.items():
            ctx.log_metric(f"speed.{who}.{name}", value)
    _cuda_speed(ctx, {"teacher": (teacher, teacher_tokenizer), "student": (student.model, student.tokenizer)}, dataset, params)
    return speed


def _cuda_speed(ctx, models: dict, dataset, params: Params) -> None:
    """Where CUDA is present: the same predictors and timing on the GPU (fp32 eager, copies of the
    models), logged apart as ``speed.cuda.<who>.*`` and ``speed.cuda.throughput_ratio``."""
    import copy

    from worker.initiatives.distill.serving import TorchPredictor, paired_speed

    if not torch.cuda.is_available():
        return
    predictors = {who: TorchPredictor(copy.deepcopy(model), tokenizer, max_length=params.max_length, device="cuda")
                  for who, (model, tokenizer) in models.items()}
    speed = paired_speed(predictors, dataset.test.texts, serving_batch=params.serving_batch,
                         samples=params.latency_samples, rounds=params.speed_rounds)
    for who, values in speed.items():
        for name, value in values.items():
            ctx.log_metric(f"speed.cuda.{who}.{name}", value)
    ctx.log_metric("speed.cuda.throughput_ratio", speed["student"]["throughput_per_s"] / speed["teacher"]["throughput_per_s"])
    del predictors
    torch.cuda.empty_cache()


def _int8_student(ctx, student, dataset, params: Params):
    """The student through ONNX Runtime int8 (not stored), its test accuracy and size logged under ``int8.``."""
    from worker.ml.evaluate import classification_rows, log_rows
    from worker.initiatives.distill.serving import onnx_int8, predict

    predictor = onnx_int8(student.model, student.tokenizer, ctx.work_dir / "onnx", max_length=params.max_length)
    predicted = predict(predictor, dataset.test.texts).argmax(axis=1)
    log_rows(ctx, [r for r in classification_rows(dataset, dataset.test, predicted) if r.slice is None], prefix="int8.")
    ctx.log_metric("int8.size_bytes", predictor.path.stat().st_size)
    return predictor


def _log_ratios(ctx, teacher: dict[str, float], student: dict[str, float], speed: dict) -> float:
    """Log size, parameter, speed and accuracy ratios; return the throughput ratio (the improvement)."""
    throughput = speed["student"]["throughput_per_s"] / speed["teacher"]["throughput_per_s"]
    ctx.log_metric("size_ratio", teacher["size_bytes"] / student["size_bytes"])  # times smaller on disk
    ctx.log_metric("param_ratio", teacher["param_count"] / student["param_count"])
    ctx.log_metric("throughput_ratio", throughput)  # times faster at the serving batch, CPU fp32
    ctx.log_metric("latency_ratio", speed["teacher"]["latency_p50_ms"] / speed["student"]["latency_p50_ms"])
    ctx.log_metric("accuracy_retained", student["accuracy"] / teacher["accuracy"])
    return throughput
