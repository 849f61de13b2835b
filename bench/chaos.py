"""Chaos: a fleet of real workers on a private PostgreSQL, Redis and S3 server while faults fire at random.

Several `budgetq worker` processes (each a "machine" with a home of its own, sharing only the
ledger, the broker and an S3 bucket) run a stream of real jobs: `calibrate` and a tiny-BERT
`baseline` on a 10-intent CLINC150 subset that checkpoints to the bucket. Meanwhile faults fire:
SIGKILL of a worker (the machine vanishes) or of one of its pool processes, SIGTERM, spot notices
from each worker's own IMDSv2-shaped metadata server, broker and database restarts (our own
servers, by PID), and malformed messages. A supervisor restarts whatever exits, as systemd would.
Then the fleet drains, and the ledger is checked.

    python -m bench.chaos                  # about 15 minutes on 2 CPU cores (6 of them under faults)
    python -m bench.chaos --minutes 1 --faults 15 --no-write   # a smoke run

Writes the "Chaos: a spot fleet under faults" section of docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parents[1]
sys.path[:] = [str(REPO)] + [p for p in sys.path if Path(p or ".").resolve() != REPO / "bench"]

from bench.chaos_report import PRICE, measure, report  # noqa: E402
FAULT_WEIGHTS = {
    "malformed message": 30, "SIGKILL pool process": 14, "SIGKILL worker": 12, "SIGTERM worker": 12,
    "spot notice (IMDSv2)": 14, "broker restart": 9, "database restart": 9,
}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# ---------------------------------------------------------------------------------------------
# The fleet: one supervised worker process per "machine"


@dataclass
class Machine:
    index: int
    env: dict[str, str]
    home: Path
    metadata: object  # tests.servers.MetadataServer
    logfile: Path
    generation: int = 0
    proc: Optional[subprocess.Popen] = None
    expecting: Optional[str] = None  # why we expect the current process to exit
    started_at: float = 0.0
    exits: list[tuple[str, int]] = field(default_factory=list)  # (cause, exit code)

    @property
    def name(self) -> str:
        return f"m{self.index}-g{self.generation}"

    def start(self) -> None:
        self.generation += 1
        self.metadata.noticed = False  # a new machine: no notice pending
        self.expecting = None
        self.started_at = time.monotonic()
        handle = open(self.logfile, "a")
        handle.write(f"\n===== {self.name} starting =====\n")
        handle.flush()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "producer", "worker", "--loglevel", "info", "--queues", "calibrate,baseline"],
            env={**self.env, "WORKER_NAME": self.name}, cwd=REPO, start_new_session=True, stdout=handle,
            stderr=subprocess.STDOUT, text=True,
        )

    def check(self) -> None:
        """Record an exit and restart (the supervisor's loop)."""
        if self.proc is None or self.proc.poll() is None:
            return
        code = self.proc.returncode
        cause = self.expecting or "unexpected"
        self.exits.append((cause, code))
        if cause == "unexpected" or (cause.startswith("asked") and code != 0):
            log(f"{self.name} exited {code} unexpectedly (expected: {self.expecting})")
        time.sleep(random.uniform(0.5, 2.0))
        self.start()

    def pool_children(self) -> list[int]:
        if self.proc is None or self.proc.poll() is not None:
            return []
        pids: list[int] = []
        for children in Path(f"/proc/{self.proc.pid}/task").glob("*/children"):
            try:
                pids += [int(p) for p in children.read_text().split()]
            except OSError:
                pass
        return pids

    def running(self) -> bool:
        """Up, not already on its way out, and past start-up (a worker still importing torch is not a target)."""
        return (self.proc is not None and self.proc.poll() is None and self.expecting is None
                and time.monotonic() - self.started_at > 15)


# ---------------------------------------------------------------------------------------------
# The run


class Chaos:
    def __init__(self, args, servers, base_env: dict[str, str], machines: list[Machine], workload) -> None:
        self.args, self.servers, self.env, self.machines, self.workload = args, servers, base_env, machines, workload
        self.faults: collections.Counter = collections.Counter()
        self.notice_attempts: list[tuple[str, int]] = []  # (job, attempt) running on a machine told it is preempted
        self.unverified_notices = 0
        self.unverified_kills = 0
        # One slot per machine: the attempt running there when its pool process or the whole worker
        # is SIGKILLed is the one the kill ends (unless the database was down at that moment).
        self.killed_attempts: list[tuple[str, int]] = []
        self.malformed_sent = 0
        self.fault_log = open(machines[0].logfile.parent / "faults.log", "a")
        self.last_target = ""
        self.stop = threading.Event()
        self.submit_stop = threading.Event()
        self.submitted = 0
        self.submit_failures = 0

    # --- the workload ---

    def submitter(self) -> None:
        from core.errors import BackendUnavailable
        from core.money import parse_dollars
        from producer.admission import submit

        store, settings = self.store(), self.settings()
        rng = random.Random(self.args.seed + 1)
        while not self.submit_stop.wait(rng.uniform(*self.args.submit_every)):
            initiative, params, estimate = self.workload(rng)
            try:
                submit(store, settings, budget="chaos", initiative=initiative, estimate_micros=parse_dollars(estimate),
                       params=params, queue=None, key=None, after=(), max_attempts=None)
                self.submitted += 1
            except BackendUnavailable:
                # The database or the broker is down (a fault): a job admitted before the publish
                # failed stays admitted and the upkeep leader sends it when the broker is back.
                self.submit_failures += 1

    # --- the faults ---

    def fault_loop(self, deadline: float) -> None:
        rng = random.Random(self.args.seed)
        kinds, weights = zip(*FAULT_WEIGHTS.items())
        gap = self.args.minutes * 60 / self.args.faults
        while time.monotonic() < deadline or sum(self.faults.values()) < self.args.faults:
            time.sleep(rng.uniform(0.4 * gap, 1.6 * gap))
            kind = rng.choices(kinds, weights)[0]
            try:
                if self.fire(kind, rng):
                    self.faults[kind] += 1
                    self.fault_log.write(f"{time.strftime('%H:%M:%S')} {kind} {self.last_target}\n")
                    self.fault_log.flush()
            except Exception as exc:  # noqa: BLE001 - a fault that could not fire is not counted
                log(f"fault {kind} did not fire: {exc}")

    def fire(self, kind: str, rng: random.Random) -> bool:
        self.last_target = ""
        up = [m for m in self.machines if m.running()]
        if kind == "malformed message":
            return self.malformed(rng)
        if kind == "broker restart":
            self.servers["redis"].stop()
            time.sleep(rng.uniform(1, 8))
            self.servers["redis"].start()
            return True
        if kind == "database restart":
            self.servers["postgres"].stop(immediate=rng.random() < 0.5)
            time.sleep(rng.uniform(1, 6))
            self.servers["postgres"].start()
            return True
        if not up:
            return False
        machine = rng.choice(up)
        self.last_target = machine.name
        if kind == "SIGKILL pool process":
            children = machine.pool_children()
            if not children:
                return False
            self.note_running(machine, killed=True)
            os.kill(rng.choice(children), signal.SIGKILL)
            return True
        if kind == "SIGKILL worker":
            machine.expecting = "killed (SIGKILL)"
            self.note_running(machine, killed=True)
            os.killpg(machine.proc.pid, signal.SIGKILL)
            return True
        self.note_running(machine, killed=False)
        if kind == "SIGTERM worker":
            machine.expecting = "asked: SIGTERM"
            os.kill(machine.proc.pid, signal.SIGTERM)
        else:
            machine.expecting = "asked: spot notice"
            machine.metadata.notice()
        return True

    def running_on(self, machine: Machine) -> Optional[list[tuple[str, int]]]:
        """The attempts the ledger says ``machine`` runs (None while the database is down)."""
        from models.attempts import running_attempts

        try:
            with self.store().session() as s:
                return running_attempts(s, worker=machine.name)
        except Exception:  # noqa: BLE001 - the database is down right now (another fault)
            return None

    def note_running(self, machine: Machine, *, killed: bool) -> None:
        """Before a kill: the attempts it ends (a loss without notice, the reaper's). Before a notice:
        the attempts that must end as preemptions, costing no attempt."""
        running = self.running_on(machine)
        if running is None:
            if killed:
                self.unverified_kills += 1
            else:
                self.unverified_notices += 1
            return
        (self.killed_attempts if killed else self.notice_attempts).extend(running)

    def malformed(self, rng: random.Random) -> bool:
        from tests.test_messages import MALFORMED, publish

        class Target:  # what tests.test_messages.publish needs of an Env
            vars = self.env

        if rng.random() < 0.2:  # not even a message envelope: raw bytes pushed onto the queue's list
            import redis

            redis.Redis.from_url(self.env["BROKER_URL"]).lpush(rng.choice(["calibrate", "baseline"]), rng.randbytes(rng.randrange(1, 300)))
        else:
            publish(Target, MALFORMED[rng.choice(sorted(MALFORMED))])
        self.malformed_sent += 1
        return True

    # --- plumbing ---

    def store(self):
        from models.db import Ledger

        if not hasattr(self, "_store"):
            self._store = Ledger(self.env["DATABASE_URL"])
        return self._store

    def settings(self):
        from core.settings import load_settings

        return load_settings(self.env)

    def supervise(self) -> None:
        while not self.stop.is_set():
            for machine in self.machines:
                machine.check()
            time.sleep(0.3)


def unfinished(store) -> int:
    from models.attempts import count_jobs

    with store.session() as s:
        return count_jobs(s, statuses=("admitted", "requeued", "running"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=6.0, help="how long faults fire")
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--faults", type=int, default=110, help="at least this many faults")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--drain-minutes", type=float, default=10.0)
    parser.add_argument("--no-write", action="store_true", help="print the section instead of writing docs/BENCHMARKS.md")
    args = parser.parse_args()
    args.submit_every = (2.5, 6.0)  # about what 3 one-slot workers on 2 shared cores get through
    random.seed(args.seed)
    started = time.monotonic()

    from tests.servers import MetadataServer, PrivatePostgres, PrivateRedis, S3Server

    work = Path(tempfile.mkdtemp(prefix="budgetq-chaos-"))
    servers = {"postgres": PrivatePostgres().start(), "redis": PrivateRedis(work / "redis").start(), "s3": S3Server().start()}
    metadata = [MetadataServer().start() for _ in range(args.workers)]
    machines: list[Machine] = []
    try:
        database = servers["postgres"].create_database("chaos")
        bucket = servers["s3"].bucket()
        base = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "BROKER_URL", "CI")}
        base.update(servers["s3"].env, DATABASE_URL=database, BROKER_URL=servers["redis"].url, BUDGETQ_HOME=str(work / "cli"),
                    ARTIFACT_DIR=f"s3://{bucket}/artifacts", CHECKPOINT_DIR=f"s3://{bucket}/checkpoints",
                    LEASE_SECONDS="6", HEARTBEAT_SECONDS="1", RESEND_AFTER_SECONDS="15", WORKER_PRICE_PER_HOUR=PRICE,
                    PREEMPTION_POLL_SECONDS="0.5", PREEMPTION_NOTICE_KIND="aws", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
        os.environ.update(base)
        workload = make_workload(work)
        subprocess.run([sys.executable, "-m", "producer", "db", "upgrade"], env=base, cwd=REPO, check=True, capture_output=True)
        subprocess.run([sys.executable, "-m", "producer", "budget", "create", "chaos", "--total", "100.00"], env=base, cwd=REPO,
                       check=True, capture_output=True)
        for n in range(args.workers):
            env = {**base, "BUDGETQ_HOME": str(work / f"machine{n}"), "PREEMPTION_NOTICE_URL": metadata[n].url}
            machines.append(Machine(n, env, work / f"machine{n}", metadata[n], work / f"machine{n}.log"))
            machines[-1].start()
        chaos = Chaos(args, servers, base, machines, workload)
        threads = [threading.Thread(target=chaos.supervise, daemon=True), threading.Thread(target=chaos.submitter, daemon=True)]
        for thread in threads:
            thread.start()
        log(f"fleet of {args.workers} started; faults for {args.minutes} min; logs in {work}")
        fault_start = time.monotonic()
        chaos.fault_loop(deadline=fault_start + args.minutes * 60)
        fault_seconds = time.monotonic() - fault_start
        log(f"{sum(chaos.faults.values())} faults fired: {dict(chaos.faults)}; draining")
        chaos.submit_stop.set()
        drain_start = time.monotonic()
        drained = wait_drained(chaos, args.drain_minutes * 60)
        drain_seconds = time.monotonic() - drain_start
        chaos.stop.set()
        threads[0].join(timeout=5)
        for machine in machines:
            if machine.proc and machine.proc.poll() is None:
                machine.expecting = "asked: end of run"
                os.kill(machine.proc.pid, signal.SIGTERM)
        for machine in machines:
            if machine.proc:
                try:
                    machine.exits.append((machine.expecting or "unexpected", machine.proc.wait(timeout=120)))
                except subprocess.TimeoutExpired:
                    os.killpg(machine.proc.pid, signal.SIGKILL)
                    machine.exits.append(("did not stop in 120 s", -9))
        measured = measure(chaos, started, fault_seconds, drain_seconds, drained)
        print(json.dumps(measured, indent=2))
        section = report(measured, args)
        if args.no_write:
            print(section)
        else:
            from bench.common import write_section

            write_section("Chaos: a spot fleet under faults", section)
            log("wrote docs/BENCHMARKS.md")
    finally:
        for machine in machines:
            if machine.proc and machine.proc.poll() is None:
                os.killpg(machine.proc.pid, signal.SIGKILL)
        for server in metadata:
            server.stop()
        servers["redis"].stop()
        servers["postgres"].destroy()
        servers["s3"].stop()


def wait_drained(chaos: Chaos, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if unfinished(chaos.store()) == 0:
                return True
        except Exception:  # noqa: BLE001
            pass
        time.sleep(3)
    return False


def make_workload(work: Path):
    """Jobs to submit: calibrate runs and tiny-BERT baselines on a 10-intent CLINC150 subset."""
    from tests.ml.conftest import write_subset
    from worker.ml.data import load_folder
    from worker.ml.modeling import build_tiny_bert

    subset = write_subset(work / "clinc_subset")
    tiny = build_tiny_bert(load_folder(subset).train.texts, work / "tiny_bert", hidden=32, layers=1, vocab_size=400)

    def next_job(rng: random.Random):
        if rng.random() < 0.55:
            return "calibrate", {"seconds": round(rng.uniform(2, 6), 1), "matrix_size": rng.choice([64, 128])}, "0.03"
        return "baseline", {"dataset": str(subset), "model": str(tiny), "steps": rng.randrange(60, 160, 10), "lr": 5e-3,
                            "batch_size": 32, "checkpoint_every": 10, "warmup_ratio": 0.0, "latency_samples": 3}, "0.15"

    return next_job


if __name__ == "__main__":
    main()
