"""The spend report's sections, in page order. Each returns a ``Section``, with a note when it has no data."""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Optional

from core.money import format_share
from core.phases import PHASES, time_split
from models.history import ReportData
from models.views import JobView
from producer import plots
from core.stats import Estimate
from producer.report import MAX_FIGURES, Results, Section, empty, esc, img, money, more, table
from producer.summary import summarize


def _naive_utc(when: datetime) -> datetime:
    """UTC without tzinfo: SQLite hands back naive times, PostgreSQL aware ones; matplotlib wants one kind."""
    return when.astimezone(timezone.utc).replace(tzinfo=None) if when.tzinfo else when


def _short(job: JobView) -> str:
    return f"{job.initiative} {job.id[:8]}"


def _points(value: Optional[float], scale: float = 100.0) -> str:
    return "" if value is None else f"{value * scale:.2f}"


# --- the money -------------------------------------------------------------------------------


def burn_down(data: ReportData, images: Path) -> Section:
    """Cap, spent and reserved over time, from the ledger entries; threshold crossings marked."""
    title = "Budget burn-down: spent and reserved against the cap"
    if not data.budgets:
        return Section("burn-down", title, empty("No budgets yet: create one with `budgetq budget create NAME --total 1.00`."))
    parts = [table(["budget", "total", "spent", "reserved", "left"], [
        [b.name, money(b.total_micros), money(b.spent_micros), money(b.reserved_micros), money(b.left_micros)] for b in data.budgets]),
        _spend_by_initiative(data)]
    events = [[e.budget, format_share(e.threshold_ppm), money(e.spent_micros), money(e.total_micros), e.job_id or "",
               e.created_at.strftime("%Y-%m-%d %H:%M:%S")] for e in data.events]
    parts.append(table(["budget", "threshold crossed", "spent then", "total then", "by job", "at"], events) if events
                 else empty("No spending threshold crossed (set them with `budgetq budget set NAME --warn-at 0.5`)."))
    for i, b in enumerate(data.budgets[:MAX_FIGURES]):
        times, total, spent, reserved = [], [], [], []
        t = s = r = 0
        for e in (e for e in data.entries if e.budget == b.name):
            t += e.amount_micros if e.kind == "fund" else 0
            s += e.amount_micros if e.kind == "charge" else 0
            r += {"reserve": e.amount_micros, "release": -e.amount_micros, "charge": -e.amount_micros}.get(e.kind, 0)
            times.append(_naive_utc(e.created_at))
            total.append(t / 1e6), spent.append(s / 1e6), reserved.append(r / 1e6)
        if not times:
            continue
        times.append(_naive_utc(datetime.now(timezone.utc)))  # the state holds until now
        total.append(total[-1]), spent.append(spent[-1]), reserved.append(reserved[-1])
        marks = [(_naive_utc(e.created_at), format_share(e.threshold_ppm)) for e in data.events if e.budget == b.name]
        name = f"burn-down-{i}.png"
        plots.burn_down(images / name, f"budget {b.name}", times, total, spent, reserved, marks)
        parts.append(img(name, f"burn-down of budget {b.name}"))
    parts.append(more(MAX_FIGURES, len(data.budgets), "budgets"))
    return Section("burn-down", title, "".join(parts))


def _spend_by_initiative(data: ReportData) -> str:
    jobs: dict[str, list[JobView]] = defaultdict(list)
    for j in data.jobs:
        jobs[j.initiative].append(j)
    if not jobs:
        return empty("No jobs yet.")
    rows = [[name, len(js), sum(j.status == "succeeded" for j in js), money(sum(j.charged_micros for j in js)),
             money(sum(j.reserved_micros for j in js)), ", ".join(sorted({j.device for j in js if j.device})) or "not recorded"]
            for name, js in sorted(jobs.items())]
    return table(["initiative", "jobs", "succeeded", "charged", "still reserved", "devices"], rows)


def improvement(results: Results, images: Path, extra: str) -> Section:
    """Dollars against improvement per plan entry, seeds of one entry pooled, one panel per unit.

    The groups, their order, intervals and cost per run are ``producer.summary``'s, the same as
    ``budgetq results`` shows: failed runs' money counts, and figures rank only within their unit.
    """
    title = "Dollars against improvement, per initiative (in its own unit)"
    groups = [g for g in summarize(results.improvement_rows(), extra) if g.improvement is not None and g.unit is not None]
    if not groups:
        return Section("improvement", title, empty("No succeeded job reported an `improvement` yet (augment, prompt_loop, curriculum, distill do)."))
    rows, panels = [], defaultdict(list)
    for g in groups:
        gain, per_run, label = g.improvement, g.cost_per_run_micros / 1e6, g.group.split(":")[-1]
        panels[g.unit.label].append((label, per_run, gain.mean, gain.low, gain.high))
        rows.append([label, g.initiative, g.unit.label, g.jobs, money(g.charged_micros), f"{gain.mean:.4g}",
                     "" if gain.low is None else f"[{gain.low:.4g}, {gain.high:.4g}]", _interval_kind(gain),
                     "" if g.per_dollar is None else f"{g.per_dollar:.4g}"])
    name = "improvement.png"
    plots.improvement(images / name, sorted(panels.items()))
    columns = ["entry", "initiative", "unit", "runs", "charged (all runs)", "improvement (mean)", "95% interval", "interval",
               "improvement per dollar"]
    return Section("improvement", title, table(columns, rows) + img(name, "dollars against improvement per initiative"))


def _interval_kind(gain: Estimate) -> str:
    """How ``summary`` got the interval: a t-interval over seeds, or the single run's paired bootstrap."""
    if gain.n >= 2:
        return f"t over {gain.n} seeds"
    return "paired bootstrap" if gain.low is not None else "one run, no interval"


# --- what the models learned -----------------------------------------------------------------


def slice_f1(results: Results, images: Path) -> Section:
    """Per-slice F1 of the model before augmentation, and of the control and augmented arms after."""
    jobs = [j for j in results.jobs_of("augment") if results.by_slice(j.id, "control.slice_f1")]
    return _per_job("slices", "Per-slice F1 before and after augmentation", jobs, "augment jobs",
                    "No succeeded augment job yet: nothing to compare per slice.",
                    lambda i, job: _slice_f1_of(results, images / f"slices-{i}.png", job))


def _slice_f1_of(results: Results, png: Path, job: JobView) -> str:
    source = _model_job(results, job)
    before = results.by_slice(source.id, "slice_f1") if source else results.by_slice(job.id, "baseline.slice_f1")
    control, augmented = results.by_slice(job.id, "control.slice_f1"), results.by_slice(job.id, "augmented.slice_f1")
    targeted = results.by_slice(job.id, "targeted_rank")
    slices = sorted(set(before) | set(control) | set(augmented))
    labels = [f"{s} *" if s in targeted else s for s in slices]
    who = f"before ({_short(source)})" if source else "before (stored model)"
    plots.grouped_bars(png, f"{_short(job)}: slice F1 (* targeted)", labels, {
        who: [before.get(s) for s in slices], "control": [control.get(s) for s in slices],
        "augmented": [augmented.get(s) for s in slices]}, "F1")
    rows = [[label, _f(before.get(s)), _f(control.get(s)), _f(augmented.get(s)),
             _points(None if s not in augmented or s not in control else augmented[s] - control[s])]
            for label, s in zip(labels, slices)]
    return (f"<h3>{esc(_short(job))}</h3>" + img(png.name, f"slice F1 of {job.id}")
            + table(["slice (* targeted)", who, "control", "augmented", "augmented - control (points)"], rows))


def _per_job(section_id: str, title: str, jobs: list[JobView], what: str, none: str, draw: Callable[[int, JobView], str]) -> Section:
    """A section of one part per job (the first MAX_FIGURES of them), or the sentence ``none``."""
    if not jobs:
        return Section(section_id, title, empty(none))
    parts = [draw(i, job) for i, job in enumerate(jobs[:MAX_FIGURES])]
    return Section(section_id, title, "".join(parts) + more(MAX_FIGURES, len(jobs), what))


def _model_job(results: Results, job: JobView) -> Optional[JobView]:
    """The job whose model augment worked on: its ``model_job``, else the latest baseline done before it started."""
    named = job.params.get("model_job")
    if named:
        return results.jobs.get(named)
    done = [b for b in results.jobs_of("baseline") if b.finished_at and job.started_at and b.finished_at <= job.started_at]
    return max(done, key=lambda b: b.finished_at) if done else None


def _f(value: Optional[float]) -> str:
    return "" if value is None else f"{value:.3f}"


def curves(results: Results, images: Path) -> Section:
    """Training loss per step and validation accuracy per step, per job; attempts marked."""
    title = "Training loss and validation curves"
    jobs = [j for j in results.data.jobs if _runs(results, j.id, ".loss")]
    if not jobs:
        return Section("curves", title, empty("No job logged a training loss curve (`<run>.loss` per step) yet."))
    parts, rows = [], []
    for i, job in enumerate(sorted(jobs, key=lambda j: j.created_at)[:MAX_FIGURES]):
        loss = {run: [(s, v) for s, v, _ in results.series(job.id, f"{run}.loss")] for run in _runs(results, job.id, ".loss")}
        val = {run: [(s, v) for s, v, _ in results.series(job.id, f"{run}.val_accuracy")]
               for run in _runs(results, job.id, ".val_accuracy")}
        first = results.series(job.id, f"{next(iter(loss))}.loss")
        starts = [(s, a) for (s, _, a), (_, _, before) in zip(first[1:], first) if a != before]
        name = f"curves-{i}.png"
        plots.curves(images / name, f"{_short(job)} ({job.status})", loss, val, starts)
        parts.append(img(name, f"loss curves of {job.id}"))
        rows += [[_short(job), job.status, run, len(points), f"{points[-1][1]:.4f}",
                  _f(val[run][-1][1]) if val.get(run) else ""] for run, points in loss.items()]
    table_html = table(["job", "status", "run", "steps logged", "last loss", "last validation accuracy"], rows)
    return Section("curves", title, table_html + "".join(parts) + more(MAX_FIGURES, len(jobs), "jobs with curves"))


def _runs(results: Results, job_id: str, suffix: str) -> list[str]:
    """The runs of a job with a per-step ``<run><suffix>`` series (train, control, augmented, ...)."""
    return [n[: -len(suffix)] for n in results.names(job_id, suffix=suffix, stepped=True) if n[: -len(suffix)]]


def robustness(results: Results, images: Path) -> Section:
    """Accuracy drop per perturbation (overall, and per slice in the table)."""
    jobs = [j for j in results.jobs_of("robustness") if results.names(j.id, suffix=".accuracy_drop", stepped=False)]
    return _per_job("robustness", "Robustness: accuracy drop per perturbation", jobs, "robustness jobs",
                    "No succeeded robustness job yet.", lambda i, job: _robustness_of(results, images / f"robustness-{i}.png", job))


def _robustness_of(results: Results, png: Path, job: JobView) -> str:
    perturbations = [n[: -len(".accuracy_drop")] for n in results.names(job.id, suffix=".accuracy_drop", stepped=False)]
    overall = [results.scalar(job.id, f"{p}.accuracy_drop") for p in perturbations]
    plots.grouped_bars(png, f"{_short(job)}: accuracy drop under perturbation", perturbations,
                       {"accuracy drop (points)": [None if v is None else 100 * v for v in overall]}, "accuracy points lost")
    per_slice = {p: results.by_slice(job.id, f"{p}.accuracy_drop") for p in perturbations}
    ranks = results.by_slice(job.id, "weakness_rank")
    slices = sorted({s for values in per_slice.values() for s in values}, key=lambda s: (ranks.get(s, 1e9), s))
    rows = [[s, _rank(ranks.get(s))] + [_points(per_slice[p].get(s)) for p in perturbations] for s in slices]
    return (f"<h3>{esc(_short(job))}</h3>" + img(png.name, f"robustness of {job.id}")
            + table(["slice", "weakness rank"] + [f"{p} (points)" for p in perturbations], rows))


def _rank(value: Optional[float]) -> str:
    return "" if value is None else str(int(value))


OOD_FIELDS = ("auroc", "fpr95", "in_scope_accuracy", "oos_recall")


def out_of_scope(results: Results, images: Path) -> Section:
    """ROC curves of out-of-scope detection (MSP, Mahalanobis) and their summary numbers."""
    title = "Out-of-scope detection: ROC"
    jobs = [j for j in results.data.jobs if j.status == "succeeded" and results.scalar(j.id, "ood.msp.auroc") is not None]
    if not jobs:
        return Section("ood", title, empty("No job evaluated out-of-scope detection yet (it needs out-of-scope test rows)."))
    parts, rows = [], []
    for job in jobs:
        for prefix, who in (("", "model"), ("teacher.", "teacher")):
            for method in ("msp", "mahalanobis"):
                values = [results.scalar(job.id, f"{prefix}ood.{method}.{f}") for f in OOD_FIELDS]
                if values[0] is not None:
                    rows.append([_short(job), who, method] + [_f(v) for v in values])
    plotted = 0
    for job in jobs:
        methods = {}
        for method in ("msp", "mahalanobis"):
            fpr, tpr = results.series(job.id, f"ood.{method}.roc_fpr"), results.series(job.id, f"ood.{method}.roc_tpr")
            if fpr and len(fpr) == len(tpr):
                methods[method] = ([v for _, v, _ in fpr], [v for _, v, _ in tpr], results.scalar(job.id, f"ood.{method}.auroc"))
        if methods and plotted < MAX_FIGURES:
            name = f"roc-{plotted}.png"
            plots.roc(images / name, _short(job), methods)
            parts.append(img(name, f"ROC of {job.id}"))
            plotted += 1
    if not plotted:
        parts.append(empty("These jobs logged AUROC but no ROC points (`ood.<method>.roc_fpr/roc_tpr`): an older evaluation."))
    return Section("ood", title, table(["job", "model", "method", *OOD_FIELDS], rows) + "".join(parts))


# --- what the money bought beyond accuracy ---------------------------------------------------


DISTILL_PANELS = (
    ("size on disk (MB)", "teacher.size_bytes", "size_bytes", None, 1e-6),
    ("CPU latency p50, batch 1 (ms)", "speed.teacher.latency_p50_ms", "speed.student.latency_p50_ms", "speed.int8.latency_p50_ms", 1.0),
    ("CPU throughput, batch 64 (rows/s)", "speed.teacher.throughput_per_s", "speed.student.throughput_per_s", "speed.int8.throughput_per_s", 1.0),
    # Only where the job ran with CUDA (the int8 student is ONNX Runtime on the CPU: no GPU figure).
    ("CUDA latency p50, batch 1 (ms)", "speed.cuda.teacher.latency_p50_ms", "speed.cuda.student.latency_p50_ms", None, 1.0),
    ("CUDA throughput, batch 64 (rows/s)", "speed.cuda.teacher.throughput_per_s", "speed.cuda.student.throughput_per_s", None, 1.0),
    ("test accuracy", "teacher.accuracy", "accuracy", "int8.accuracy", 1.0),
)


def distill(results: Results, images: Path) -> Section:
    """Teacher beside student (and the int8 student when measured): size, latency, throughput, accuracy."""
    jobs = [j for j in results.jobs_of("distill") if results.scalar(j.id, "teacher.accuracy") is not None]
    return _per_job("distill", "Distillation: size, latency and accuracy, teacher beside student", jobs, "distill jobs",
                    "No succeeded distill job yet.", lambda i, job: _distill_of(results, images / f"distill-{i}.png", job))


def _distill_of(results: Results, png: Path, job: JobView) -> str:
    panels, rows = [], []
    for quantity, teacher, student, int8, scale in DISTILL_PANELS:
        values = {who: results.scalar(job.id, metric) for who, metric in (("teacher", teacher), ("student", student), ("int8", int8)) if metric}
        values = {who: v * scale for who, v in values.items() if v is not None}
        if "teacher" in values and "student" in values:
            panels.append((quantity, values))
            rows.append([quantity, f"{values['teacher']:.4g}", f"{values['student']:.4g}",
                         f"{values['int8']:.4g}" if "int8" in values else "", f"{values['student'] / values['teacher']:.3g}"])
    if not panels:
        return empty(f"{_short(job)} measured neither model in full.")
    plots.side_by_side(png, _short(job), panels)
    return (f"<h3>{esc(_short(job))}</h3>" + img(png.name, f"teacher and student of {job.id}")
            + table(["quantity", "teacher", "student", "int8 student", "student / teacher"], rows))


def prompts(results: Results, images: Path) -> Section:
    """The prompt loop's seed and top-k: test and validation accuracy, the fold spread, the search's spread."""
    jobs = [j for j in results.jobs_of("prompt_loop") if results.by_slice_any_step(j.id, "test_accuracy")]
    return _per_job("prompts", "Prompt loop: the top-k and their spread", jobs, "prompt_loop jobs",
                    "No succeeded prompt_loop job yet.", lambda i, job: _prompts_of(results, images / f"prompts-{i}.png", job))


def _prompts_of(results: Results, png: Path, job: JobView) -> str:
    test, val = results.by_slice_any_step(job.id, "test_accuracy"), results.by_slice_any_step(job.id, "val_accuracy")
    std = results.by_slice(job.id, "val_fold_std")
    names = sorted(set(test) | set(val), key=lambda n: (n != "seed", len(n), n))
    plots.grouped_bars(png, f"{_short(job)}: seed and top-k", names,
                       {"test accuracy": [test.get(n) for n in names], "validation accuracy": [val.get(n) for n in names]},
                       "accuracy", errors={"validation accuracy": [std.get(n) for n in names]})
    rows = [[n, _f(test.get(n)), _f(val.get(n)), _f(std.get(n))] for n in names]
    spread = {m.name: (m.slice, m.value) for m in results.of(job.id) if m.name.startswith("spread_")}
    spread_text = ", ".join(f"{k[len('spread_'):]} {v:.3f}" for k, (_, v) in spread.items())
    rung = next((s for s, _ in spread.values() if s), "")
    tried = results.scalar(job.id, "candidates_tried")
    summary = (f"{int(tried) if tried is not None else '?'} candidates tried; first-rung accuracy spread"
               f" ({rung}): {spread_text or 'not logged'}")
    return (f"<h3>{esc(_short(job))}</h3><p>{esc(summary)}</p>" + img(png.name, f"top-k prompts of {job.id}")
            + table(["candidate", "test accuracy", "validation accuracy", "validation fold std"], rows))


# --- what went wrong -------------------------------------------------------------------------


def failures(data: ReportData, results: Results) -> Section:
    title = "Failure cases"
    if not data.failures:
        return Section("failures", title, empty("No failure cases recorded (robustness records its mispredictions here)."))
    parts = []
    for job_id, count in data.failure_counts.items():
        shown = [f for f in data.failures if f.job_id == job_id]
        job = results.jobs[job_id]
        parts.append(f"<h3>{esc(f'{_short(job)}: {count} failure cases, the first {len(shown)}')}</h3>"
                     + table(["perturbation", "slice", "expected", "predicted", "text"],
                             [[f.perturbation, f.slice, f.expected, f.predicted, f.text] for f in shown]))
    return Section("failures", title, "".join(parts))


def notes(data: ReportData, results: Results) -> Section:
    """Warnings jobs recorded, where each training job's time went, and why jobs stopped."""
    title = "Job notes, warnings and where the time went"
    parts = [table(["job", "attempt", "at", "note"], [
        [_short(results.jobs[n.job_id]), n.attempt, n.created_at.strftime("%Y-%m-%d %H:%M:%S"), n.text] for n in data.notes])
        if data.notes else empty("No job recorded a note or warning.")]
    parts.append(_time_table(data, results))
    stopped = [[_short(j), j.status, j.attempts, money(j.charged_micros), j.error] for j in data.jobs if j.error]
    if stopped:
        parts.append("<h3>Why jobs stopped</h3>" + table(["job", "status", "attempts", "charged", "reason"], stopped))
    return Section("notes", title, "".join(parts))


def _time_table(data: ReportData, results: Results) -> str:
    """One row per attempt that timed its phases: seconds per phase, the train share, training rows/s."""
    attempts: dict[tuple[str, int], dict[str, float]] = defaultdict(dict)
    for m in data.metrics:
        if m.step is None and m.slice is None:
            attempts[(m.job_id, m.attempt)][m.name] = m.value
    rows = []
    for (job_id, attempt), values in attempts.items():
        split = time_split(values)
        if split is not None:
            job = results.jobs[job_id]
            rows.append([_short(job), attempt, job.device or "", *(f"{split.seconds[p]:.1f}" for p in PHASES),
                         f"{split.other:.1f}", f"{split.wall:.1f}", f"{100 * split.train_share:.0f}%", f"{split.samples_per_s:.1f}"])
    if not rows:
        return empty("No job recorded where its time went (`phase.<name>.seconds` metrics).")
    columns = ["job", "attempt", "device", *(f"{p} (s)" for p in PHASES), "other (s)", "wall (s)", "train share", "train rows/s"]
    return "<h3>Where the time went</h3>" + table(columns, rows)
