"""The markdown of bench/distill.py's ``## Distillation`` section."""

from __future__ import annotations

import json
from pathlib import Path

PRICE_PER_HOUR = 1.00  # dollars: wall seconds / 3600


def dollars(seconds: float) -> str:
    return f"${PRICE_PER_HOUR * seconds / 3600:.3f}"


def render(*, teacher_label: str, teacher_dir: Path, points, extension: set, teacher_val: float, speed: dict, chosen, seeds, int8: dict, clock: dict,
           common: dict, threads: int, workers: int, seed_workers: int, targets: dict) -> str:
    from core.stats import mean_ci

    metrics_file = teacher_dir / "teacher_metrics.json"
    teacher = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
    readme = teacher_dir / "README.txt"
    built = [line for line in readme.read_text().splitlines() if line.startswith("Trained")] if readme.is_file() else []
    rows = [m for m, *_ in seeds]
    retained = mean_ci([m["accuracy_retained"] for m in rows])
    throughput = mean_ci([m["throughput_ratio"] for m in rows])
    size = mean_ci([m["size_ratio"] for m in rows])
    lines = [
        f"Teacher: {teacher_label} (cached at `{teacher_dir}`, see its README.txt): test accuracy "
        f"{teacher.get('accuracy', float('nan')):.4f}, validation accuracy {teacher_val:.4f}"
        f"{' (' + built[0].rstrip('.') + ')' if built else ''}. CPU fp32, {threads} torch "
        f"thread(s) per process, 2 cores shared with other jobs; configurations trained {workers} at a time. "
        "Re-run: `python -m bench.distill --write` (`--teacher DIR` reuses a teacher; a missing one is built).",
        "",
        f"Speed is judged on **throughput at batch {common['serving_batch']}** (the serving batch; `improvement` = "
        "student / teacher), with latency p50 at batch 1 beside it; tokenization is inside both timings. Teacher and "
        "students take turns in one process, best of "
        f"{common['speed_rounds']} rounds each.",
        "", "### Speed and size per architecture (pruned vocabulary)", "", *speed_table(speed),
        "", "### Frontier, on the validation split only", "",
        *frontier_table([p for p in points if p.name not in extension], teacher_val, speed),
        "", f"**Chosen on validation:** {chosen.name} (rule: of the configurations at least "
        f"{targets['size_ratio']:.0f}x smaller and {targets['throughput_ratio']:.0f}x faster, the one keeping the most "
        "of the teacher's validation accuracy). The test split is read only from here on, once per seed.",
        *(["", "Run after that selection, on validation only, taking no part in it: the logit-only controls at the "
           "larger budget, and three layers on all the training data.", "",
           *frontier_table([p for p in points if p.name in extension], teacher_val, speed)] if extension else []),
        "", f"### {chosen.name} on test ({len(rows)} seeds, the `distill` payload)", "",
        f"The seeds ran {seed_workers} at a time, so each job timed its teacher and student while the others "
        "trained: their speed columns are noisier than the two tables measured alone (above and below).", "",
        *seed_table(seeds),
        "",
        f"Accuracy retained {100 * retained.mean:.1f}% (95% CI {_ci(retained, 100, '%')}), size {size.mean:.2f}x "
        f"smaller, throughput {throughput.mean:.2f}x (95% CI {_ci(throughput, 1, 'x')}).",
        "", "### Int8 serving options (one seed-0 student; not stored, artifacts stay safetensors)", "", *int8_table(int8),
        "", "### Against the targets (CPU fp32)", "",
        *verdict_lines(retained, size, throughput, targets),
        "", "### Wall time and cost", "",
        "| phase | wall | at $1.00/h |", "|---|---:|---:|",
        *[f"| {name} | {s / 60:.1f} min | {dollars(s)} |" for name, s in clock.items()],
        f"| total | {sum(clock.values()) / 60:.1f} min | {dollars(sum(clock.values()))} |",
    ]
    return "\n".join(lines)


def _ci(estimate, scale: float, unit: str) -> str:
    if estimate.low is None:
        return "n/a (one seed)"
    return f"{scale * estimate.low:.1f}-{scale * estimate.high:.1f}{unit}" if unit == "%" else f"{estimate.low:.2f}-{estimate.high:.2f}{unit}"


def speed_table(speed: dict) -> list[str]:
    teacher = speed["teacher"]
    lines = ["| model | size on disk | x smaller | latency p50, batch 1 | x lower | throughput | x faster |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for who, s in speed.items():
        lines.append(f"| {who} | {s['size_bytes'] / 1e6:.1f} MB | {teacher['size_bytes'] / s['size_bytes']:.2f} | "
                     f"{s['latency_p50_ms']:.1f} ms | {teacher['latency_p50_ms'] / s['latency_p50_ms']:.2f} | "
                     f"{s['throughput_per_s']:.0f}/s | {s['throughput_per_s'] / teacher['throughput_per_s']:.2f} |")
    return lines


def _terms(params: dict) -> str:
    parts = []
    if params.get("hidden_weight", 1.0) > 0:
        parts.append("hidden")
    if params.get("attention_weight", 1.0) > 0:
        parts.append("attention" + (" (last)" if params.get("attention_layers") == "last" else ""))
    if params.get("value_weight", 0.0) > 0:
        parts.append("value rel.")
    return "logits + labels" + "".join(f" + {p}" for p in parts)


def frontier_table(points, teacher_val: float, speed: dict) -> list[str]:
    lines = ["| configuration | layers (map) | losses | rows x epochs | val accuracy | retained | x smaller | x faster | wall | cost |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for p in sorted(points, key=lambda p: (p.params["layers"], p.train_rows, p.name)):
        s, t = speed[f"L{p.params['layers']}"], speed["teacher"]
        lines.append(
            f"| {p.name} | {p.params['layers']} ({p.params.get('layer_map', 'uniform')}) | {_terms(p.params)} | "
            f"{p.train_rows // p.params.get('epochs', 1)} x {p.params.get('epochs', 1)} | {p.val_accuracy:.4f} | "
            f"{100 * p.val_accuracy / teacher_val:.1f}% | {t['size_bytes'] / s['size_bytes']:.2f} | "
            f"{s['throughput_per_s'] / t['throughput_per_s']:.2f} | {p.seconds / 60:.1f} min | {dollars(p.seconds)} |")
    return lines


def seed_table(seeds) -> list[str]:
    lines = ["| seed | test accuracy (teacher) | retained | accuracy delta | macro-F1 delta | x smaller | x faster (serving batch) | x lower latency (batch 1) | val retained | wall | cost |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for seed, (m, seconds, _) in enumerate(seeds):
        lines.append(
            f"| {seed} | {m['accuracy']:.4f} ({m['teacher.accuracy']:.4f}) | {100 * m['accuracy_retained']:.1f}% | "
            f"{m['overall.accuracy_delta']:+.2f} pts | {m['overall.macro_f1_delta']:+.2f} pts | {m['size_ratio']:.2f} | "
            f"{m['throughput_ratio']:.2f} | {m['latency_ratio']:.2f} | {100 * m['val.accuracy_retained']:.1f}% | "
            f"{seconds / 60:.1f} min | {dollars(seconds)} |")
    return lines


def int8_table(int8: dict) -> list[str]:
    teacher = int8["teacher"]
    lines = ["| model | test accuracy | latency p50, batch 1 | throughput | x faster than the teacher |", "|---|---:|---:|---:|---:|"]
    for who, s in int8.items():
        lines.append(f"| {who} | {s['accuracy']:.4f} | {s['latency_p50_ms']:.1f} ms | {s['throughput_per_s']:.0f}/s | "
                     f"{s['throughput_per_s'] / teacher['throughput_per_s']:.2f} |")
    return lines


def verdict_lines(retained, size, throughput, targets: dict) -> list[str]:
    checks = [(f"accuracy >= {targets['accuracy_retained']:.0%} of the teacher's (test, mean of seeds)", retained.mean,
               targets["accuracy_retained"], "{:.1%}"),
              (f"size on disk >= {targets['size_ratio']:.0f}x smaller", size.mean, targets["size_ratio"], "{:.2f}x"),
              (f"throughput >= {targets['throughput_ratio']:.0f}x the teacher's (fp32)", throughput.mean,
               targets["throughput_ratio"], "{:.2f}x")]
    return [f"- {name}: {fmt.format(got)}: {'met' if got >= goal else 'not met'}" for name, got, goal, fmt in checks]
