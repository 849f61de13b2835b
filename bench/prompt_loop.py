"""Benchmark the prompt loop: CLINC150 zero-shot with MiniLM embeddings, seed template vs the best found.

Runs the ``prompt_loop`` initiative in process (the tests' ``InProcessContext``: no broker, no
database) on CLINC150 ``full``: selection on the 3,000 validation queries, one final pass on the
4,500 test queries. Prints a markdown section and writes it to docs/BENCHMARKS.md. Dollars are
wall time at ``WORKER_PRICE_PER_HOUR`` (default $1.00 an hour), what the worker's meter would charge.

    python -m bench.prompt_loop            # about 8 minutes on 2 CPU cores
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


def report(job, seconds: float, params: dict) -> str:
    """The markdown section: test accuracy of seed and top-k, improvement, spread, cost."""
    price = float(os.environ.get("WORKER_PRICE_PER_HOUR", "1.00"))
    first_rung = f"n{params['minibatch']}"
    seed = job.top_prompts["seed"]
    lines = [
        ("Zero-shot intent classification on CLINC150 (`full`, 150 intents) by cosine similarity between a "
        "query's MiniLM-L6 embedding and each label rendered through a template. The loop searches templates "
        f"on validation ({params['rounds']} rounds of {params['candidates_per_round']} candidates, successive "
        f"halving from {params['minibatch']} to 3,000 rows); only the final top-{params['top_k']} and the seed "
        "touch the 4,500 test queries. Re-run: `python -m bench.prompt_loop`."),
        "",
        "| template | origin | val acc | fold std | test acc |",
        "|---|---|---:|---:|---:|",
    ]
    for name, p in [("seed", seed)] + [(f"top{p['rank']}", p) for p in job.top_prompts["prompts"]]:
        std = last(job, "val_fold_std", name)
        lines.append(f"| `{p['template']}` ({name}) | {p['origin']} | {p['val_accuracy']:.3f} | {std:.3f} | {p['test_accuracy']:.3f} |")
    lines += [
        "",
        f"- **improvement** (top 1 minus seed, test): **{last(job, 'improvement'):+.2f} points** "
        f"(paired standard error {last(job, 'improvement_se'):.2f})",
        (f"- candidates tried: {last(job, 'candidates_tried'):.0f}; first-rung accuracy spread over all of them "
        f"({params['minibatch']} rows): std {last(job, 'spread_std', first_rung):.3f}, min {last(job, 'spread_min', first_rung):.3f}, "
        f"max {last(job, 'spread_max', first_rung):.3f}, IQR {last(job, 'spread_iqr', first_rung):.3f}"),
        f"- wall time {seconds:.0f} s; cost ${seconds / 3600 * price:.4f} at ${price:.2f}/h",
        f"- machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, no GPU",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one short round; numbers meaningless")
    args = parser.parse_args()
    params = QUICK if args.quick else FULL
    job, seconds = measure(params)
    body = report(job, seconds, params)
    print(f"## Prompt loop\n\n{body}")
    if not args.quick:
        from bench.common import write_section

        write_section("Prompt loop", body)


if __name__ == "__main__":
    main()
