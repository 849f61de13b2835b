"""How the training defaults were chosen: validation curves of MiniLM-L6 on CLINC150 10shot and full.

Each configuration fine-tunes the pretrained MiniLM-L6 with the training loop of ``worker.ml.train``
(epochs mode, the LR decaying over the cap) with early stopping switched off (patience beyond the
cap), scoring the 3,000 validation rows every ``eval_every`` steps, and appends each point to
``<work>/<name>/curve.jsonl``. Only validation is read: the test split is not touched here.
``--report`` turns the curves into the docs/BENCHMARKS.md section, including where early stopping
with a given patience would have stopped each run.

    python -m bench.explore_defaults --run NAME VARIANT LR EPOCHS EVAL_EVERY   # one curve (minutes to an hour)
    python -m bench.explore_defaults --report                                  # the section, from the curves
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parents[1]
sys.path[:] = [str(REPO)] + [p for p in sys.path if Path(p or ".").resolve() != REPO / "bench"]

from bench.ml_loop import _context_module  # noqa: E402

WORK = REPO / ".budgetq" / "bench-explore"
PATIENCES = (2, 3, 4)


def run_curve(name: str, variant: str, lr: float, epochs: int, eval_every: int, *, batch_size: int = 32,
              threads: int = 1, work: Path = WORK) -> None:
    """Train one configuration to its cap, logging validation accuracy and macro-F1 as it goes."""
    import torch

    from worker.ml.data import load_dataset
    from worker.ml.modeling import load_classifier
    from worker.ml.train import Plan, TrainConfig, seed_everything, train

    torch.set_num_threads(threads)
    dataset = load_dataset("clinc150", variant=variant)
    folder = work / name
    folder.mkdir(parents=True, exist_ok=True)
    ctx = _context_module().InProcessContext(folder, "baseline", history=[], params={})
    cfg = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, eval_every=eval_every, patience=10**6,
                      checkpoint_every=10**6)
    per_epoch = Plan.of(cfg, len(dataset.train), len(dataset.val)).per_epoch
    (folder / "config.json").write_text(json.dumps({"variant": variant, "lr": lr, "epochs": epochs, "batch_size": batch_size,
                                                    "eval_every": eval_every, "per_epoch": per_epoch}))
    start = time.perf_counter()

    def on_eval(step: int, accuracy: float, macro_f1: float) -> None:
        losses = [m.value for m in ctx.metrics if m.name == "train.loss"][-eval_every:]
        point = {"step": step, "epoch": step / per_epoch, "val_accuracy": accuracy, "val_macro_f1": macro_f1,
                 "train_loss": sum(losses) / len(losses), "wall_s": time.perf_counter() - start}
        with (folder / "curve.jsonl").open("a") as out:
            out.write(json.dumps(point) + "\n")

    seed_everything(0)
    model, tokenizer = load_classifier("", dataset.labels)
    train(model, tokenizer, dataset.train.texts, dataset.label_ids(dataset.train), cfg, ctx,
          val=(dataset.val.texts, dataset.label_ids(dataset.val)), on_eval=on_eval)


def stop_point(curve: list[dict], patience: int, every: int = 1) -> tuple[dict, Optional[dict]]:
    """(the point early stopping keeps, the point it stops at, or None if the curve ends first),
    validating at every ``every``-th point."""
    points = curve[every - 1 :: every]
    best, waited = points[0], 0
    for point in points[1:]:
        if point["val_macro_f1"] > best["val_macro_f1"]:
            best, waited = point, 0
        else:
            waited += 1
            if waited >= patience:
                return best, point
    return best, None


def report(work: Path = WORK) -> str:
    """The markdown section: every curve, and what each patience would have done with it."""
    lines = ["Validation curves (3,000 `full` validation rows, macro-F1) of the pretrained MiniLM-L6 fine-tuned with "
             "the training loop, early stopping off, one seed; batch 32, AdamW, warmup then linear decay to zero "
             "at the cap. Only validation was read. Each curve was stopped by hand once its shape was clear, to free the "
             "cores for the benchmark. Re-run: `python -m bench.explore_defaults --run ...` per curve, then `--report`.", ""]
    for folder in sorted(p for p in work.iterdir() if (p / "curve.jsonl").is_file()):
        config = json.loads((folder / "config.json").read_text())
        curve = [json.loads(line) for line in (folder / "curve.jsonl").read_text().splitlines()]
        cells = ", ".join(f"{p['epoch']:.1f}: {p['val_macro_f1']:.3f}" for p in curve)
        lines += [f"**{config['variant']}, lr {_rate(config['lr'])}, cap {config['epochs']} epochs** "
                  f"({config['per_epoch']} steps an epoch, validation every {config['eval_every']} steps; "
                  f"{curve[-1]['wall_s'] / 60:.0f} min for {curve[-1]['epoch']:.1f} epochs on 1 thread, beside other runs): "
                  f"epoch: val macro-F1 {cells}.", ""]
        every = max(1, round(config["per_epoch"] / config["eval_every"]))  # validate once per epoch at the least
        for patience in PATIENCES:
            best, stop = stop_point(curve, patience, every)
            where = f"stops at epoch {stop['epoch']:.1f}" if stop else f"has not stopped when the curve ends (epoch {curve[-1]['epoch']:.1f})"
            steps = config["eval_every"] * every
            lines.append(f"- validating every {steps} steps ({steps / config['per_epoch']:.1f} epochs), patience {patience}: "
                         f"{where}, keeping epoch {best['epoch']:.1f} (val macro-F1 {best['val_macro_f1']:.3f})")
        lines.append("")
    return "\n".join(lines + chosen())


def _rate(lr: float) -> str:
    return f"{lr:.0e}".replace("e-0", "e-")  # 0.0002 -> 2e-4


def chosen() -> list[str]:
    """The defaults baseline ships with, read from its ``Params``."""
    from worker.initiatives.baseline import Params

    d = Params()
    return [f"Chosen (baseline's `Params`; augment, curriculum and distill share the schedule, with their own rates): "
            f"lr {_rate(d.lr)}, batch {d.batch_size}, cap {d.epochs} epochs, validation once per epoch (eval_every {d.eval_every}: "
            f"automatic), patience {d.patience}, min_delta {d.min_delta:g}, warmup {d.warmup_ratio:.0%} of the cap but "
            "at most one epoch. The new-default runs in the section \"ML answers\" show where they stop."]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", nargs=5, metavar=("NAME", "VARIANT", "LR", "EPOCHS", "EVAL_EVERY"))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--report", action="store_true")
    parser.add_argument("--work", type=Path, default=WORK)
    args = parser.parse_args()
    if args.run:
        name, variant, lr, epochs, eval_every = args.run
        run_curve(name, variant, float(lr), int(epochs), int(eval_every), threads=args.threads, work=args.work)
    if args.report:
        from bench.common import write_section

        body = report(args.work)
        print(body)
        write_section("Choosing the training defaults", body)


if __name__ == "__main__":
    main()
