"""Benchmark the ML answers: old vs new training defaults, and augment's gain measured two ways.

CLINC150 with the pretrained MiniLM-L6 on this CPU; the jobs run in process through the tests'
``InProcessContext`` (no broker, no database, the same initiative code). Dollars are wall time at
$1.00 an hour. Three questions:

1. Baseline test accuracy and macro-F1 with the old defaults (600 fixed steps at lr 1e-4) and the new
   ones (up to ``epochs`` epochs, early-stopped on validation macro-F1, best weights kept), on
   ``10shot`` (10 training rows per intent) and ``full``; mean and 95% t-interval across seeds.
2. augment's gain on ``10shot`` with ``slice_column: label`` (each intent a slice; the user trial's
   setting), from the new-default baseline of each seed: as the old code reported it (targeted-slice
   F1 counted on the targeted rows only) and as it is measured now (over the whole test set, with
   the paired bootstrap interval, the overall deltas and the tradeoff flag), from the same runs.
3. Optionally (``--domains``) the same on ``full`` with ``slice_column: domain``.

Selection never reads test: baselines keep their best validation step, augment ranks its targets on
validation and early-stops its arms there; each final model is scored on test once. Every finished
run is kept in ``--work`` (default ``.budgetq/bench-answers``), so a stopped benchmark resumes where it
was, and the section is rewritten after every run. Two processes (``--lane``) share the list, each
taking the next run nobody has claimed whose model job has finished; each uses one torch thread,
because on cores shared with other work two OpenMP threads of one process wait on each other
whenever either is descheduled.

    python -m bench.answers --lane a & python -m bench.answers --lane b    # hours on 2 shared CPU cores
    python -m bench.answers --quick    # a few minutes' smoke run: a tiny BERT, one seed (numbers meaningless)
    python -m bench.answers --report-only    # rewrite the section from the runs finished so far
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Run as a script (python bench/answers.py), Python puts bench/ on the path rather than the repository root.
sys.path[:] = [str(REPO)] + [p for p in sys.path if Path(p or ".").resolve() != REPO / "bench"]

from bench.common import run_dates  # noqa: E402
from bench.ml_loop import _context_module, _threads  # noqa: E402

SEEDS = (0, 1, 2)
PRICE_PER_HOUR = 1.00
OLD = {"steps": 600, "lr": 1e-4, "checkpoint_every": 100}  # baseline's Params before early stopping
# Five intents of 150: about 150 targeted test rows, like the user trial's. balance: false, the default
# when these runs were made (variants added as extra draws), so that a re-run reproduces them.
AUGMENT = {"k": 5, "balance": False}
DATA = {"10shot": {"dataset": "clinc150", "variant": "10shot", "slice_column": "label"},
        "full": {"dataset": "clinc150", "variant": "full", "slice_column": "label"}}
DROP = (".loss", ".lr")  # per-step curves are not kept in the store: the report does not use them


def plan(seeds, domains: bool) -> list[tuple[str, str, dict, str]]:
    """(key, initiative, params, key of the model job) in priority order: every 10shot baseline, one augment
    and one full pair first (the longest, full with early stopping, early enough to finish), then the rest."""
    first, rest = seeds[0], seeds[1:]
    new = [(f"10shot/new/{s}", "baseline", {**DATA["10shot"], "seed": s}, "") for s in seeds]
    old = [(f"10shot/old/{s}", "baseline", {**DATA["10shot"], **OLD, "seed": s}, "") for s in seeds]
    full_old, full_new = _full_pair(first)
    runs = [new[0], old[0], _augment(first), *old[1:2], full_new, *new[1:2], *old[2:], *new[2:], full_old]
    runs += [_augment(seed) for seed in rest] + [run for seed in rest for run in _full_pair(seed)]
    if domains:
        runs += [(f"domain/new/{first}", "baseline", {**DATA["full"], "slice_column": "domain", "seed": first}, ""),
                 (f"domain/augment/{first}", "augment", {"seed": first}, f"domain/new/{first}")]
    return runs


def _augment(seed: int) -> tuple[str, str, dict, str]:
    return (f"10shot/augment/{seed}", "augment", {**AUGMENT, "seed": seed}, f"10shot/new/{seed}")


def _full_pair(seed: int) -> list[tuple[str, str, dict, str]]:
    return [(f"full/old/{seed}", "baseline", {**DATA["full"], **OLD, "seed": seed}, ""),
            (f"full/new/{seed}", "baseline", {**DATA["full"], "seed": seed}, "")]


def quick_plan(work: Path) -> list[tuple[str, str, dict, str]]:
    """The same runs for one seed with a tiny BERT and small caps: every code path in minutes."""
    from worker.ml.data import load_dataset
    from worker.ml.modeling import build_tiny_bert

    tiny = work / "tiny_bert"
    if not tiny.is_dir():
        build_tiny_bert(load_dataset("clinc150", variant="full").train.texts, tiny, hidden=32, layers=1, vocab_size=2000)
    quick = {"model": str(tiny), "lr": 5e-3, "latency_samples": 3}
    runs = []
    for key, initiative, params, after in plan((0,), domains=False):
        if initiative == "baseline":
            params = {**params, **quick, **({"steps": 20} if "/old/" in key else {"epochs": 3})}
        else:
            params = {**params, "epochs": 1, "lr": 1e-3, "augmenters": "style,char_noise"}
        runs.append((key, initiative, params, after))
    return runs


class Store:
    """Finished runs: what each job logged (per-step curves left out) and its wall time, one JSON file
    per lane (``store-<lane>.json``) so that lanes never write the same file; reads see every lane's."""

    def __init__(self, folder: Path, lane: str) -> None:
        self.folder, self.path = folder, folder / f"store-{lane}.json"
        self.runs: dict[str, dict] = {}
        self.reload()

    def reload(self) -> None:
        for path in sorted(self.folder.glob("store-*.json")):
            self.runs.update(json.loads(path.read_text()))

    def add(self, key: str, job, seconds: float) -> None:
        metrics = [[m.name, m.value, m.slice, m.step] for m in job.metrics if not m.name.endswith(DROP)]
        self.reload()
        self.runs[key] = {"job_id": job.job_id, "date": date.today().isoformat(), "initiative": job.initiative, "params": job.params,
                          "artifacts": job.artifacts, "metrics": metrics, "warnings": job.warnings, "seconds": seconds,
                          "threads": _threads()}
        mine = json.loads(self.path.read_text()) if self.path.is_file() else {}
        mine[key] = self.runs[key]
        partial = self.path.with_suffix(".partial")
        partial.write_text(json.dumps(mine))
        partial.replace(self.path)

    def prior(self, key: str):
        """The finished run as the ledger would hand it to a later job."""
        from worker.context import MetricRow, PriorResult

        run = self.runs[key]
        return PriorResult(run["job_id"], run["initiative"], "succeeded", run["params"],
                           tuple(MetricRow(*m) for m in run["metrics"]), run["artifacts"])


def run_all(runs, store: Store, work: Path, lane: str, on_progress) -> None:
    """Run jobs in order until none is left, taking each run that no other lane has claimed and whose
    model job has finished; call ``on_progress`` after each. Two lanes share the list this way."""
    context = _context_module()
    while True:
        store.reload()
        run = _next_run(runs, store, work, lane)
        if run is None:
            pending = [key for key, *_ in runs if key not in store.runs]
            if not any(_claimed_by(work, key) in (None, lane) for key in pending):
                return  # what is left belongs to the other lane
            time.sleep(60)  # waiting for a model job the other lane is training
            continue
        key, initiative, params, after = run
        history = [store.prior(after)] if after else []
        if after:
            params = {**params, "model_job": store.runs[after]["job_id"]}
        print(f"{time.strftime('%H:%M:%S')} {key}: starting", file=sys.stderr, flush=True)
        start = time.perf_counter()
        job = context.run_job(work / key.replace("/", "-"), initiative, params, history)
        store.add(key, job, time.perf_counter() - start)
        print(f"{time.strftime('%H:%M:%S')} {key}: {store.runs[key]['seconds'] / 60:.1f} min", file=sys.stderr, flush=True)
        on_progress()


def _next_run(runs, store: Store, work: Path, lane: str):
    """The first unfinished run whose model job has finished and that this lane could claim, or None."""
    for run in runs:
        key, _, _, after = run
        if key not in store.runs and (not after or after in store.runs) and _claim(work, key, lane):
            return run
    return None


def _claim(work: Path, key: str, lane: str) -> bool:
    """Claim ``key`` for ``lane`` (creating the claim file atomically); True if it is this lane's."""
    path = work / "claims" / key.replace("/", "-")
    path.parent.mkdir(exist_ok=True)
    try:
        with path.open("x") as claim:
            claim.write(lane)
    except FileExistsError:
        pass
    return path.read_text() == lane


def _claimed_by(work: Path, key: str):
    path = work / "claims" / key.replace("/", "-")
    return path.read_text() if path.is_file() else None


# ---- reading the store ---------------------------------------------------------------------------

def value(run: dict, name: str, slice=None, default=float("nan")) -> float:
    found = [m[1] for m in run["metrics"] if m[0] == name and m[2] == slice]
    return found[-1] if found else default


def dollars(seconds: float) -> float:
    return seconds / 3600 * PRICE_PER_HOUR


def mean_ci(values: list[float]) -> str:
    """``mean ± half-width`` of the 95% t-interval; the mean alone for one value."""
    from scipy import stats

    if len(values) < 2:
        return f"{values[0]:.2f} (1 seed)" if values else "-"
    half = stats.t.ppf(0.975, len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))
    return f"{statistics.mean(values):.2f} ± {half:.2f}"


def finished(store: Store, prefix: str) -> list[dict]:
    return [store.runs[k] for k in sorted(store.runs) if k.startswith(prefix)]


# ---- the report -----------------------------------------------------------------------------------

def baseline_table(store: Store) -> list[str]:
    from worker.initiatives.baseline import Params

    new = Params()
    labels = {"old": f"old: {OLD['steps']} steps, lr {OLD['lr']:g}",
              "new": f"new: ≤ {new.epochs} epochs, lr {new.lr:g}, patience {new.patience}"}
    lines = ["| data | defaults | seeds | test accuracy (%) | test macro-F1 (%) | epochs run | stopped early | wall per run | $ per run |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for variant in ("10shot", "full"):
        for name, label in labels.items():
            runs = finished(store, f"{variant}/{name}/")
            if not runs:
                continue
            seeds = ", ".join(str(r["params"]["seed"]) for r in runs)
            epochs = [value(r, "train.epochs_run") for r in runs]
            stopped = sum(value(r, "train.stopped_early") == 1 for r in runs)
            wall = statistics.mean(r["seconds"] for r in runs)
            lines.append(
                f"| {variant} | {label} | {seeds} | {mean_ci([100 * value(r, 'accuracy') for r in runs])} | "
                f"{mean_ci([100 * value(r, 'macro_f1') for r in runs])} | {min(epochs):.1f}-{max(epochs):.1f} | "
                f"{stopped}/{len(runs)} | {wall / 60:.1f} min | ${dollars(wall):.3f} |")
    return lines


def seed_table(store: Store) -> list[str]:
    lines = ["| run | seed | test acc | test macro-F1 | steps | best step | epochs | stopped early | best val macro-F1 | wall | $ |",
             "|---|---:|---:|---:|---:|---:|---:|:-:|---:|---:|---:|"]
    for key in sorted(k for k in store.runs if "/augment/" not in k):
        r = store.runs[key]
        curve = [m[1] for m in r["metrics"] if m[0] == "train.val_macro_f1"]
        best_val = f"{max(curve):.4f}" if curve else "(none: no validation)"
        lines.append(
            f"| {key.rsplit('/', 1)[0]} | {r['params']['seed']} | {value(r, 'accuracy'):.4f} | {value(r, 'macro_f1'):.4f} | "
            f"{value(r, 'train.steps'):.0f} | {value(r, 'train.best_step'):.0f} | {value(r, 'train.epochs_run'):.1f} | "
            f"{'yes' if value(r, 'train.stopped_early') == 1 else 'no'} | {best_val} | {r['seconds'] / 60:.1f} min | "
            f"${dollars(r['seconds']):.3f} |")
    return lines


def curve_lines(store: Store, key: str) -> list[str]:
    """The validation curve of one new-default run: where it plateaued."""
    if key not in store.runs:
        return []
    run = store.runs[key]
    points = sorted((m[3], m[1]) for m in run["metrics"] if m[0] == "train.val_macro_f1")
    per_epoch = value(run, "train.steps") / value(run, "train.epochs_run")
    cells = ", ".join(f"{step / per_epoch:.0f}: {f1:.3f}" for step, f1 in points)
    return [f"- `{key}` validation macro-F1 by epoch: {cells} (best at step {value(run, 'train.best_step'):.0f})."]


def augment_table(store: Store, prefix: str) -> list[str]:
    runs = finished(store, prefix)
    if not runs:
        return []
    lines = ["| seed | targets (ranked on val) | rows added | old: targeted rows only (pts) | now: improvement (pts) [95% CI] | "
             "overall acc Δ | overall macro-F1 Δ | rest acc Δ | tradeoff | steps control / augmented | wall | $ |",
             "|---:|---|---:|---:|---:|---:|---:|---:|:-:|---:|---:|---:|"]
    for r in runs:
        targets = sorted((m for m in r["metrics"] if m[0] == "targeted_rank"), key=lambda m: m[1])
        old = 100 * (value(r, "augmented.targeted_f1_rows_only") - value(r, "control.targeted_f1_rows_only"))
        lines.append(
            f"| {r['params']['seed']} | {', '.join(m[2] for m in targets)} | {value(r, 'aug.kept'):.0f} | {old:+.2f} | "
            f"{value(r, 'improvement'):+.2f} [{value(r, 'improvement.ci_low'):+.2f}, {value(r, 'improvement.ci_high'):+.2f}] | "
            f"{value(r, 'overall.accuracy_delta'):+.2f} | {value(r, 'overall.macro_f1_delta'):+.2f} | "
            f"{value(r, 'rest.accuracy_delta'):+.2f} | {'yes' if value(r, 'tradeoff') == 1 else 'no'} | "
            f"{value(r, 'control.steps'):.0f} / {value(r, 'augmented.steps'):.0f} | {r['seconds'] / 60:.1f} min | "
            f"${dollars(r['seconds']):.3f} |")
    if len(runs) > 1:
        old = [100 * (value(r, "augmented.targeted_f1_rows_only") - value(r, "control.targeted_f1_rows_only")) for r in runs]
        lines += ["", f"Across seeds (mean ± 95% t-interval): old measure {mean_ci(old)} points; "
                      f"improvement now {mean_ci([value(r, 'improvement') for r in runs])} points; overall accuracy Δ "
                      f"{mean_ci([value(r, 'overall.accuracy_delta') for r in runs])}; overall macro-F1 Δ "
                      f"{mean_ci([value(r, 'overall.macro_f1_delta') for r in runs])}; rest accuracy Δ "
                      f"{mean_ci([value(r, 'rest.accuracy_delta') for r in runs])}."]
    return lines


def arm_lines(store: Store, prefix: str) -> list[str]:
    """Per arm: targeted F1 both ways, and overall accuracy, so the deltas can be checked by hand."""
    lines = ["| seed | arm | targeted F1, whole test set | targeted F1, targeted rows only | test accuracy | test macro-F1 |",
             "|---:|---|---:|---:|---:|---:|"]
    for r in finished(store, prefix):
        for arm in ("baseline", "control", "augmented"):
            lines.append(f"| {r['params']['seed']} | {arm} | {value(r, f'{arm}.targeted_f1'):.4f} | "
                         f"{value(r, f'{arm}.targeted_f1_rows_only'):.4f} | {value(r, f'{arm}.accuracy'):.4f} | "
                         f"{value(r, f'{arm}.macro_f1'):.4f} |")
    return lines if len(lines) > 2 else []


def report(store: Store, quick: bool) -> str:
    """The markdown section, from whatever has finished so far."""
    total = sum(r["seconds"] for r in store.runs.values())
    seeds_full = sorted({r["params"]["seed"] for k, r in store.runs.items() if k.startswith("full/new/")})
    lines = [
        ("**Quick smoke run: a tiny BERT, one seed; the numbers mean nothing.** " if quick else "")
        + "CLINC150 (150 intents; `full` has 100 training rows per intent, `10shot` the same 10 per intent for every "
        "seed; both validate on the 3,000 `full` validation rows and test on the 4,500 test rows), "
        f"{'a tiny BERT' if quick else 'pretrained MiniLM-L6'}, {platform.machine()} CPU, two runs at a time with "
        f"{_threads()} torch thread each, on 2 cores shared with other engineers' benchmarks and tests (wall times "
        "carry their load); "
        f"{run_dates(store.runs.values())}. Dollars: wall time at ${PRICE_PER_HOUR:.2f}/hour. "
        "Re-run: `python -m bench.answers --lane a` and `--lane b` side by side (each resumes from `.budgetq/bench-answers`).",
        "",
        "Which split decides what: training stops and keeps its weights on **validation** macro-F1; augment ranks its "
        "targets on **validation**; every number below is **test**, read once per final model (the baseline, and "
        "augment's stored model, control arm and augmented arm). The defaults themselves were chosen from "
        "validation curves (`bench/explore_defaults.py`).",
        "",
        "### Baseline: old vs new training defaults (test split)",
        "",
        "Mean ± 95% t-interval across the seeds listed (each seed draws the classification head and the batch order).",
        "",
        *baseline_table(store),
        "",
        *([f"`full` ran {len(seeds_full)} seed(s) of the new defaults ({', '.join(map(str, seeds_full))}): "
           "that is what the CPU time allowed."] if seeds_full and len(seeds_full) < len(SEEDS) and not quick else []),
        "",
        *curve_lines(store, "10shot/new/0"),
        *curve_lines(store, "full/new/0"),
        "",
        "<details><summary>Per run</summary>",
        "",
        *seed_table(store),
        "",
        "</details>",
    ]
    augment = augment_table(store, "10shot/augment/")
    if augment:
        lines += [
            "",
            "### augment on 10shot, one slice per intent (test split)",
            "",
            f"k = {AUGMENT['k']} intents targeted, continuing from each seed's new-default baseline; both arms share the "
            "augmented data's step cap, the validation cadence and early stopping. \"Old\" is the gain as the old code "
            "reported it (targeted-slice F1 on the targeted rows only: recall, blind to other rows predicted as a "
            "targeted intent); \"now\" counts the F1 of the targeted intents over the whole test set, with a "
            "1,000-round paired bootstrap interval. Δ: augmented minus control, in points.",
            "",
            *augment,
            "",
            *arm_lines(store, "10shot/augment/"),
        ]
    domain = augment_table(store, "domain/augment/")
    if domain:
        lines += ["", "### augment on full, one slice per domain (test split)", "", *domain,
                  "", *arm_lines(store, "domain/augment/")]
    lines += ["", f"Total wall time of the runs above: {total / 3600:.2f} h (${dollars(total):.2f}).", "",
              "The `ML improvement loop` section's augment gain predates this measure: it counted the targeted "
              "domains' F1 on their own rows only, and came from one seed of an undertrained baseline."]
    return "\n".join(lines)


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short smoke run: tiny BERT, one seed")
    parser.add_argument("--domains", action="store_true", help="also augment full CLINC150 by domain (one seed)")
    parser.add_argument("--work", type=Path, default=REPO / ".budgetq" / "bench-answers")
    parser.add_argument("--lane", default="a", help="this process's name; lanes side by side share the runs")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--report-only", action="store_true", help="rewrite the section from the finished runs, run nothing")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    work = args.work / ("quick" if args.quick else "runs")
    work.mkdir(parents=True, exist_ok=True)
    store = Store(work, args.lane)
    runs = quick_plan(work) if args.quick else plan(SEEDS, args.domains)
    title = "ML answers: training defaults and honest gains" + (" (quick smoke run)" if args.quick else "")

    def publish() -> None:
        from bench.common import write_section

        if not args.quick:
            store.reload()  # the other lane's runs too
            write_section(title, report(store, args.quick))

    if not args.report_only:
        run_all(runs, store, work, args.lane, publish)
    publish()
    print(report(store, args.quick))


if __name__ == "__main__":
    main()
