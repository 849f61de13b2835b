"""The spend report's figures: matplotlib on the Agg backend, one PNG per call, no display, no network.

Each function takes plain numbers (already read from the ledger and shaped by ``producer.report``)
and a path, draws one figure and closes it. Axes never mix units: a figure with several quantities
gives each its own panel.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Iterator, Optional

import matplotlib

matplotlib.use("Agg")  # before pyplot: files only, never a window

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FuncFormatter, MaxNLocator  # noqa: E402

# Ticks to the micro-dollar, the ledger's unit: a tiny job's cost still reads as a number, not "$0".
DOLLARS = FuncFormatter(lambda value, _pos: f"${value:,.6f}".rstrip("0").rstrip(".") if value else "$0")
COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")


@contextmanager
def figure(path: Path, *, panels: int = 1, width: float = 8.0, height: float = 3.6) -> Iterator[Sequence]:
    """A figure with ``panels`` side by side, saved to ``path`` and closed however the drawing ends."""
    fig, axes = plt.subplots(1, panels, figsize=(width, height), squeeze=False)
    try:
        yield axes[0]
        fig.tight_layout()
        fig.savefig(path, dpi=90)
    finally:
        plt.close(fig)


def burn_down(path: Path, title: str, times: Sequence[datetime], total: Sequence[float], spent: Sequence[float],
              reserved: Sequence[float], events: Sequence[tuple[datetime, str]]) -> None:
    """Spent and reserved (stacked) under the cap, as step lines over the ledger entries' times; and
    beside it the spending alone on its own scale, which the cap would flatten."""
    with figure(path, panels=2, width=11.0) as (ax, zoom):
        zoom.step(times, spent, where="post", color=COLORS[3], label="spent (charged)")
        for when, label in events:
            zoom.axvline(when, color=COLORS[4], linestyle=":", linewidth=1, label=f"crossed {label}")
        zoom.yaxis.set_major_formatter(DOLLARS)
        zoom.set_ylim(bottom=0)
        zoom.set_title("spent, on its own scale")
        zoom.legend(loc="upper left", fontsize=7)
        plt.setp(zoom.get_xticklabels(), rotation=20, fontsize=7)
        committed = [s + r for s, r in zip(spent, reserved)]
        ax.fill_between(times, 0, spent, step="post", color=COLORS[3], alpha=0.6, label="spent (charged)")
        ax.fill_between(times, spent, committed, step="post", color=COLORS[1], alpha=0.35, label="reserved")
        ax.step(times, total, where="post", color="black", linewidth=1.5, label="cap (total)")
        for when, label in events:
            ax.axvline(when, color=COLORS[4], linestyle=":", linewidth=1)
            ax.annotate(label, (when, max(total) * 0.95), rotation=90, fontsize=7, color=COLORS[4], ha="right", va="top")
        ax.yaxis.set_major_formatter(DOLLARS)
        ax.set_ylim(bottom=0)
        ax.set_title(title)
        ax.legend(loc="upper left", fontsize=8)
        plt.setp(ax.get_xticklabels(), rotation=20, fontsize=7)


def improvement(path: Path, panels: Sequence[tuple[str, Sequence[tuple[str, float, float, Optional[float], Optional[float]]]]]) -> None:
    """Per unit, one panel: each group at (dollars per run, improvement) with its interval, if any."""
    with figure(path, panels=len(panels), width=max(5.0, 4.2 * len(panels))) as axes:
        for ax, (unit, points) in zip(axes, panels):
            for i, (label, x, y, low, high) in enumerate(points):
                err = None if low is None or high is None else [[y - low], [high - y]]
                ax.errorbar([x], [y], yerr=err, fmt="o", capsize=4, color=COLORS[i % len(COLORS)], label=label)
            ax.axhline(0, color="grey", linewidth=0.8)
            ax.xaxis.set_major_formatter(DOLLARS)
            ax.xaxis.set_major_locator(MaxNLocator(3))
            plt.setp(ax.get_xticklabels(), rotation=20, fontsize=7)
            ax.set_xlabel("dollars charged per run")
            ax.set_ylabel(f"improvement ({unit})")
            ax.set_title(unit)
            ax.legend(fontsize=7)


def grouped_bars(path: Path, title: str, labels: Sequence[str], series: dict[str, Sequence[Optional[float]]], ylabel: str,
                 errors: Optional[dict[str, Sequence[Optional[float]]]] = None) -> None:
    """Bars per label, one colour per series; a missing value leaves a gap."""
    width = 0.8 / max(1, len(series))
    with figure(path, width=max(6.0, 0.9 * len(labels) * max(1, len(series)) ** 0.5 + 2)) as (ax,):
        for k, (name, values) in enumerate(series.items()):
            xs = [i + k * width for i, v in enumerate(values) if v is not None]
            ys = [v for v in values if v is not None]
            err = None
            if errors and name in errors:
                err = [e or 0.0 for e, v in zip(errors[name], values) if v is not None]
            ax.bar(xs, ys, width=width, yerr=err, capsize=3 if err else 0, color=COLORS[k % len(COLORS)], label=name)
        ax.set_xticks([i + width * (len(series) - 1) / 2 for i in range(len(labels))])
        ax.set_xticklabels(labels, rotation=30, ha="right", fontsize=8)
        ax.axhline(0, color="grey", linewidth=0.8)
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.legend(fontsize=8)


def curves(path: Path, title: str, loss: dict[str, Sequence[tuple[int, float]]], val: dict[str, Sequence[tuple[int, float]]],
           attempt_starts: Sequence[tuple[int, int]]) -> None:
    """Training loss per step (left) and validation accuracy per step (right, when logged)."""
    panels = 2 if val else 1
    with figure(path, panels=panels, width=5.0 * panels + 1) as axes:
        for i, (run, points) in enumerate(loss.items()):
            axes[0].plot([s for s, _ in points], [v for _, v in points], color=COLORS[i % len(COLORS)], linewidth=1, label=run)
        for step, attempt in attempt_starts:
            axes[0].axvline(step, color="grey", linestyle=":", linewidth=1)
            axes[0].annotate(f"attempt {attempt}", (step, 1), xycoords=("data", "axes fraction"), fontsize=7,
                             rotation=90, ha="right", va="top", color="grey")
        axes[0].set_xlabel("step")
        axes[0].set_ylabel("training loss")
        axes[0].set_title(title)
        axes[0].legend(fontsize=7)
        if val:
            for i, (run, points) in enumerate(val.items()):
                axes[1].plot([s for s, _ in points], [v for _, v in points], marker="o", markersize=3,
                             color=COLORS[i % len(COLORS)], label=run)
            axes[1].set_xlabel("step")
            axes[1].set_ylabel("validation accuracy")
            axes[1].set_ylim(0, 1)
            axes[1].set_title("validation")
            axes[1].legend(fontsize=7)


def roc(path: Path, title: str, methods: dict[str, tuple[Sequence[float], Sequence[float], Optional[float]]]) -> None:
    """Out-of-scope detection: true positive rate (in-scope kept) against false positive rate (out-of-scope let in)."""
    with figure(path, width=4.8, height=4.2) as (ax,):
        for i, (method, (fpr, tpr, auroc)) in enumerate(methods.items()):
            label = method if auroc is None else f"{method} (AUROC {auroc:.3f})"
            ax.plot(fpr, tpr, marker=".", color=COLORS[i % len(COLORS)], label=label)
        ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=0.8)
        ax.set_xlabel("out-of-scope accepted (FPR)")
        ax.set_ylabel("in-scope accepted (TPR)")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.set_title(title)
        ax.legend(fontsize=7, loc="lower right")


def side_by_side(path: Path, title: str, panels: Sequence[tuple[str, dict[str, float]]]) -> None:
    """One small bar panel per quantity (each in its own unit), the models side by side in each."""
    with figure(path, panels=len(panels), width=2.6 * len(panels) + 1, height=3.2) as axes:
        for ax, (quantity, values) in zip(axes, panels):
            names = list(values)
            ax.bar(names, [values[n] for n in names], color=[COLORS[i % len(COLORS)] for i in range(len(names))])
            ax.set_title(quantity, fontsize=9)
            ax.tick_params(axis="x", labelsize=8)
        axes[0].figure.suptitle(title, fontsize=10)
