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
    code = (
        "import sys, producer.cli, producer.admission, producer.plan, specs\n"
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
        for package in SOURCE_PACKAGES if package != "models"
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
