"""Benchmark the prompt loop: CLINC150 zero-shot with MiniLM embeddings, seed template vs the best found.

Runs the ``prompt_loop`` initiative in process (the tests' ``InProcessContext``: no broker, no
database) on CLINC150 ``full``: selection on the 3,000 validation queries, one final pass on the
4,500 test queries. Prints a markdown section and writes it to docs/BENCHMARKS.md. Dollars are
wall time at ``WORKER_PRICE_PER_HOUR`` (default $1.00 an hour), what the worker's meter would charge.

    python -m bench.prompt_loop            # 3 search seeds, about 8 minutes each on 2 CPU cores
    python -m bench.prompt_loop --quick    # a one-round smoke run of the same path
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Run as a script (python bench/prompt_loop.py), Python puts bench/ on the path rather than the
# repository root that `from bench...` and `from worker...` need.
sys.path[:] = [str(REPO)] + [p for p in sys.path if Path(p or ".").resolve() != REPO / "bench"]

# Templates differ by about a point; on 375 rows the sampling error is 2.4 points, so the first rung
# is half of validation (1500 -> 3000). With embeddings a rung costs the same at any size: the label
# prompts dominate, the inputs are embedded once.
FULL = {"dataset": "clinc150", "variant": "full", "scorer": "embedding", "rounds": 12, "candidates_per_round": 16,
        "parents": 6, "minibatch": 1500, "top_k": 3, "folds": 5, "seed_templates": ["a request about {label}"]}
QUICK = {**FULL, "rounds": 1, "candidates_per_round": 4}


def _context_module():
    # The in-process JobContext lives with the tests; load it by path so bench and tests share it.
    spec = importlib.util.spec_from_file_location("ml_test_context", REPO / "tests" / "ml" / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def measure(params: dict) -> tuple[object, float]:
    """Run one prompt_loop job; return its settled context and wall seconds."""
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as root:
        job = _context_module().run_job(Path(root), "prompt_loop", params, [])
        top = json.loads(Path(job.artifacts["top_prompts.json"]).read_text())
    job.top_prompts = top
    return job, time.perf_counter() - start


def last(job, name: str, slice=None) -> float:
    return [m.value for m in job.metrics if m.name == name and m.slice == slice][-1]


RESULTS = REPO / "bench" / "results" / "prompt_loop"


def summary(job, seconds: float, params: dict) -> dict:
    """What the report needs from one seed's job, small enough to keep in the repository."""
    first_rung = f"n{params['minibatch']}"
    rows = [("seed", job.top_prompts["seed"])] + [(f"top{p['rank']}", p) for p in job.top_prompts["prompts"]]
    return {"seed": params["seed"], "seconds": seconds, "scorer": params["scorer"],
            "improvement": last(job, "improvement"), "ci_low": last(job, "improvement.ci_low"),
            "ci_high": last(job, "improvement.ci_high"), "se": last(job, "improvement_se"),
            "candidates_tried": last(job, "candidates_tried"),
            "spread": {k: last(job, f"spread_{k}", first_rung) for k in ("std", "min", "max", "iqr")},
            "templates": [{"name": name, "template": p["template"], "origin": p["origin"], "val_accuracy": p["val_accuracy"],
                           "fold_std": last(job, "val_fold_std", name), "test_accuracy": p["test_accuracy"]} for name, p in rows]}


def report(runs: list[dict], params: dict) -> str:
    """The markdown section: per seed, the seed template against the best found on test, then across seeds."""
    from core.stats import mean_ci

    price = float(os.environ.get("WORKER_PRICE_PER_HOUR", "1.00"))
    lines = [
        ("Zero-shot intent classification on CLINC150 (`full`, 150 intents) by cosine similarity between a "
        "query's MiniLM-L6 embedding and each label rendered through a template. Each search seed runs the whole "
        f"loop: {params['rounds']} rounds of {params['candidates_per_round']} candidates on validation, successive "
        f"halving from {params['minibatch']} to 3,000 rows. Selection reads validation only; the seed template and the "
        f"final top-{params['top_k']} are then scored once on the 4,500 test queries. The interval is the payload's "
        "1,000-round paired bootstrap over test queries (best minus seed template). Re-run: "
        "`python -m bench.prompt_loop --seeds 3` (each seed's result is kept in `bench/results/prompt_loop/`)."),
        "",
        "| search seed | best template (origin) | val acc | seed template test acc | best test acc | improvement, points [95% CI] | candidates | wall |",
        "|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for run in runs:
        seed_row, best = run["templates"][0], run["templates"][1]
        lines.append(f"| {run['seed']} | `{best['template']}` ({best['origin']}) | {best['val_accuracy']:.3f} | "
                     f"{seed_row['test_accuracy']:.3f} | {best['test_accuracy']:.3f} | "
                     f"{run['improvement']:+.2f} [{run['ci_low']:+.2f}, {run['ci_high']:+.2f}] | {run['candidates_tried']:.0f} | "
                     f"{run['seconds']:.0f} s |")
    gain = mean_ci([r["improvement"] for r in runs])
    spread = ", ".join(f"seed {r['seed']}: std {r['spread']['std']:.3f} (min {r['spread']['min']:.3f}, max {r['spread']['max']:.3f})"
                       for r in runs)
    across = (f"{gain.mean:+.2f} ± {gain.half_width:.2f} points (95% t-interval over {gain.n} search seeds)"
              if gain.half_width is not None else f"{gain.mean:+.2f} points (1 seed)")
    bests = {r["templates"][1]["template"] for r in runs}
    if len(runs) > 1 and len(bests) == 1:
        # Same template, same test rows: the seeds agree exactly, and only the test sample is uncertain.
        across += (f"; every search seed found the same best template (`{bests.pop()}`), so the spread across seeds "
                   "is nil and the uncertainty left is the test sample's: read the paired bootstrap interval per seed")
    total = sum(r["seconds"] for r in runs)
    lines += [
        "",
        f"- **improvement** (best found minus the seed template, test): {across}.",
        f"- first-rung validation accuracy spread over every candidate ({params['minibatch']} rows): {spread}",
        f"- wall time {total:.0f} s in all; ${total / 3600 * price:.4f} at ${price:.2f}/h",
        f"- machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores shared with other work, no GPU",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one short round; numbers meaningless, nothing kept")
    parser.add_argument("--seeds", type=int, default=3, help="search seeds, each a whole run")
    args = parser.parse_args()
    params = QUICK if args.quick else FULL
    runs = []
    for seed in range(args.seeds):
        path = RESULTS / f"seed{seed}.json"
        if path.exists() and not args.quick:
            runs.append(json.loads(path.read_text()))
            continue
        job, seconds = measure({**params, "seed": seed})
        runs.append(summary(job, seconds, {**params, "seed": seed}))
        if not args.quick:
            RESULTS.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(runs[-1], indent=1))
        print(f"seed {seed}: {runs[-1]['improvement']:+.2f} points, {seconds:.0f} s", file=sys.stderr)
    body = report(runs, params)
    print(f"## Prompt loop\n\n{body}")
    if not args.quick:
        from bench.common import write_section

        write_section("Prompt loop", body)


if __name__ == "__main__":
    main()
