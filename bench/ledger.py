"""Ledger throughput: admit → claim → settle cycles per second, and the budget gate's latency.

    .venv/bin/python -m bench.ledger [--seconds 8]

Runs 1, 4 and 8 processes on SQLite and on PostgreSQL, each process cycling one job at a time
through budgetq's ledger operations (each its own transaction). In the same run it measures a raw
psycopg baseline on PostgreSQL: the same three transitions against the same schema, one SQL
statement each, in autocommit. Every run ends with an audit and an overspend check.
"""

from __future__ import annotations

import argparse
import multiprocessing
import platform
import tempfile
import time
import uuid
from pathlib import Path

from bench.common import fresh_postgres, percentile, write_section

TOTAL = 10**15  # far more than any run admits: throughput, not exhaustion, is measured here
ESTIMATE, COST = 1_000, 700


def budgetq_worker(url: str, seconds: float, start, out) -> None:
    from models import ledger
    from models.db import Ledger

    store = Ledger(url)
    name = f"w{uuid.uuid4().hex[:6]}"
    gate, cycles = [], 0
    start.wait()
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        t0 = time.perf_counter()
        with store.session() as s:
            job, _ = ledger.admit_job(s, budget="bench", initiative="calibrate", queue="calibrate", params={},
                                      estimate_micros=ESTIMATE, max_attempts=1)
        gate.append(time.perf_counter() - t0)
        with store.session() as s:
            claim = ledger.claim_job(s, job_id=job.id, worker=name, lease_seconds=60)
        with store.session() as s:
            ledger.settle_job(s, job_id=job.id, attempt=claim.attempt, worker=name, status="succeeded", cost_micros=COST)
        cycles += 1
    out.put((cycles, gate))


ADMIT_SQL = """
WITH b AS (
  UPDATE budgets SET reserved_micros = reserved_micros + %(x)s
  WHERE id = %(budget)s AND spent_micros + reserved_micros + %(x)s <= total_micros RETURNING id
), j AS (
  INSERT INTO jobs (id, budget_id, initiative, queue, params, status, rank, estimate_micros, reserved_micros,
                    charged_micros, metered_micros, last_charge_micros, last_release_micros, attempts, max_attempts,
                    cancel_requested, created_at, updated_at)
  SELECT %(id)s, b.id, 'calibrate', 'calibrate', '{}', 'admitted', 0, %(x)s, %(x)s, 0, 0, 0, 0, 0, 1, false, now(), now()
  FROM b RETURNING id, budget_id
)
INSERT INTO ledger_entries (budget_id, job_id, attempt, kind, amount_micros, created_at)
SELECT budget_id, id, 0, 'reserve', %(x)s, now() FROM j RETURNING job_id
"""
CLAIM_SQL = """
UPDATE jobs SET status = 'running', attempts = attempts + 1, worker = %(w)s, lease_until = now() + interval '60 s',
  started_at = now(), updated_at = now()
WHERE id = %(id)s AND status IN ('admitted', 'requeued') AND attempts < max_attempts RETURNING attempts
"""
SETTLE_SQL = """
WITH j AS (
  UPDATE jobs SET status = 'succeeded', charged_micros = charged_micros + LEAST(%(c)s, reserved_micros),
    reserved_micros = 0, finished_at = now(), updated_at = now()
  WHERE id = %(id)s AND attempts = %(a)s AND status = 'running'
  RETURNING budget_id, id, LEAST(%(c)s, estimate_micros) AS charge, estimate_micros - LEAST(%(c)s, estimate_micros) AS rest
), b AS (
  UPDATE budgets SET spent_micros = spent_micros + j.charge, reserved_micros = reserved_micros - j.charge - j.rest
  FROM j WHERE budgets.id = j.budget_id
)
INSERT INTO ledger_entries (budget_id, job_id, attempt, kind, amount_micros, created_at)
SELECT budget_id, id, %(a)s, 'charge', charge, now() FROM j
UNION ALL SELECT budget_id, id, %(a)s, 'release', rest, now() FROM j
"""


def raw_worker(url: str, seconds: float, start, out) -> None:
    import psycopg

    conn = psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True)
    budget = conn.execute("SELECT id FROM budgets WHERE name = 'bench'").fetchone()[0]
    name = f"raw{uuid.uuid4().hex[:6]}"
    gate, cycles = [], 0
    start.wait()
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        job_id = uuid.uuid4().hex
        t0 = time.perf_counter()
        assert conn.execute(ADMIT_SQL, {"x": ESTIMATE, "budget": budget, "id": job_id}).fetchone()
        gate.append(time.perf_counter() - t0)
        attempt = conn.execute(CLAIM_SQL, {"w": name, "id": job_id}).fetchone()[0]
        conn.execute(SETTLE_SQL, {"c": COST, "id": job_id, "a": attempt})
        cycles += 1
    out.put((cycles, gate))


def measure(target, url: str, processes: int, seconds: float) -> dict:
    from models import ledger, queries
    from models.db import Ledger

    store = Ledger(url)
    store.upgrade()
    with store.session() as s:
        ledger.create_budget(s, name="bench", total_micros=TOTAL)
    spawn = multiprocessing.get_context("spawn")
    start, out = spawn.Event(), spawn.Queue()
    procs = [spawn.Process(target=target, args=(url, seconds, start, out)) for _ in range(processes)]
    for p in procs:
        p.start()
    time.sleep(1.5)  # let every process import and connect before the clock starts
    start.set()
    results = [out.get(timeout=seconds + 120) for _ in procs]
    for p in procs:
        p.join()
    with store.session() as s:
        problems = queries.audit(s)
        budget = queries.get_budget(s, name="bench")
    store.engine.dispose()
    gate = [g for _, gs in results for g in gs]
    return {
        "pairs_per_s": sum(c for c, _ in results) / seconds,
        "p50_ms": 1000 * percentile(gate, 0.50),
        "p99_ms": 1000 * percentile(gate, 0.99),
        "overspend": max(0, budget.spent_micros + budget.reserved_micros - budget.total_micros),
        "audit": "clean" if not problems else f"{len(problems)} problems",
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--processes", default="1,4,8")
    args = parser.parse_args()
    counts = [int(n) for n in args.processes.split(",")]
    rows, ratios = [], {}
    for n in counts:
        with tempfile.TemporaryDirectory() as tmp:
            rows.append(("budgetq", "SQLite", n, measure(budgetq_worker, f"sqlite:///{Path(tmp) / 'l.db'}", n, args.seconds)))
        with fresh_postgres() as url:
            rows.append(("budgetq", "PostgreSQL", n, measure(budgetq_worker, url, n, args.seconds)))
        with fresh_postgres() as url:
            rows.append(("raw psycopg, autocommit", "PostgreSQL", n, measure(raw_worker, url, n, args.seconds)))
        ratios[n] = rows[-2][3]["pairs_per_s"] / rows[-1][3]["pairs_per_s"]
        print(rows[-3:], flush=True)
    table = ["| path | database | processes | cycles/s | gate p50 ms | gate p99 ms | overspend | audit |", "|---|---|---|---|---|---|---|---|"]
    for path, db, n, r in rows:
        table.append(f"| {path} | {db} | {n} | {r['pairs_per_s']:.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['overspend']} | {r['audit']} |")
    ratio_lines = "\n".join(f"- {n} process(es): budgetq reaches **{100 * v:.0f}%** of the raw baseline on PostgreSQL" for n, v in ratios.items())
    body = f"""
`.venv/bin/python -m bench.ledger --seconds {args.seconds:g}` on {platform.machine()}, {multiprocessing.cpu_count()} cores;
{time.strftime('%Y-%m-%d')}. A cycle is admit (the budget gate) → claim → settle, each its own
transaction, one job at a time per process; the gate latency is the admit's. The raw baseline runs
the same three transitions on the same schema as one SQL statement each, in autocommit. Target:
budgetq at least 80% of the baseline on PostgreSQL with 8 processes, with 0 overspend.

{chr(10).join(table)}

{ratio_lines}
"""
    write_section("Ledger throughput", body)
    print(body)


if __name__ == "__main__":
    main()
