"""Benchmark the improvement loop on CLINC150: baseline -> robustness -> augment (with its control).

Trains the pretrained MiniLM-L6 on CLINC150's imbalanced training split (25-100 queries per intent),
evaluates on the full test split (the three variants share it), and prints a markdown section:
per-domain F1, robustness drops, out-of-scope AUROC (MSP and Mahalanobis), the augmentation gain
against an equal-compute control on the targeted domains, and wall time. The jobs run in process
through the tests' ``InProcessContext``: no broker, no database, the same initiative code.

    python -m bench.ml_loop            # about 15 minutes on 2 CPU cores
    python -m bench.ml_loop --quick    # a few minutes' smoke run of the same path (numbers meaningless)
"""

from __future__ import annotations

import argparse
import importlib.util
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Run as a script (python bench/ml_loop.py), Python puts bench/ on the path rather than the
# repository root that `from bench...` and `from worker...` need.
sys.path[:] = [str(REPO)] + [p for p in sys.path if Path(p or ".").resolve() != REPO / "bench"]

FULL = {
    # 450 steps of 32 is about 1.4 epochs of the 10,525 training rows: what fits the time budget on 2
    # CPU cores, with a learning rate on the high side for MiniLM so its new 150-way head trains in time.
    "baseline": {"dataset": "clinc150", "variant": "imbalanced", "steps": 450, "lr": 2e-4, "checkpoint_every": 150},
    "robustness": {"max_rows": 1500, "failures_per_perturbation": 20},
    "augment": {"k": 3, "variants": 1, "steps": 150, "lr": 5e-5, "checkpoint_every": 50},
}
QUICK = {
    "baseline": {**FULL["baseline"], "steps": 10, "latency_samples": 5},
    "robustness": {"max_rows": 100, "perturbations": "keyboard,synonym,casing"},
    "augment": {**FULL["augment"], "k": 1, "steps": 5},
}


def _context_module():
    # The in-process JobContext lives with the tests (tests/ml/conftest.py); load it by path so the
    # benchmark and the tests run the very same context.
    spec = importlib.util.spec_from_file_location("ml_test_context", REPO / "tests" / "ml" / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_loop(plan: dict, root: Path) -> tuple[dict, dict[str, float]]:
    """Run the three jobs in order; return their settled contexts and wall seconds each."""
    context = _context_module()
    history, jobs, seconds = [], {}, {}
    for name, params in plan.items():
        start = time.perf_counter()
        jobs[name] = context.run_job(root, name, params, history)
        seconds[name] = time.perf_counter() - start
        print(f"{name}: {seconds[name]:.0f} s", file=sys.stderr)
    return jobs, seconds


def value(job, name: str, slice=None) -> float:
    found = [m.value for m in job.metrics if m.name == name and m.slice == slice]
    return found[-1]


def by_slice(job, name: str) -> dict[str, float]:
    return {m.slice: m.value for m in job.metrics if m.name == name and m.slice is not None}


def domain_table(baseline, augment) -> list[str]:
    support, f1 = by_slice(baseline, "slice_support"), by_slice(baseline, "slice_f1")
    arms = {arm: by_slice(augment, f"{arm}.slice_f1") for arm in ("control", "augmented")}
    targeted = by_slice(augment, "targeted_rank")
    lines = ["| domain | test rows | baseline F1 | control F1 | augmented F1 | targeted |", "|---|---:|---:|---:|---:|:-:|"]
    for domain in sorted(f1, key=f1.get):
        lines.append(
            f"| {domain} | {support[domain]:.0f} | {f1[domain]:.3f} | {arms['control'][domain]:.3f} | "
            f"{arms['augmented'][domain]:.3f} | {'yes' if domain in targeted else ''} |"
        )
    lines.append(f"| **all (macro-F1)** | | {value(baseline, 'macro_f1'):.3f} | {value(augment, 'control.macro_f1'):.3f} | "
                 f"{value(augment, 'augmented.macro_f1'):.3f} | |")
    return lines


def robustness_table(robustness, perturbations) -> list[str]:
    weakest = sorted(by_slice(robustness, "weakness_rank").items(), key=lambda kv: kv[1])[0][0]
    lines = [f"| perturbation | accuracy drop (all) | invariance (all) | drop on {weakest} (weakest) |", "|---|---:|---:|---:|"]
    for name in perturbations:
        lines.append(
            f"| {name} | {100 * value(robustness, f'{name}.accuracy_drop'):.1f} pts | "
            f"{value(robustness, f'{name}.invariance'):.3f} | {100 * value(robustness, f'{name}.accuracy_drop', weakest):.1f} pts |"
        )
    return lines


def ood_table(baseline) -> list[str]:
    lines = ["| score | AUROC | FPR@95 | in-scope accuracy | OOS recall |", "|---|---:|---:|---:|---:|"]
    for method, label in (("msp", "max softmax prob."), ("mahalanobis", "Mahalanobis")):
        cells = [value(baseline, f"ood.{method}.{k}") for k in ("auroc", "fpr95", "in_scope_accuracy", "oos_recall")]
        lines.append(f"| {label} | " + " | ".join(f"{c:.3f}" for c in cells) + " |")
    return lines


def augment_lines(augment) -> list[str]:
    targeted = sorted(by_slice(augment, "targeted_rank"), key=by_slice(augment, "targeted_rank").get)
    f1 = {arm: value(augment, f"{arm}.targeted_f1") for arm in ("baseline", "control", "augmented")}
    return [
        f"Targeted (weakest first, from the robustness ranking): {', '.join(targeted)}; "
        f"{value(augment, 'aug.kept'):.0f} augmented rows kept.",
        "",
        "| | baseline | control (same steps, no augmentation) | augmented |",
        "|---|---:|---:|---:|",
        f"| targeted-domain macro-F1 | {f1['baseline']:.3f} | {f1['control']:.3f} | {f1['augmented']:.3f} |",
        "",
        f"**improvement** (augmented - control, targeted macro-F1): {value(augment, 'improvement'):+.2f} points.",
    ]


def report(jobs: dict, seconds: dict[str, float], plan: dict) -> str:
    """The markdown section."""
    baseline, robustness, augment = jobs["baseline"], jobs["robustness"], jobs["augment"]
    perturbations = sorted({m.name.split(".")[0] for m in robustness.metrics if m.name.endswith(".invariance")})
    lines = [
        "CLINC150 (imbalanced train, full test), MiniLM-L6 on CPU. Re-run: `.venv/bin/python -m bench.ml_loop`.",
        "",
        f"{platform.processor() or platform.machine()}, {_threads()} torch threads. Baseline: {plan['baseline']['steps']} steps; "
        f"robustness on {plan['robustness']['max_rows']} sampled test rows; augment: {plan['augment']['steps']} steps per arm.",
        "",
        f"Baseline test accuracy {value(baseline, 'accuracy'):.3f}, macro-F1 {value(baseline, 'macro_f1'):.3f}; "
        f"latency p50 (batch 1) {value(baseline, 'latency_p50_ms'):.1f} ms, throughput (batch 64) "
        f"{value(baseline, 'throughput_per_s'):.0f}/s, {value(baseline, 'param_count') / 1e6:.1f} M parameters, "
        f"{value(baseline, 'size_bytes') / 1e6:.0f} MB on disk.",
        "", "### Per-domain F1", "", *domain_table(baseline, augment),
        "", "### Robustness", "", *robustness_table(robustness, perturbations),
        "", "### Out-of-scope detection (baseline)", "", *ood_table(baseline),
        "", "### Targeted augmentation", "", *augment_lines(augment),
        "", "### Wall time and cost", "", *cost_lines(seconds),
    ]
    return "\n".join(lines)


def cost_lines(seconds: dict[str, float]) -> list[str]:
    """Wall time per initiative and what a worker at WORKER_PRICE_PER_HOUR charges for it."""
    from core.money import format_micros
    from core.settings import load_settings

    price = load_settings().price_micros_per_hour
    lines = [f"At {format_micros(price)}/hour (`WORKER_PRICE_PER_HOUR`), one slot:", "",
             "| initiative | wall time | charged |", "|---|---:|---:|"]
    for name, s in [*seconds.items(), ("total", sum(seconds.values()))]:
        lines.append(f"| {name} | {s / 60:.1f} min | {format_micros(int(price * s / 3600))} |")
    return lines


def _threads() -> int:
    import torch

    return torch.get_num_threads()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short smoke run of the same code path")
    args = parser.parse_args()
    plan = QUICK if args.quick else FULL
    with tempfile.TemporaryDirectory(prefix="budgetq-bench-") as root:
        jobs, seconds = run_loop(plan, Path(root))
        body = report(jobs, seconds, plan)
        print(body)
        if not args.quick:
            from bench.common import write_section

            write_section("ML improvement loop", body)


if __name__ == "__main__":
    main()
