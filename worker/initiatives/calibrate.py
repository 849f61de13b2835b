"""calibrate: measure what this worker buys per second, so it can be priced.

Runs a timed matmul loop and a timed transformer-encoder forward pass on the worker's device
(GPU when present), and records the throughput of each as metrics. It is also the smallest real
payload for exercising the queue end to end before the ML payloads.
"""

from __future__ import annotations

import torch

from specs.calibrate import Params


import time


def run(params: Params, ctx) -> None:
    torch.manual_seed(params.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    ctx.log_metric("cuda", float(device.type == "cuda"))
    ctx.log_metric("torch_threads", float(torch.get_num_threads()))
    flops = _matmul(params, ctx, device, budget_s=params.seconds / 2)
    _forward(params, ctx, device, budget_s=params.seconds / 2)
    cost_dollars = ctx.cost_micros() / 1_000_000
    if cost_dollars > 0:
        ctx.log_metric("matmul_gflop_per_dollar", flops / 1e9 / cost_dollars)


def _timed_loop(step, ctx, device, budget_s: float) -> tuple[int, float]:
    """Call ``step`` until the time budget (or the job's) runs out; count calls and seconds."""
    step()  # warm-up: kernel selection and allocation stay out of the timing
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < budget_s and not ctx.should_stop():
        step()
        calls += 1
        # Synchronise every call: the clock must see finished GPU work, not queued launches.
        sync()
    return calls, time.perf_counter() - start


def _matmul(params: Params, ctx, device, budget_s: float) -> float:
    n = params.matrix_size
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    calls, elapsed = _timed_loop(lambda: a @ b, ctx, device, budget_s)
    flops = 2.0 * n**3 * calls
    if elapsed > 0:
        ctx.log_metric("matmul_gflops", flops / elapsed / 1e9)
        ctx.log_metric("matmul_calls", float(calls))
    return flops


def _forward(params: Params, ctx, device, budget_s: float) -> None:
    layer = torch.nn.TransformerEncoderLayer(params.d_model, nhead=4, batch_first=True).to(device).eval()
    x = torch.randn(params.batch_size, params.seq_len, params.d_model, device=device)
    with torch.inference_mode():
        calls, elapsed = _timed_loop(lambda: layer(x), ctx, device, budget_s)
    if elapsed > 0:
        ctx.log_metric("forward_samples_per_s", calls * params.batch_size / elapsed)
        ctx.log_metric("forward_ms_per_batch", 1000 * elapsed / max(calls, 1))
