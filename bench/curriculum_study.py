"""Settle the curriculum question: seeds x arms on full and imbalanced CLINC150, equal steps each.

Arms, all through the payload's own ``train_arm`` (``worker/initiatives/curriculum/``) from the
pretrained MiniLM-L6 with the same seed's head: ``uniform`` (the seeded shuffle), ``curriculum``
(rank pressure annealed to uniform), ``selective`` (the stronger variant: Selective-Backprop-style
sampling by loss percentile ** beta, constant) and ``random`` (the rank schedule on shuffled
losses: the control for "any skew helps"). None of them runs a forward pass of its own.

Every arm trains exactly ``--steps`` steps (no early stopping: equal compute) and is validated every
``--eval-every`` steps on a fixed stratified part of the validation split, which gives its steps to
each accuracy target. The test split is read once per trained model, after training.

Each run's result goes to ``bench/results/curriculum/<variant>-<arm>-s<seed>-<steps>.json`` as it finishes,
so the study resumes where it stopped, and two lanes (one per variant) can run side by side:

    python -m bench.curriculum_study --variant full --steps 480         # one lane
    python -m bench.curriculum_study --variant imbalanced --steps 720   # the other
    python -m bench.curriculum_study --report                           # writes the section of docs/BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

from bench.common import REPO, run_dates, write_section
from specs.curriculum import Params

RESULTS = REPO / "bench" / "results" / "curriculum"
ARMS = {"uniform": ("uniform", "rank"), "curriculum": ("curriculum", "rank"),
        "selective": ("curriculum", "selective"), "random": ("random", "rank")}  # name: (payload arm, sampler)
VARIANTS = ("full", "imbalanced")
TARGETS = (0.5, 0.6, 0.7, 0.8, 0.85, 0.9)
TARGET = Params.target_accuracy  # the payload's default: the target the "steps to target" means
VAL_PER_INTENT = 10


class _Context:
    """What ``train_arm`` asks of a job context: metrics kept in memory, a private checkpoint folder."""

    def __init__(self, folder: Path) -> None:
        self.checkpoint_dir, self.metrics = folder, []

    def log_metric(self, name: str, value: float, step: int | None = None, **_) -> None:
        self.metrics.append((name, step, float(value)))

    def should_stop(self) -> bool:
        return False

    def progress(self, **_) -> None:
        pass

    def curve(self, name: str) -> list[tuple[int, float]]:
        return sorted((step, value) for metric, step, value in self.metrics if metric == name)


def val_part(dataset):
    """The first ``VAL_PER_INTENT`` validation rows of each intent: the curve's fixed yardstick."""
    seen, keep = {}, []
    for i, label in enumerate(dataset.val.labels):
        if seen.get(label, 0) < VAL_PER_INTENT:
            seen[label] = seen.get(label, 0) + 1
            keep.append(i)
    return dataclasses.replace(dataset, val=dataset.val.pick(keep))


def run_one(variant: str, arm: str, seed: int, args) -> dict:
    """Train one arm from scratch for ``args.steps`` steps, then read the test split once."""
    from worker.initiatives.curriculum import train_arm
    from worker.ml.evaluate import accuracy, infer, macro_f1
    from worker.ml.lineage import DataSpec
    from worker.ml.modeling import load_classifier
    from worker.ml.train import seed_everything

    payload_arm, sampler = ARMS[arm]
    params = Params(variant=variant, steps=args.steps, eval_every=args.eval_every, lr=args.lr, batch_size=32,
                    seed=seed, sampler=sampler, beta=args.beta, checkpoint_every=10**6, quantile_every=10**6)
    dataset = val_part(DataSpec("clinc150", variant, "domain", seed).load())
    seed_everything(seed)
    model, tokenizer = load_classifier(params.model, dataset.labels)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="budgetq-curriculum-") as folder:
        ctx = _Context(Path(folder))
        train_arm(model, tokenizer, dataset, payload_arm, params, ctx)
    trained = time.perf_counter() - start
    truth = dataset.label_ids(dataset.test)
    predicted = infer(model, tokenizer, dataset.test.texts, max_length=params.max_length).predictions()
    return {"variant": variant, "arm": arm, "seed": seed, "date": date.today().isoformat(), "steps": args.steps, "eval_every": args.eval_every,
            "lr": args.lr, "beta": args.beta, "train_rows": len(dataset.train), "val_rows": len(dataset.val),
            "val_accuracy": ctx.curve(f"{payload_arm}.val_accuracy"), "test_accuracy": accuracy(truth, predicted),
            "test_macro_f1": macro_f1(truth, predicted), "train_seconds": trained,
            "seconds": time.perf_counter() - start, "threads": _threads(), "predictions": list(map(int, predicted))}


def _threads() -> int:
    import torch

    return torch.get_num_threads()


def lane(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    RESULTS.mkdir(parents=True, exist_ok=True)
    order = [(seed, arm) for seed in range(args.seeds) for arm in ARMS]
    for seed, arm in reversed(order) if args.reverse else order:
        path = RESULTS / f"{args.variant}-{arm}-s{seed}-{args.steps}.json"
        claim = path.with_suffix(".running")  # another lane on the same variant leaves this run alone
        if path.exists() or claim.exists():
            continue
        claim.write_text(str(os.getpid()))
        try:
            result = run_one(args.variant, arm, seed, args)
            path.write_text(json.dumps(result))
        finally:
            claim.unlink()
        print(f"{path.name}: test acc {result['test_accuracy']:.4f}, {result['seconds'] / 60:.1f} min", file=sys.stderr)


def steps_to(curve: list, target: float):
    return next((step for step, acc in curve if acc >= target), None)


def report() -> str:
    runs = [json.loads(p.read_text()) for p in sorted(RESULTS.glob("*.json"))]
    price = float(os.environ.get("WORKER_PRICE_PER_HOUR", "1.00"))
    truth = {}
    for variant in {r["variant"] for r in runs}:
        from worker.ml.lineage import DataSpec

        dataset = DataSpec("clinc150", variant, "domain", 0).load()
        truth[variant] = dataset.label_ids(dataset.test)
    rows = {r["variant"]: r["train_rows"] for r in runs}
    longest = {v: max(r["steps"] for r in runs if r["variant"] == v) for v in rows}
    first = runs[0]
    lines = [
        (f"Pretrained MiniLM-L6, CPU fp32, {first['threads']} torch thread per run, two runs at a time on 2 cores shared with "
         f"other work; {run_dates(runs)}. Every arm of a budget trains exactly that many steps of "
         f"batch 32 (lr {first['lr']:g}, warmup 10%, linear decay to zero at the last step): equal compute, no early stopping. "
         f"Validation accuracy every {first['eval_every']} steps on {VAL_PER_INTENT} rows per intent of the validation split "
         f"({first['val_rows']} rows); the test split (4,500 rows, every intent) is read once per trained model. Arms: "
         "`uniform` (seeded shuffle), `curriculum` (loss-rank pressure s_max 100 annealed linearly to uniform over the first "
         "half), `selective` (the stronger variant: probability proportional to loss percentile ** "
         f"{first['beta']:g}, after Selective-Backprop, constant), `random` (the rank schedule on shuffled losses). All four read "
         f"the losses the training step computes anyway. The target is validation accuracy {TARGET:.0%} (the payload's "
         f"`target_accuracy`); steps to {' and '.join(f'{t:.0%}' for t in TARGETS if t > TARGET)} are shown where reached. "
         "Re-run a budget: `python -m "
         "bench.curriculum_study --variant full --steps N` and `--variant imbalanced --steps N` side by side, then `--report`."),
    ]
    last = [r for r in runs if r["steps"] == longest[r["variant"]]]
    per_step = sum(r["seconds"] for r in last) / sum(r["steps"] for r in last)
    plateau = sum(3 * rows[v] / 32 for v in rows) * len(ARMS) * 3 * per_step / 3600
    lines += ["", ("**Cut, stated plainly:** the longest budgets are " + " and ".join(
        f"{steps} steps on `{v}` ({steps * 32 / rows[v]:.2f} epochs)" for v, steps in sorted(longest.items())) +
        f". {_baseline_reference()} Running every arm for 3 epochs on both variants with 3 seeds would cost about "
        f"{plateau:.0f} single-thread CPU hours at this study's {per_step:.2f} s per step, beyond a session on this machine. "
        "So these budgets answer the roadmap's *faster convergence* claim (steps to each validation target, and accuracy "
        "at an equal budget), not accuracy at a plateau.")]
    for variant in VARIANTS:
        for steps in sorted({r["steps"] for r in runs if r["variant"] == variant}, reverse=True):
            mine = [r for r in runs if r["variant"] == variant and r["steps"] == steps]
            lines += _variant(variant, mine, truth[variant])
    total = sum(r["seconds"] for r in runs)
    lines += ["", f"{len(runs)} runs, {total / 3600:.2f} CPU-thread hours of wall time, ${price * total / 3600:.2f} at "
              f"WORKER_PRICE_PER_HOUR=${price:.2f}."]
    return "\n".join(lines)


def _baseline_reference() -> str:
    """What the baseline's defaults reach on ``full``, from the augmentation study's trained baselines."""
    from bench.answers import value

    bases = [run for path in sorted((REPO / "bench" / "results" / "augment").glob("store-*.json"))
             for key, run in json.loads(path.read_text()).items() if key.startswith("full/base/")]
    if not bases:
        return "No trained `full` baseline is stored to compare with (run `python -m bench.augment_study`)."
    accuracy = sum(value(r, "accuracy") for r in bases) / len(bases)
    epochs = sum(value(r, "train.epochs_run") for r in bases) / len(bases)
    return (f"The baseline's defaults reach {100 * accuracy:.1f}% test accuracy on `full` after {epochs:.1f} epochs "
            f"({len(bases)} seeds, section \"Augmentation on a trained baseline\").")


def _variant(variant: str, mine: list[dict], truth) -> list[str]:
    """One variant at one budget: the table, the verdicts and the per-seed paired intervals."""
    from core.stats import mean_ci, t975
    from worker.ml.evaluate import accuracy, paired_bootstrap

    seeds, steps = sorted({r["seed"] for r in mine}), mine[0]["steps"]
    lines = ["", f"### `{variant}`, {steps} steps ({mine[0]['train_rows']:,} training rows, {steps * 32 / mine[0]['train_rows']:.2f} "
             f"epochs; seeds {', '.join(map(str, seeds))})", "",
             ((f"Mean ± 95% t-interval across seeds (t = {t975(len(seeds) - 1):.1f} for {len(seeds)} seeds)." if len(seeds) > 1 else
               "One seed so far: no interval.") + " Δ: the arm minus "
              "`uniform` on the same seed (paired), in points. Steps to a target: mean ± interval over the seeds that reached "
              f"it, then each seed's step (validation every {mine[0]['eval_every']} steps; - : not reached within {steps})."), "",
             "| arm | seeds | test accuracy (%) | test macro-F1 (%) | Δ accuracy vs uniform | " +
             " | ".join(f"steps to val {t:.0%}" for t in TARGETS) + " | wall per run |",
             "|---|---:|---:|---:|---:|" + "---:|" * len(TARGETS) + "---:|"]
    base = {r["seed"]: r for r in mine if r["arm"] == "uniform"}
    deltas, faster = {}, {}
    for arm in ARMS:
        done = sorted((r for r in mine if r["arm"] == arm), key=lambda r: r["seed"])
        if not done:
            continue
        acc = mean_ci([100 * r["test_accuracy"] for r in done])
        f1 = mean_ci([100 * r["test_macro_f1"] for r in done])
        delta = ""
        if arm != "uniform":
            deltas[arm] = mean_ci([100 * (r["test_accuracy"] - base[r["seed"]]["test_accuracy"]) for r in done if r["seed"] in base])
            delta = _fmt(deltas[arm], signed=True)
            pairs = [(steps_to(r["val_accuracy"], TARGET), steps_to(base[r["seed"]]["val_accuracy"], TARGET))
                     for r in done if r["seed"] in base]
            faster[arm] = ([a - u for a, u in pairs if a is not None and u is not None], len(pairs))
        reach = []
        for target in TARGETS:
            hits = [steps_to(r["val_accuracy"], target) for r in done]
            got = [h for h in hits if h is not None]
            each = "/".join("-" if h is None else str(h) for h in hits)
            reach.append("not reached" if not got else f"{_fmt(mean_ci(got), digits=0, n=False)} ({each})")
        wall = sum(r["seconds"] for r in done) / len(done)
        lines.append(f"| {arm} | {len(done)} | {_fmt(acc)} | {_fmt(f1)} | {delta} | " + " | ".join(reach) + f" | {wall / 60:.1f} min |")
    wins = [arm for arm, d in deltas.items() if d.low is not None and d.low > 0]
    named = "; ".join(f"{arm} {d.mean:+.2f} [{d.low:+.2f}, {d.high:+.2f}]" if d.low is not None else f"{arm} {d.mean:+.2f} (1 seed)"
                      for arm, d in deltas.items())
    lines += ["", (f"**Verdict on `{variant}`, {steps} steps:** " + (
        f"{', '.join(wins)} beat{'s' if len(wins) == 1 else ''} uniform on test accuracy with an interval above 0" if wins else
        "no arm beats uniform on test accuracy with an interval above 0") + f" ({named}).")]
    lines += ["", f"Steps to the {TARGET:.0%} target, the arm minus `uniform` on the same seed, over the seeds where both reached it: " + "; ".join(
        f"{arm} {_fmt(mean_ci(d), signed=True, digits=0, n=False)} ({len(d)} of {n} seeds)" if d else f"{arm}: no seed where both reached it"
        for arm, (d, n) in faster.items()) + "."]
    lines += ["", "Per seed, the arm against `uniform` on the same test rows (1,000-round paired bootstrap, points):", ""]
    for arm in ("curriculum", "selective", "random"):
        cells = []
        for r in sorted((r for r in mine if r["arm"] == arm), key=lambda r: r["seed"]):
            if r["seed"] in base:
                u = base[r["seed"]]
                low, high = paired_bootstrap(accuracy, truth, u["predictions"], r["predictions"], seed=r["seed"])
                cells.append(f"seed {r['seed']}: {100 * (r['test_accuracy'] - u['test_accuracy']):+.2f} [{100 * low:+.2f}, {100 * high:+.2f}]")
        if cells:
            lines.append(f"- `{arm}`: " + "; ".join(cells))
    curves = [f"`{r['arm']}` s{r['seed']}: " + ", ".join(f"{s}: {a:.3f}" for s, a in r["val_accuracy"])
              for r in sorted(mine, key=lambda r: (r["seed"], list(ARMS).index(r["arm"])))]
    return lines + ["", "<details><summary>Validation accuracy curves</summary>", "", *[f"- {c}" for c in curves], "", "</details>"]


def _fmt(estimate, *, signed: bool = False, digits: int = 2, n: bool = True) -> str:
    spec = f"{'+' if signed else ''}.{digits}f"
    if estimate.half_width is None:
        return f"{estimate.mean:{spec}}" + (" (1 seed)" if n else "")
    return f"{estimate.mean:{spec}} ± {estimate.half_width:.{digits}f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", choices=VARIANTS)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=240)
    parser.add_argument("--eval-every", type=int, default=40)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--beta", type=float, default=2.0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--reverse", action="store_true", help="take the runs last seed first (a second lane)")
    parser.add_argument("--report", action="store_true", help="write the section from the saved runs")
    args = parser.parse_args()
    if args.report:
        body = report()
        print(body)
        write_section("Curriculum, settled", body)
    elif args.variant:
        lane(args)
    else:
        parser.error("give --variant to run a lane, or --report")


if __name__ == "__main__":
    main()
