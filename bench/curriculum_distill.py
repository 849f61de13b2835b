"""Benchmark the curriculum and distillation initiatives: MiniLM-L6 on a CLINC150 subset, on CPU.

Curriculum: uniform shuffling, the loss curriculum and the random-curriculum control train the
pretrained MiniLM for the same steps; the section reports steps to several validation-accuracy
targets (read off each arm's validation curve), final test accuracy and macro-F1, and wall time.
Distillation: the curriculum job's stored model teaches a student (fewer layers, pruned vocabulary),
trained on a stratified 10% sample to a validation plateau; teacher and student are measured in the same run.

A subset (``--domains`` of CLINC150's ten domains, ``small`` variant) keeps the run near 15 minutes
on 2 shared CPU cores; the jobs run in process through the tests' ``InProcessContext``.

    python -m bench.curriculum_distill            # about 15-20 minutes on 2 loaded CPU cores
    python -m bench.curriculum_distill --quick    # a few minutes' smoke run (numbers meaningless)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from bench.ml_loop import _context_module, _threads, by_slice, value

FULL = {
    "curriculum": {"steps": 120, "batch_size": 16, "lr": 2e-4, "eval_every": 20, "quantile_every": 20,
                   "checkpoint_every": 1000, "s_max": 100.0, "anneal": "linear", "anneal_fraction": 0.5,
                   "target_accuracy": 0.8},
    "distill": {"layers": 3, "prune_vocab": True, "quantize": True, "temperature": 2.0, "alpha": 0.5,
                "sample_fraction": 0.1, "epochs": 1, "batch_size": 16, "lr": 2e-4, "latency_samples": 30},
}
QUICK = {
    "curriculum": {**FULL["curriculum"], "steps": 6, "eval_every": 3, "quantile_every": 3},
    "distill": {**FULL["distill"], "latency_samples": 5},
}
TARGETS = (0.5, 0.7, 0.8, 0.9)
ARMS = ("uniform", "curriculum", "random")
SIDES = (("teacher", "teacher."), ("student", ""), ("int8", "int8."))  # (speed name, metric prefix)
PER_INTENT = {"train": 50, "val": 10, "test": 30}
OOS_ROWS = {"oos_val": 50, "oos_test": 200}


def write_subset(target: Path, domains: int) -> Path:
    """The first ``domains`` CLINC150 domains (small variant): 50 train, 10 val, 30 test rows per intent."""
    source = Path(os.environ.get("CLINC150_DIR", "/work/shared/data/clinc150"))
    chosen = {d for d in list(json.loads((source / "domains.json").read_text()))[:domains]}
    target.mkdir(parents=True, exist_ok=True)
    for split, cap in {**PER_INTENT, **OOS_ROWS}.items():
        rows, seen = [], {}
        for row in map(json.loads, (source / "small" / f"{split}.jsonl").read_text().splitlines()):
            oos = split.startswith("oos")
            key = "oos" if oos else row["label"]  # out-of-scope rows are capped in all, others per intent
            if (oos or row["domain"] in chosen) and seen.get(key, 0) < cap:
                seen[key] = seen.get(key, 0) + 1
                rows.append(row)
        (target / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return target


def steps_to(job, arm: str, target: float) -> str:
    """The first evaluated step whose validation accuracy reached ``target``, or "not reached"."""
    curve = sorted((m.step, m.value) for m in job.metrics if m.name == f"{arm}.val_accuracy")
    return next((str(step) for step, acc in curve if acc >= target), "not reached")


def curriculum_lines(job, plan: dict) -> list[str]:
    head = "| arm | " + " | ".join(f"steps to val {t:.0%}" for t in TARGETS) + " | test accuracy | macro-F1 | wall |"
    lines = [head, "|---|" + "---:|" * (len(TARGETS) + 3)]
    for arm in ARMS:
        cells = [steps_to(job, arm, t) for t in TARGETS]
        cells += [f"{value(job, f'{arm}.accuracy'):.3f}", f"{value(job, f'{arm}.macro_f1'):.3f}", f"{value(job, f'{arm}.wall_s') / 60:.1f} min"]
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    settings = plan["curriculum"]
    lines += ["", (f"Schedule: s_max {settings['s_max']:g}, {settings['anneal']} in log(s) to uniform over the first "
                   f"{settings['anneal_fraction']:.0%} of {settings['steps']} steps (batch {settings['batch_size']}); "
                   f"validation every {settings['eval_every']} steps."),
              f"**improvement** (curriculum - uniform test accuracy): {value(job, 'improvement'):+.2f} points."]
    quantiles = sorted((m.step, m.value) for m in job.metrics if m.name == "curriculum.train_loss_p50")
    lines.append("Curriculum arm, median known training loss by step: " + ", ".join(f"{s}: {v:.2f}" for s, v in quantiles))
    return lines


def distill_lines(job) -> list[str]:
    rows = [("parameters (M)", "param_count", 1e-6, "{:.1f}"), ("size on disk (MB)", "size_bytes", 1e-6, "{:.1f}"),
            ("latency p50, batch 1 (ms)", "latency_p50_ms", 1, "{:.1f}"), ("throughput, batch 64 (/s)", "throughput_per_s", 1, "{:.0f}"),
            ("test accuracy", "accuracy", 1, "{:.3f}"), ("macro-F1", "macro_f1", 1, "{:.3f}"),
            ("OOS AUROC (MSP)", "ood.msp.auroc", 1, "{:.3f}"), ("OOS AUROC (Mahalanobis)", "ood.mahalanobis.auroc", 1, "{:.3f}")]
    lines = ["| | teacher | student | student int8 (not stored) |", "|---|---:|---:|---:|"]
    names = {m.name for m in job.metrics}
    for label, name, scale, fmt in rows:
        # Latency and throughput from the alternating measurement (best of rounds), the rest from evaluation.
        timed = name in ("latency_p50_ms", "throughput_per_s")
        keys = [f"speed.{who}.{name}" if timed else f"{prefix}{name}" for who, prefix in SIDES]
        cells = [fmt.format(value(job, key) * scale) if key in names else "" for key in keys]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    teacher_f1, student_f1 = by_slice(job, "teacher.slice_f1"), by_slice(job, "slice_f1")
    lines += ["", "Per-domain F1 (teacher -> student): " + ", ".join(f"{d} {teacher_f1[d]:.3f} -> {student_f1[d]:.3f}" for d in sorted(student_f1)),
              "", (f"size_ratio {value(job, 'size_ratio'):.2f}x smaller, throughput_ratio {value(job, 'throughput_ratio'):.2f}x "
                   f"(**improvement**), accuracy_retained {value(job, 'accuracy_retained'):.1%}; "
                   f"trained on {value(job, 'distill.train_rows'):.0f} rows ({value(job, 'distill.epochs_run'):.1f} epochs, "
                   f"early stopping on validation macro-F1).")]
    if "speed.int8.throughput_per_s" in names:
        lines.append(f"int8 student: {value(job, 'speed.int8.throughput_per_s') / value(job, 'speed.teacher.throughput_per_s'):.2f}x the teacher's "
                     f"throughput at {value(job, 'int8.accuracy') / value(job, 'teacher.accuracy'):.1%} of its accuracy.")
    return lines


SMOKE = ("One seed on two domains of `small`: a smoke-scale run of the two payloads chained, not a verdict. The settled "
         "figures (3 seeds each, whole test split, against controls) are in the sections \"Curriculum, settled\" and \"Distillation\".")


def verdict_lines(jobs: dict, plan: dict) -> list[str]:
    """The issue's targets, each with what this run measured."""
    curriculum, distill = jobs["curriculum"], jobs["distill"]
    target = plan["curriculum"]["target_accuracy"]
    steps = {arm: steps_to(curriculum, arm, target) for arm in ("uniform", "curriculum")}
    if all(v.isdigit() for v in steps.values()):
        share = int(steps["curriculum"]) / int(steps["uniform"])
        reach = f"{steps['curriculum']} vs {steps['uniform']} steps ({share:.0%}): {'met' if share <= 0.8 else 'not met'}"
    else:
        reach = f"curriculum {steps['curriculum']}, uniform {steps['uniform']}: not met"
    checks = [("size on disk >= 2x smaller", value(distill, "size_ratio"), 2.0, "{:.2f}x"),
              ("throughput at batch 64 >= 2.5x (fp32 student)", value(distill, "throughput_ratio"), 2.5, "{:.2f}x"),
              ("accuracy >= 97% of the teacher's", value(distill, "accuracy_retained"), 0.97, "{:.1%}")]
    lines = [(f"- Curriculum reaches val {target:.0%} in at most 80% of uniform's steps: {reach} "
              f"(validation every {plan['curriculum']['eval_every']} steps, so the resolution is coarse).")]
    lines += [f"- {name}: {fmt.format(got)}: {'met' if got >= goal else 'not met'}" for name, got, goal, fmt in checks]
    return lines


def report(jobs: dict, seconds: dict[str, float], plan: dict, domains: int) -> str:
    price = float(os.environ.get("WORKER_PRICE_PER_HOUR", "1.00"))
    total = sum(seconds.values())
    return "\n".join([
        (f"CLINC150 `small`, first {domains} domains ({len(by_slice(jobs['distill'], 'slice_f1'))} in the report), "
         f"MiniLM-L6, CPU, {_threads()} torch threads, on a machine shared with other jobs. "
         "Re-run: `python -m bench.curriculum_distill` from the repository root."),
        "", "### Curriculum vs uniform vs random control (equal steps)", "", *curriculum_lines(jobs["curriculum"], plan),
        "", "### Distillation (teacher: the curriculum job's model)", "", *distill_lines(jobs["distill"]),
        "", "### Against the targets", "", SMOKE, "", *verdict_lines(jobs, plan),
        "", "### Wall time and cost", "",
        "Wall times are on cores shared with other jobs and move with their load; the arms' accuracies are deterministic.", "",
        " | ".join(f"{name} {s / 60:.1f} min" for name, s in seconds.items())
        + f" | total {total / 60:.1f} min, ${price * total / 3600:.2f} at WORKER_PRICE_PER_HOUR=${price:.2f}",
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short smoke run of the same code path")
    parser.add_argument("--domains", type=int, default=2, help="how many CLINC150 domains (15 intents each)")
    parser.add_argument("--write", action="store_true", help="write the section into docs/BENCHMARKS.md")
    args = parser.parse_args()
    plan = QUICK if args.quick else FULL
    context = _context_module()
    with tempfile.TemporaryDirectory(prefix="budgetq-bench-") as root:
        data = write_subset(Path(root) / "data", args.domains)
        history, jobs, seconds = [], {}, {}
        params = {"curriculum": {**plan["curriculum"], "dataset": str(data)}, "distill": dict(plan["distill"])}
        for name in ("curriculum", "distill"):
            if name == "distill":
                params[name]["model_job"] = jobs["curriculum"].job_id
            start = time.perf_counter()
            jobs[name] = context.run_job(Path(root), name, params[name], history)
            seconds[name] = time.perf_counter() - start
            print(f"{name}: {seconds[name]:.0f} s", file=sys.stderr)
        body = report(jobs, seconds, plan, args.domains)
    print(body)
    if args.write:
        from bench.common import write_section

        write_section("Curriculum and distillation", body)


if __name__ == "__main__":
    main()
