"""Admission-time checks of a job's dataset: the folder exists and has the columns the job needs.

The worker checks the data again, row by row, when it loads it; these checks catch the common
mistakes (a mistyped path, a slice column the data does not have) before any money is reserved,
in a dry run too. ``clinc150`` has known columns; ``hf:`` datasets are checked by the worker only
(looking would mean downloading them).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, Optional

from core.errors import InvalidInput

SUFFIXES = (".jsonl", ".csv", ".parquet")
REQUIRED = ("text", "label")
CLINC150_COLUMNS = ("text", "label", "domain")


def check_dataset(params: dict[str, Any]) -> None:
    """Refuse a job whose ``dataset`` cannot be what it asks for; a no-op for jobs without one."""
    source = params.get("dataset")
    if not isinstance(source, str) or not source or source.startswith("hf:"):
        return
    slice_column = params.get("slice_column") or "domain"
    if source == "clinc150":
        columns: tuple[str, ...] = CLINC150_COLUMNS
        where = "clinc150"
    else:
        train = _train_file(Path(source), source)
        found, where = _columns(train), str(train)
        if found is None:
            return  # Parquet without pyarrow here: the worker checks it
        columns = found
    missing = [c for c in REQUIRED if c not in columns]
    if missing:
        raise InvalidInput(f"dataset {where} has no {missing[0]!r} column (columns: {', '.join(columns) or 'none'}); rename it")
    if slice_column not in columns:
        raise InvalidInput(
            f"dataset {where} has no slice column {slice_column!r} (columns: {', '.join(columns)});"
            f" set slice_column: label (each label its own slice), or a column that exists"
        )


def _train_file(folder: Path, source: str) -> Path:
    if not folder.exists():
        raise InvalidInput(f"dataset {source!r}: no such folder; give a folder of train/val/test files, clinc150, or hf:NAME")
    if not folder.is_dir():
        raise InvalidInput(f"dataset {source!r} is a file; give the folder that holds train.jsonl (or .csv, .parquet)")
    for suffix in SUFFIXES:
        if (folder / f"train{suffix}").is_file():
            return folder / f"train{suffix}"
    raise InvalidInput(f"dataset {source!r} has no train file ({', '.join('train' + s for s in SUFFIXES)})")


def _columns(path: Path) -> Optional[tuple[str, ...]]:
    """The columns of the first record of a JSONL, CSV or Parquet file (None: cannot tell here)."""
    try:
        if path.suffix == ".jsonl":
            with path.open("rb") as handle:
                for raw in handle:
                    if raw.strip():
                        record = json.loads(raw)
                        return tuple(record) if isinstance(record, dict) else ()
            return ()
        if path.suffix == ".csv":
            with path.open(newline="", encoding="utf-8") as handle:
                return tuple(next(csv.reader(handle), ()))
        try:
            import pyarrow.parquet as pq
        except ImportError:
            return None
        return tuple(pq.read_schema(path).names)
    except (ValueError, UnicodeDecodeError, OSError) as exc:
        raise InvalidInput(f"{path}: cannot read its first record ({type(exc).__name__}); check the file's format") from None
