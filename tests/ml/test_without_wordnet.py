"""A worker without WordNet (no wordnet-base, no internet) runs the improvement loop to the end: the
synonym steps are skipped with a note and a ``skipped.synonym`` metric, every other perturbation
and augmenter still runs, and the perturbations that do not need WordNet never load it."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
import yaml
from sqlalchemy import select

from models.db import Ledger
from models.schema import JobNote
from tests.conftest import REPO

BASELINE = {"steps": 60, "lr": 5e-3, "batch_size": 32, "checkpoint_every": 30, "latency_samples": 3}


@pytest.fixture
def no_wordnet(tmp_path):
    """An empty WORDNET_DIR; NLTK's own data path must hold no WordNet either, or nothing is missing."""
    # A fresh interpreter: this one may have put a copy on NLTK's path for earlier tests.
    check = "import nltk\ntry:\n    print(nltk.data.find('corpora/wordnet'))\nexcept LookupError:\n    pass"
    found = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=120).stdout.strip()
    if found:
        pytest.skip(f"NLTK's own data path holds WordNet ({found}); this machine cannot be without it")
    empty = tmp_path / "no_wordnet"
    empty.mkdir()
    return empty


def metrics(env, job_id: str) -> dict:
    result = json.loads(env.ok("results", "--job", job_id, "--json").stdout)
    return {(m["name"], m["slice"]): m["value"] for m in result["metrics"]}


def test_without_wordnet_robustness_and_augment_succeed_and_note_the_skipped_synonym_step(
        embedded, tmp_path, clinc_subset, tiny_bert, no_wordnet):
    plan = {
        "budget": "nowordnet", "total": "1.00",
        "initiatives": [
            {"name": "baseline", "initiative": "baseline", "rank": 1, "estimate": "0.20",
             "params": {**BASELINE, "dataset": str(clinc_subset), "model": str(tiny_bert)}},
            {"name": "robustness", "initiative": "robustness", "rank": 2, "estimate": "0.20", "after": ["baseline"],
             "params": {"max_rows": 60, "failures_per_perturbation": 3, "perturbations": ["keyboard", "synonym", "casing"]}},
            {"name": "augment", "initiative": "augment", "rank": 3, "estimate": "0.20", "after": ["robustness"],
             "params": {"k": 1, "variants": 1, "steps": 6, "lr": 1e-3, "augmenters": ["synonym", "style"]}},
        ],
    }
    (tmp_path / "plan.yaml").write_text(yaml.safe_dump(plan))
    embedded.vars.update(OMP_NUM_THREADS="1", HEARTBEAT_SECONDS="0.2", WORDNET_DIR=str(no_wordnet), PROGRESS_LOG_SECONDS="0")
    ids = {d["name"]: d["job_id"] for d in json.loads(embedded.ok("plan", "run", str(tmp_path / "plan.yaml"), "--json").stdout)}

    log = embedded.burst("--loglevel", "warning", timeout=600)

    jobs = {name: json.loads(embedded.ok("jobs", "show", job_id, "--json").stdout) for name, job_id in ids.items()}
    assert {name: job["status"] for name, job in jobs.items()} == dict.fromkeys(ids, "succeeded"), log[-3000:]
    robustness, augment = metrics(embedded, ids["robustness"]), metrics(embedded, ids["augment"])
    assert robustness[("skipped.synonym", None)] == 1 and ("synonym.accuracy_drop", None) not in robustness
    assert ("keyboard.accuracy_drop", None) in robustness and ("casing.invariance", None) in robustness
    assert augment[("skipped.synonym", None)] == 1 and ("improvement", None) in augment
    assert any(name == "aug.style.generated" for name, _ in augment)
    with Ledger(embedded.vars["DATABASE_URL"]).session() as s:
        notes = dict(s.execute(select(JobNote.job_id, JobNote.text)).all())
    for name, what in (("robustness", "perturbation"), ("augment", "augmenter")):
        assert notes[ids[name]].startswith(f"{what} synonym skipped: WordNet is not available") and "WORDNET_DIR" in notes[ids[name]]

    # Off a terminal: the baseline's steps and losses every 10% (PROGRESS_LOG_SECONDS=0), each job's
    # real outcome, and none of Celery's or transformers' noise.
    steps = [int(n) for n in re.findall(rf"job {ids['baseline']} \(baseline\) train step (\d+)/60, loss [0-9.]+; spent \$", log)]
    assert steps == list(range(6, 61, 6)), log[-3000:]
    assert all(f"job {ids[name]} ({name}) attempt 1/3 ended succeeded" in log for name in ids)
    for noise in ("LOAD REPORT", "superuser privileges", "succeeded in", "it/s]"):
        assert noise not in log, noise
    # ...and a heartbeat (every 0.2 s over a few seconds of training) carried the loop's report to the
    # job row, where the live display reads it.
    progress = jobs["baseline"]["progress"]
    assert progress["stage"] == "train" and 1 <= progress["step"] <= 60 and progress["total"] == 60 and progress["loss"] > 0


def test_perturbations_without_wordnet_never_load_it_and_synonym_fails_fast_with_the_fix(tmp_path, no_wordnet):
    # A fresh interpreter: this test process may have loaded WordNet already.
    script = """
import sys
from nltk.corpus import wordnet
from worker.ml import textops
texts = ["i want to transfer money to my savings account"]
assert textops.perturb("keyboard", texts, seed=1) and textops.perturb("spelling", texts, seed=1)
assert type(wordnet).__name__ == "LazyCorpusLoader", "WordNet was loaded for a perturbation that does not need it"
try:
    textops.perturb("synonym", texts, seed=1)
except textops.WordNetUnavailable as missing:
    print(missing)
else:
    sys.exit("synonym ran without WordNet")
"""
    env = {"PATH": "/usr/bin:/bin", "BUDGETQ_HOME": str(tmp_path / "home"), "WORDNET_DIR": str(no_wordnet), "HOME": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"WORDNET_DIR={no_wordnet}" in done.stdout and "wordnet-base" in done.stdout
