"""The package boundaries hold by construction, not by habit."""

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SOURCE_PACKAGES = ("core", "specs", "models", "producer", "worker")


def imported_modules(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def test_the_producer_validates_every_initiative_without_importing_torch():
    # Every producer module, so a command module split off the CLI is covered the day it is added.
    code = (
        "import importlib, pkgutil, sys, producer, specs\n"
        "for found in pkgutil.iter_modules(producer.__path__):\n"
        "    if found.name != '__main__':\n"
        "        importlib.import_module(f'producer.{found.name}')\n"
        "for name in specs.names():\n"
        "    specs.params_to_json(specs.parse_params(name, {}))\n"
        "heavy = sorted(m for m in ('torch', 'transformers', 'nlpaug', 'worker') if m in sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_nothing_outside_models_imports_sqlalchemy():
    offenders = [
        str(path.relative_to(REPO))
        for package in (*SOURCE_PACKAGES, "bench") if package != "models"
        for path in (REPO / package).rglob("*.py")
        if any(m == "sqlalchemy" or m.startswith("sqlalchemy.") for m in imported_modules(path))
    ]
    assert offenders == []


def test_specs_import_neither_torch_nor_celery():
    offenders = [
        str(path.relative_to(REPO))
        for path in (REPO / "specs").rglob("*.py")
        if any(m.split(".")[0] in {"torch", "transformers", "celery", "kombu", "worker"} for m in imported_modules(path))
    ]
    assert offenders == []


def test_no_module_imports_another_modules_private_names():
    ours = set(SOURCE_PACKAGES)
    offenders = []
    for package in SOURCE_PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in ours:
                    offenders += [f"{path.relative_to(REPO)}: {node.module}.{a.name}" for a in node.names if a.name.startswith("_")]
    assert offenders == []


def test_only_core_queue_sends_job_messages():
    # One way onto the broker: ``core.queue.publish_after_commit``, called once the ledger has committed.
    senders = {"send_task", "apply_async", "delay", "publish"}
    offenders = [
        f"{path.relative_to(REPO)}:{node.lineno}"
        for package in SOURCE_PACKAGES
        for path in (REPO / package).rglob("*.py")
        if path != REPO / "core" / "queue.py"
        for node in ast.walk(ast.parse(path.read_text(), str(path)))
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in senders
    ]
    assert offenders == []
