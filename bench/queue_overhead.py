"""Queue overhead: no-op jobs end to end through Redis, budgetq's gated path versus plain Celery.

    .venv/bin/python -m bench.queue_overhead [--jobs 400] [--concurrency 2]

Both runs use Redis as the broker and a warm prefork worker with the same settings (JSON, late
acks, prefetch 1). The gated run submits each job through budgetq (admit in the PostgreSQL
ledger, commit, publish), and its worker claims, runs a no-op initiative, and settles it; done
means every job has settled. The plain run publishes a Celery task that does nothing but count
itself done in Redis. Each clock runs from the first submit to the last completion.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

import redis

from bench.common import REDIS_URL, REPO, fresh_postgres, write_section


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, BROKER_URL=REDIS_URL, BUDGETQ_INITIATIVES="noop=bench.noop", PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


def _start(cmd: list[str], env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def _wait(predicate, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("the benchmark's jobs did not finish")
        time.sleep(0.02)


def gated(jobs: int, concurrency: int) -> float:
    with fresh_postgres() as url:
        env = _env(DATABASE_URL=url, BUDGETQ_HOME=f"/tmp/budgetq-bench-{os.getpid()}")
        os.environ.update(env)  # this process is the producer
        from models import queries, spend
        from models.db import Ledger
        from core.settings import load_settings
        from producer.admission import submit

        settings = load_settings()
        store = Ledger(url)
        store.upgrade()
        with store.session() as s:
            spend.create_budget(s, name="bench", total_micros=10**12)
        worker = _start([sys.executable, "-m", "producer", "worker", "-Q", "noop", "-c", str(concurrency), "--loglevel", "warning"], env)
        try:
            _warm_up(lambda: submit(store, settings, budget="bench", initiative="noop", estimate_micros=1_000, params={},
                                    queue=None, key=None, after=(), max_attempts=1), store)
            start = time.perf_counter()
            for _ in range(jobs):
                submit(store, settings, budget="bench", initiative="noop", estimate_micros=1_000, params={},
                       queue=None, key=None, after=(), max_attempts=1)
            _wait(lambda: _settled(store) == jobs + 1, timeout=600)
            elapsed = time.perf_counter() - start
            with store.session() as s:
                assert queries.audit(s) == []
            return elapsed
        finally:
            os.killpg(worker.pid, 15)
            worker.wait()
            store.engine.dispose()


def _warm_up(submit_one, store) -> None:
    """One job through first, so both clocks start with a worker that is already consuming."""
    submit_one()
    _wait(lambda: _settled(store) == 1, timeout=120)


def _settled(store) -> int:
    from models.attempts import count_jobs

    with store.session() as s:
        return count_jobs(s, statuses=("succeeded",))


def plain(jobs: int, concurrency: int) -> float:
    r = redis.Redis.from_url(REDIS_URL)
    r.delete("plain:done")
    worker = _start([sys.executable, "-m", "celery", "-A", "bench.plain_app", "worker", "-Q", "plain", "-c", str(concurrency),
                     "--loglevel", "warning", "--without-gossip", "--without-mingle", "--without-heartbeat"], _env())
    try:
        from bench.plain_app import noop

        noop.apply_async(args=[0], queue="plain")
        _wait(lambda: int(r.get("plain:done") or 0) == 1, timeout=120)
        start = time.perf_counter()
        for i in range(jobs):
            noop.apply_async(args=[i], queue="plain")
        _wait(lambda: int(r.get("plain:done") or 0) == jobs + 1, timeout=600)
        return time.perf_counter() - start
    finally:
        os.killpg(worker.pid, 15)
        worker.wait()


def measure(jobs: int, concurrency: int) -> tuple[float, float]:
    """(plain seconds, gated seconds) for ``jobs`` no-op jobs, in this checkout."""
    redis.Redis.from_url(REDIS_URL).flushdb()
    os.environ["BROKER_URL"] = REDIS_URL  # both the plain app and budgetq publish to this Redis
    return plain(jobs, concurrency), gated(jobs, concurrency)


_ROW = re.compile(r"\| (plain Celery|budgetq gated) \| \d+ \| [\d.]+ \| (\d+) \|")


def rates_of(checkout: Path, jobs: int, concurrency: int) -> dict[str, float]:
    """Jobs/s of each path, from a run of the bench script of ``checkout`` in a process of its own."""
    # An older script has no --no-write: it then rewrites its own checkout's docs, which are thrown away.
    quiet = ["--no-write"] if "--no-write" in (checkout / "bench" / "queue_overhead.py").read_text() else []
    done = subprocess.run([sys.executable, "-m", "bench.queue_overhead", "--jobs", str(jobs), "--concurrency", str(concurrency),
                           *quiet], cwd=checkout, env=dict(os.environ, PYTHONPATH=str(checkout)),
                          capture_output=True, text=True, timeout=900)
    found = dict(_ROW.findall(done.stdout))
    if len(found) != 2:
        raise SystemExit(f"{checkout}: no figures in its output:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return {"plain": float(found["plain Celery"]), "gated": float(found["budgetq gated"])}


def against(ref: str, rounds: int, jobs: int, concurrency: int) -> str:
    """Paired rounds of this checkout and ``ref`` (a worktree), alternating which goes first; the table."""
    import statistics
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="budgetq-queue-ab-"))
    subprocess.run(["git", "worktree", "add", "--detach", str(folder / "old"), ref], cwd=REPO, check=True, capture_output=True)
    try:
        pairs = []
        for n in range(rounds):
            order = [("old", folder / "old"), ("now", REPO)][:: 1 if n % 2 == 0 else -1]
            pairs.append({name: rates_of(checkout, jobs, concurrency) for name, checkout in order})
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(folder / "old")], cwd=REPO, capture_output=True)
    ratio = [p["now"]["gated"] / p["old"]["gated"] for p in pairs]
    share = {k: [p[k]["gated"] / p[k]["plain"] for p in pairs] for k in ("old", "now")}
    lines = [f"**Against `{ref}`** (before the architecture rework), {rounds} paired rounds in one run, each checkout's own "
             "script in a process of its own, the order alternating. Gated jobs/s:", "",
             "| round | before | now | now / before | gated share of plain, before | now |", "|---:|---:|---:|---:|---:|---:|"]
    for n, p in enumerate(pairs, start=1):
        lines.append(f"| {n} | {p['old']['gated']:.0f} | {p['now']['gated']:.0f} | {ratio[n - 1]:.2f} | "
                     f"{100 * share['old'][n - 1]:.0f}% | {100 * share['now'][n - 1]:.0f}% |")
    lines += ["", f"Median now / before: **{statistics.median(ratio):.2f}x** gated jobs/s; gated share of plain "
                  f"{100 * statistics.median(share['old']):.0f}% before, {100 * statistics.median(share['now']):.0f}% now "
                  "(medians over rounds)."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=400)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--against", metavar="REF", help="also run this git ref's bench in paired rounds and compare")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-write", action="store_true", help="print the section, leave docs/BENCHMARKS.md alone")
    args = parser.parse_args()
    plain_s, gated_s = measure(args.jobs, args.concurrency)
    plain_rate, gated_rate = args.jobs / plain_s, args.jobs / gated_s
    load = os.getloadavg()[0]
    body = f"""
`.venv/bin/python -m bench.queue_overhead --jobs {args.jobs} --concurrency {args.concurrency}` on {platform.machine()},
{os.cpu_count()} cores (load average {load:.1f} when it ended: other work shares them, so compare
figures within one run, not across runs); {time.strftime('%Y-%m-%d')}. No-op jobs end to end through Redis, from the
first submit to the last completion, with a warm prefork worker of {args.concurrency} processes.
Gated: budgetq admits each job in the PostgreSQL ledger, publishes it after commit, and the worker
claims it (with a heartbeat thread and a lease), runs a no-op initiative and settles it. Plain: a
Celery task that only counts itself done. Target: gated at least 80% of plain.

| path | jobs | seconds | jobs/s |
|---|---|---|---|
| plain Celery | {args.jobs} | {plain_s:.2f} | {plain_rate:.0f} |
| budgetq gated | {args.jobs} | {gated_s:.2f} | {gated_rate:.0f} |

Gated reaches **{100 * gated_rate / plain_rate:.0f}%** of plain.
"""
    if args.against:
        body += "\n" + against(args.against, args.rounds, args.jobs, args.concurrency) + "\n"
    if not args.no_write:
        write_section("Queue overhead", body)
    print(body)


if __name__ == "__main__":
    main()
