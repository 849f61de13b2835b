"""Benchmark how close budgetq's training loop runs to a tight loop on the same device: the "GPU efficiency".

In one process, on one device, on the same rows of CLINC150 ``full`` (a seeded subset), the same
model (pretrained MiniLM-L6, a fresh 150-way head each time), batch size, sequence lengths (the
texts tokenized once, each batch padded to its own longest row) and precision (bf16 autocast on
CUDA, fp32 on CPU):

- ``reference``: a tight loop, forward, backward and AdamW with everything already on the device,
  no scheduler, clipping, logging or checkpoint;
- ``budgetq now``: ``worker.ml.train.train`` as it is, its training rows per second of train-phase
  time (``worker.ml.phases``) and of the whole call (tokenizing, moving the model, the final checkpoint);
- ``budgetq before``: the loop as it was before this benchmark's changes (``worker/ml/train.py``
  at ``BEFORE``, loaded from git into a temporary module), over the whole call, since it times no phases;
- a whole ``baseline`` job on the same rows (the tests' in-process context, as ``bench.ml_loop``):
  its phases, and the share of its wall time that is not training (the overhead a GPU is idle for).

The loops take turns, round after round, and each keeps its best round, so a burst of load from
another process on a shared machine does not decide a ratio. On CUDA the GPU-busy share is sampled
(``torch.cuda.utilization``, every 50 ms) while each loop runs.

    python -m bench.gpu_efficiency --write       # CPU: a few minutes with 1 torch thread
    python -m bench.gpu_efficiency --rows 15000 --steps 400 --write   # on a CUDA machine
"""

from __future__ import annotations

import argparse
import importlib.util
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.ml_loop import _context_module

REPO = Path(__file__).resolve().parents[1]
BEFORE = "0a190844bf17374b18f7a17bd2fcf75fb0071d7f"  # the training loop before issue 12's changes
LR = 2e-4


@dataclass
class Arm:
    name: str
    samples_per_s: list[float] = field(default_factory=list)  # per round, steady state
    busy: list[float] = field(default_factory=list)  # per round, GPU-busy share (CUDA only)

    def median(self) -> float:
        return statistics.median(self.samples_per_s)


def paired(a: Arm, b: Arm) -> float:
    """The median over rounds of a / b, each round's two taken one after the other (like load)."""
    return statistics.median(x / y for x, y in zip(a.samples_per_s, b.samples_per_s))


@dataclass(frozen=True)
class Setup:
    texts: tuple[str, ...]
    label_ids: tuple[int, ...]
    labels: tuple[str, ...]
    steps: int
    batch_size: int
    device: str


def load_rows(rows: int):
    """CLINC150 ``full`` and about ``rows`` of its training rows: the first of each intent, every intent alike."""
    from worker.ml.data import load_dataset

    dataset = load_dataset("clinc150", variant="full")
    return dataset, dataset.train.per_label(-(-rows // len(dataset.labels)))


def fresh_model(setup: Setup):
    from worker.ml.modeling import load_classifier
    from worker.ml.train import seed_everything

    seed_everything(0)
    return load_classifier("", setup.labels)


def batch_order(setup: Setup) -> list[list[int]]:
    """The rows of each step: the seeded per-epoch shuffle the training loop draws (``_Batches``)."""
    import torch

    size, order, out = len(setup.texts), [], []
    per_epoch = -(-size // setup.batch_size)
    for step in range(setup.steps):
        epoch, position = divmod(step, per_epoch)
        if position == 0:
            order = torch.randperm(size, generator=torch.Generator().manual_seed(epoch)).tolist()
        out.append(order[position * setup.batch_size : (position + 1) * setup.batch_size])
    return out


class Window:
    """Steady-state samples/s: from the end of the first step to the end of the last but one.

    The first step pays for allocation (and kernel selection on CUDA); after the last, ``train``
    checkpoints; in between is the loop itself. On CUDA the two edges wait for the device.
    """

    def __init__(self, setup: Setup) -> None:
        self.setup, self.edges = setup, {}

    def __call__(self, step: int) -> None:
        if step in (1, self.setup.steps - 1):
            _sync(self.setup.device)
            self.edges[step] = time.perf_counter()

    def samples_per_s(self) -> float:
        seconds = self.edges[self.setup.steps - 1] - self.edges[1]
        return (self.setup.steps - 2) * self.setup.batch_size / seconds


def reference(setup: Setup, model, tokenizer) -> float:
    """Steady samples/s of the tight loop; the data is tokenized and on the device before it starts."""
    import torch

    device, window = setup.device, Window(setup)
    encoded = tokenizer(list(setup.texts), padding=True, truncation=True, max_length=64, return_tensors="pt")
    lengths = encoded["attention_mask"].sum(dim=1).tolist()
    tensors = {k: v.to(device) for k, v in encoded.items()}
    labels = torch.tensor(setup.label_ids, device=device)
    model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, fused=True if device == "cuda" else None)
    steps = [(torch.tensor(rows, device=device), max(lengths[i] for i in rows)) for rows in batch_order(setup)]
    for step, (rows, width) in enumerate(steps, start=1):
        with _autocast(device):
            loss = model(**{k: v[:, :width][rows] for k, v in tensors.items()}, labels=labels[rows]).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        window(step)
    return window.samples_per_s()


def budgetq_loop(setup: Setup, model, tokenizer, root: Path, module=None) -> tuple[float, float]:
    """(steady samples/s, train-phase samples/s or nan) of ``train``: today's, or ``module``'s (no phases)."""
    from worker.ml.phases import Phases

    if module is None:
        from worker.ml import train as module
    cfg = module.TrainConfig(steps=setup.steps, batch_size=setup.batch_size, lr=LR, checkpoint_every=10 * setup.steps, seed=0)
    ctx = _context_module().InProcessContext(root, "baseline", history=[], params={})
    window, phases = Window(setup), Phases()
    timed = {"phases": phases} if "phases" in module.train.__code__.co_varnames else {}
    module.train(model, tokenizer, setup.texts, setup.label_ids, cfg, ctx, on_step=window, **timed)
    return window.samples_per_s(), phases.samples_per_s() if timed else float("nan")


def before_module(folder: Path):
    """``worker/ml/train.py`` at ``BEFORE`` as a module, or None where git cannot show it."""
    done = subprocess.run(["git", "-C", str(REPO), "show", f"{BEFORE}:worker/ml/train.py"], capture_output=True, text=True)
    if done.returncode != 0:
        return None
    path = folder / "train_before.py"
    path.write_text(done.stdout)
    spec = importlib.util.spec_from_file_location("train_before", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up while being built
    spec.loader.exec_module(module)
    return module


def baseline_job(setup: Setup, dataset, subset, root: Path) -> dict[str, float]:
    """A whole baseline job on the subset (validation and test cut to 1,500 rows each): its scalar metrics."""
    import json

    folder = root / "data"
    folder.mkdir()
    splits = {"train": subset, "val": dataset.val.pick(list(range(0, len(dataset.val), 2))),
              "test": dataset.test.pick(list(range(0, len(dataset.test), 3)))}
    for split, examples in splits.items():
        with (folder / f"{split}.jsonl").open("w") as out:
            for text, label, group in zip(examples.texts, examples.labels, examples.slices):
                out.write(json.dumps({"text": text, "label": label, "domain": group}) + "\n")
    params = {"dataset": str(folder), "steps": setup.steps, "batch_size": setup.batch_size, "lr": LR,
              "eval_every": setup.steps, "checkpoint_every": setup.steps, "latency_samples": 20}
    ctx = _context_module().run_job(root / "job", "baseline", params, [])
    return {m.name: m.value for m in ctx.metrics if m.step is None and m.slice is None}


class BusySampler:
    """The GPU-busy share while a block runs (CUDA with NVML only; None elsewhere)."""

    def __init__(self, device: str) -> None:
        self.device, self.samples, self.running = device, [], False

    def __enter__(self) -> "BusySampler":
        if self.device == "cuda" and _nvml_ready():
            import torch

            self.running = True
            self.thread = threading.Thread(target=self._sample, args=(torch,), daemon=True)
            self.thread.start()
        return self

    def _sample(self, torch) -> None:
        while self.running:
            self.samples.append(torch.cuda.utilization() / 100)
            time.sleep(0.05)

    def __exit__(self, *exc) -> None:
        if self.running:
            self.running = False
            self.thread.join()

    def share(self):
        return sum(self.samples) / len(self.samples) if self.samples else None


def _nvml_ready() -> bool:
    import torch

    try:
        torch.cuda.utilization()
        return True
    except Exception:  # no pynvml, or no NVML on this machine: the share is not taken
        return False


def _sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def _autocast(device: str):
    import contextlib

    import torch

    return torch.autocast("cuda", dtype=torch.bfloat16) if device == "cuda" else contextlib.nullcontext()


def run(args) -> dict:
    import torch

    from worker.ml.modeling import pick_device

    torch.set_num_threads(args.threads)
    device = pick_device()
    dataset, subset = load_rows(args.rows)
    setup = Setup(subset.texts, tuple(dataset.label_ids(subset)), dataset.labels, args.steps, args.batch_size, device)
    arms = {name: Arm(name) for name in ("reference", "before", "now")}
    phase_rate = []
    with tempfile.TemporaryDirectory(prefix="budgetq-gpu-eff-") as tmp:
        root = Path(tmp)
        old = before_module(root)
        for round_no in range(args.rounds):
            for name, arm in arms.items():
                if name == "before" and old is None:
                    continue
                model, tokenizer = fresh_model(setup)
                with BusySampler(device) as busy:
                    if name == "reference":
                        rate = reference(setup, model, tokenizer)
                    else:
                        rate, phase = budgetq_loop(setup, model, tokenizer, root / f"{name}-{round_no}", old if name == "before" else None)
                        if name == "now":
                            phase_rate.append(phase)
                arm.samples_per_s.append(rate)
                if busy.share() is not None:
                    arm.busy.append(busy.share())
                print(f"round {round_no + 1} {name}: {rate:.1f} samples/s", file=sys.stderr)
                del model
        job = baseline_job(setup, dataset, subset, root)
    return {"args": vars(args), "rows": len(subset), "device": _device_name(device), "threads": torch.get_num_threads(), "arms": arms,
            "phase_rate": statistics.median(phase_rate), "job": job, "git_before": old is not None}


def _device_name(device: str) -> str:
    import torch

    if device == "cuda":
        return f"cuda: {torch.cuda.get_device_name()}"
    return f"cpu: {platform.processor() or platform.machine()}"


def report(result: dict) -> str:
    from core.phases import PHASES, time_split

    args, arms, job = result["args"], result["arms"], result["job"]
    ref = arms["reference"]
    split = time_split(job)

    def busy(arm: Arm) -> str:
        return f"{100 * statistics.median(arm.busy):.0f}%" if arm.busy else "n/a"

    lines = [
        f"Device: **{result['device']}**, {result['threads']} torch threads. MiniLM-L6 (pretrained, new 150-way head), "
        f"{result['rows']} training rows of CLINC150 full, {args['steps']} steps at batch {args['batch_size']}, "
        f"{'bf16 autocast' if result['device'].startswith('cuda') else 'fp32'}; {args['rounds']} rounds, the loops in turn. "
        "Samples/s are steady state (from the end of step 1 to the end of the last step but one: no warm-up, no final "
        "checkpoint), the median over rounds; ratios are the median of each round's ratio. "
        "Re-run: `python -m bench.gpu_efficiency --write`.",
        "",
        "| loop | samples/s | / reference | GPU busy |",
        "|---|---:|---:|---:|",
        f"| reference tight loop (forward, backward, AdamW; data on the device) | {ref.median():.1f} | 1.00 | {busy(ref)} |",
        f"| budgetq `train()` now | {arms['now'].median():.1f} | {paired(arms['now'], ref):.2f} | {busy(arms['now'])} |",
    ]
    if arms["before"].samples_per_s:
        lines.append(f"| budgetq `train()` before (`{BEFORE[:7]}`) | {arms['before'].median():.1f} | "
                     f"{paired(arms['before'], ref):.2f} | {busy(arms['before'])} |")
    lines += ["", f"budgetq now, train phase as the job logs it (`train.samples_per_s`: every step, first and last "
                  f"included, the loss syncs too): {result['phase_rate']:.1f} samples/s."]
    if arms["before"].samples_per_s:
        lines += ["", f"**Now against before** (same run, per-round pairs): **{paired(arms['now'], arms['before']):.3f}x** "
                      f"(rounds: {', '.join(f'{a / b:.3f}' for a, b in zip(arms['now'].samples_per_s, arms['before'].samples_per_s))})."]
    lines += [
        "",
        f"A whole baseline job on the same rows (validation once, the final evaluation on 1/3 of test, latency at batch 1): "
        f"{split.wall:.1f} s, train phase {100 * split.train_share:.0f}% of it, so **{100 * (1 - split.train_share):.0f}% "
        f"overhead** (the device is not training); {split.samples_per_s:.1f} training rows/s in the train phase.",
        "",
        "| phase | " + " | ".join(PHASES) + " | other |",
        "|---|" + "---:|" * (len(PHASES) + 1),
        "| seconds | " + " | ".join(f"{split.seconds[p]:.1f}" for p in PHASES) + f" | {split.other:.1f} |",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1500, help="training rows of CLINC150 full (about; the same number per intent)")
    parser.add_argument("--steps", type=int, default=12, help="optimizer steps per loop (at least 4)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (the machine may be shared)")
    parser.add_argument("--write", action="store_true", help="write the GPU efficiency section of docs/BENCHMARKS.md")
    parser.add_argument("--note", default="", help="a paragraph to put under the figures (e.g. why GPU figures are missing)")
    args = parser.parse_args()
    body = report(run(args))
    if args.note:
        body += "\n\n" + args.note
    print(body)
    if args.write:
        from bench.common import write_section

        write_section("GPU efficiency", body)


if __name__ == "__main__":
    main()
