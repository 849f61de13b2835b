"""An installed budgetq (not only a checkout) finds its migrations and example plans: the top-level
alembic/ and examples/ folders ship inside the packages as models.migrations and producer.examples."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib

from tests.conftest import REPO

SHIPPED = ("pyproject.toml", "README.md", "core", "specs", "models", "producer", "worker", "alembic", "examples")


def test_every_package_in_the_source_tree_is_in_pyprojects_package_list():
    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    on_disk = {
        ".".join(folder.relative_to(REPO).parts)
        for top in ("core", "specs", "models", "producer", "worker")
        for folder in [REPO / top, *(REPO / top).rglob("*")]
        if folder.is_dir() and any(folder.glob("*.py")) and "__pycache__" not in folder.parts
    }
    assert on_disk <= listed, f"add {sorted(on_disk - listed)} to [tool.setuptools] packages"


def test_a_non_editable_install_migrates_a_ledger_from_outside_the_source_tree(tmp_path):
    # Given a copy of the source (pip builds in the tree it installs from) installed into a folder
    source = tmp_path / "source"
    source.mkdir()
    for name in SHIPPED:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(REPO / name, source / name)
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--target", str(site),
                    str(source)], check=True, capture_output=True, timeout=300)
    shutil.rmtree(source)  # nothing may be read from the source tree any more
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(site), "BUDGETQ_HOME": str(tmp_path / "home"), "HOME": str(tmp_path)}

    # When its own `budgetq` command migrates a fresh ledger from a folder outside any checkout
    done = subprocess.run([str(site / "bin" / "budgetq"), "db", "upgrade"], cwd=elsewhere, env=env, capture_output=True,
                          text=True, timeout=120)

    # Then the ledger is at the newest revision, read from the installed package
    assert done.returncode == 0, done.stderr
    heads = sorted(p.name.split("_", 1)[0] for p in (REPO / "alembic" / "versions").glob("0*.py"))
    assert done.stdout.strip().endswith(f"is at revision {heads[-1]}"), done.stdout
    where = subprocess.run(
        [sys.executable, "-c", "from models.db import migrations_dir; from producer.demo import examples_dir;"
                               "print(migrations_dir()); print(examples_dir())"],
        cwd=elsewhere, env=env, capture_output=True, text=True, timeout=120, check=True,
    ).stdout.split()
    assert where == [str(site / "models" / "migrations"), str(site / "producer" / "examples")]
    assert (site / "producer" / "examples" / "demo.yaml").is_file()
