"""An in-process ``JobContext`` and small fixtures: a 3-domain, 10-intent CLINC150 subset and a tiny BERT.

The context keeps metrics and failures in lists, copies artifacts under the test's folder, answers
``should_stop`` from a step budget and ``prior``/``dependencies`` from the jobs settled before it, which is
what the worker's runtime does against the ledger, minus the broker and the database.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
from pathlib import Path
from typing import Any, Optional

import pytest

import specs
from core.errors import PermanentError
from core.settings import current_settings
from worker.initiatives import load_payload
from worker.context import FailureRow, MetricRow, PriorResult
from worker.storage import digest, fetch_artifact

CLINC150_DIR = Path(os.environ.get("CLINC150_DIR") or Path(__file__).resolve().parents[3] / "shared" / "data" / "clinc150")
# Three domains, ten intents: enough slices to rank, small enough to train in seconds.
SUBSET = {
    "banking": ("balance", "transfer", "pay_bill", "freeze_account"),
    "travel": ("book_flight", "lost_luggage", "exchange_rate"),
    "kitchen_and_dining": ("recipe", "calories", "restaurant_reservation"),
}
PER_INTENT = {"train": 40, "val": 10, "test": 20}
OOS_ROWS = {"oos_val": 30, "oos_test": 60}
_ids = itertools.count(1)


class InProcessContext:
    """``JobContext`` for tests: everything in memory or under ``root``."""

    def __init__(self, root: Path, initiative: str, *, history: list[PriorResult], params: dict[str, Any],
                 stop_after_steps: Optional[int] = None, job_id: Optional[str] = None, attempt: int = 1) -> None:
        self.job_id = job_id or f"{initiative}-{next(_ids)}"
        self.attempt, self.initiative, self.params = attempt, initiative, params
        self.checkpoint_dir = root / "checkpoints" / self.job_id
        self.work_dir = root / "work" / f"{self.job_id}-{attempt}"
        self.artifact_dir = root / "artifacts" / self.job_id
        for folder in (self.checkpoint_dir, self.work_dir):
            folder.mkdir(parents=True, exist_ok=True)
        self.metrics: list[MetricRow] = []
        self.failures: list[FailureRow] = []
        self.warnings: list[str] = []
        self.artifacts: dict[str, str] = {}
        self.sha256: dict[str, str] = {}
        self.history = history
        self.stop_after_steps, self.stop_checks = stop_after_steps, 0
        self.reports: list[dict[str, Any]] = []

    def log_metric(self, name: str, value: float, *, slice: Optional[str] = None, step: Optional[int] = None) -> None:
        self.metrics.append(MetricRow(name, float(value), slice, step))

    def log_failures(self, rows) -> None:
        self.failures.extend(rows)

    def warn(self, message: str) -> None:
        self.warnings.append(message)

    def save_artifact(self, name: str, path: Path) -> str:
        target = self.artifact_dir / name
        if Path(path).is_dir():
            shutil.copytree(path, target, dirs_exist_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
        self.artifacts[name] = str(target)
        self.sha256[name] = digest(target)[0]
        return str(target)

    def progress(self, *, step: int, total: int, loss: Optional[float] = None, stage: str = "") -> None:
        self.reports.append({"step": step, "total": total, "loss": loss, "stage": stage})
    def fetch_artifact(self, prior: PriorResult, name: str) -> Path:
        # The worker's own check: the artifact's sha256 against the one recorded when it was saved.
        return fetch_artifact(prior.artifacts[name], prior.sha256.get(name), cache=self.work_dir / "cache")

    def should_stop(self) -> bool:
        # The training loop asks once per step: the budget is a number of steps.
        self.stop_checks += 1
        return self.stop_after_steps is not None and self.stop_checks > self.stop_after_steps

    def cost_micros(self) -> int:
        return 0

    def reserved_micros(self) -> int:
        return 10**9

    def prior(self, job_id: str) -> PriorResult:
        found = [result for result in self.history if result.job_id == job_id]
        if not found:
            raise PermanentError(f"no settled job {job_id!r} in this test's history")
        return found[-1]

    def dependencies(self) -> list[PriorResult]:
        return list(self.history)

    def settle(self) -> PriorResult:
        """Record this job as succeeded, as the ledger would, and return what later jobs will read."""
        result = PriorResult(self.job_id, self.initiative, "succeeded", self.params, tuple(self.metrics), dict(self.artifacts),
                             dict(self.sha256))
        self.history.append(result)
        return result

    def values(self, name: str) -> list[MetricRow]:
        return [m for m in self.metrics if m.name == name]


def run_job(root: Path, name: str, params: dict[str, Any], history: list[PriorResult], **context: Any) -> InProcessContext:
    """Validate ``params`` as the producer does, run the initiative in process, settle it."""
    if specs.get(name).uses_model and not params.get("model_job"):
        # As admission resolves a plan's `after: [previous]`: the latest settled job that stores a model.
        sources = [r.job_id for r in history if specs.get(r.initiative).makes_model]
        params = {**params, "model_job": sources[-1]} if sources else params
    ctx = InProcessContext(root, name, history=history, params=params, **context)
    parsed = specs.parse_params(name, params)
    load_payload(specs.get(name)).run(parsed, ctx)
    ctx.settle()
    return ctx


def write_subset(target: Path) -> Path:
    """Copy a 3-domain, 10-intent slice of CLINC150 (small variant) into ``target`` as JSONL."""
    source = CLINC150_DIR / "small"
    intents = {intent for group in SUBSET.values() for intent in group}
    target.mkdir(parents=True, exist_ok=True)
    for split, per_intent in PER_INTENT.items():
        rows, seen = [], {}
        for row in map(json.loads, (source / f"{split}.jsonl").read_text().splitlines()):
            if row["label"] in intents and seen.get(row["label"], 0) < per_intent:
                seen[row["label"]] = seen.get(row["label"], 0) + 1
                rows.append(row)
        (target / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    for split, count in OOS_ROWS.items():
        lines = (source / f"{split}.jsonl").read_text().splitlines()[:count]
        (target / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
    return target


@pytest.fixture(scope="session")
def clinc150_dir() -> Path:
    if not (CLINC150_DIR / "small" / "train.jsonl").is_file():
        pytest.skip(f"CLINC150 not found at {CLINC150_DIR}; set CLINC150_DIR")
    return CLINC150_DIR


@pytest.fixture(scope="session")
def clinc_subset(tmp_path_factory, clinc150_dir) -> Path:
    return write_subset(tmp_path_factory.mktemp("clinc_subset"))


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory, clinc_subset) -> Path:
    from worker.ml.data import load_folder
    from worker.ml.modeling import build_tiny_bert

    texts = load_folder(clinc_subset).train.texts
    return build_tiny_bert(texts, tmp_path_factory.mktemp("tiny_bert"), hidden=32, layers=1, vocab_size=400)


@pytest.fixture
def make_context(tmp_path):
    """A factory of in-process contexts sharing one folder (so attempts share checkpoints)."""
    return lambda initiative, **kw: InProcessContext(tmp_path, initiative, history=kw.pop("history", []), params={}, **kw)


@pytest.fixture(name="run_job", scope="session")
def run_job_fixture():
    """``run_job`` as a fixture, so test modules need not import this conftest."""
    return run_job


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    # The test models are tiny: a second intra-op thread buys nothing, and when the cores are shared
    # (CI, a benchmark beside the tests) OpenMP's spinning threads made the suite 7x slower.
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True, scope="session")
def _budgetq_home(tmp_path_factory):
    # WordNet gets copied into $BUDGETQ_HOME/cache/nltk_data once per test session, not into the user's home.
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("BUDGETQ_HOME", str(tmp_path_factory.getbasetemp() / "budgetq_home"))
        current_settings.cache_clear()  # the settings are read once per process: read them again
        yield
    current_settings.cache_clear()
