"""Datasets for the initiatives: local JSONL/CSV/Parquet folders, ``hf:NAME[:CONFIG]`` and ``clinc150``.

A dataset is a folder holding ``train``, optional ``val`` and ``test`` files (``.jsonl``, ``.csv`` or
``.parquet``) with ``text`` and ``label`` columns and a slice column (default ``domain``; ``label``
makes each class its own slice), plus optional ``oos_<split>`` files. Out-of-scope rows (slice or
label ``oos``) are kept apart for out-of-distribution evaluation. Without a ``val`` file, 10% of each
label's training rows (seeded) become the validation split, and the dataset says so
(``val_carved``; payloads pass it on with ``note_val_carved``). Bad data raises ``PermanentError``
with one line naming the file, the line and the field: another attempt would read the same bytes.

``clinc150`` comes in the published variants ``full``, ``small`` and ``imbalanced``, and in
``10shot``: 10 training rows per intent taken from ``full``'s training split, the same 10 for every
job (each intent's rows ordered by the sha256 of their text, the first 10 kept: independent of the
job's seed and of file order), with ``full``'s validation, test and out-of-scope splits.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from core.errors import PermanentError
from worker.ml.clinc150 import VARIANTS, clinc150_folder

OOS = "oos"
SHOTS = {"10shot": 10}  # derived clinc150 variants: training rows per intent, taken from ``full``
CARVED_WARNING = "validation split carved from train: 10% per label, stratified"
SPLITS = ("train", "val", "test")
SUFFIXES = (".jsonl", ".csv", ".parquet")


@dataclass(frozen=True)
class Row:
    text: str
    label: str
    slice: Optional[str]
    where: str  # "file, line N": where a later check (unknown label, duplicate id) points


@dataclass(frozen=True)
class Examples:
    texts: tuple[str, ...]
    labels: tuple[str, ...]
    slices: tuple[Optional[str], ...]

    def __len__(self) -> int:
        return len(self.texts)

    @classmethod
    def of(cls, rows: list[Row]) -> "Examples":
        return cls(tuple(r.text for r in rows), tuple(r.label for r in rows), tuple(r.slice for r in rows))

    def where_slice(self, wanted: set[Optional[str]]) -> "Examples":
        """The rows whose slice is in ``wanted``."""
        keep = [i for i, s in enumerate(self.slices) if s in wanted]
        return self.pick(keep)

    def pick(self, indices: list[int]) -> "Examples":
        return Examples(*(tuple(col[i] for i in indices) for col in (self.texts, self.labels, self.slices)))

    def per_label(self, limit: int) -> "Examples":
        """The first ``limit`` rows of each label, in order."""
        counts: dict[str, int] = {}
        keep = []
        for i, label in enumerate(self.labels):
            counts[label] = counts.get(label, 0) + 1
            if counts[label] <= limit:
                keep.append(i)
        return self.pick(keep)

    def plus(self, other: "Examples") -> "Examples":
        return Examples(self.texts + other.texts, self.labels + other.labels, self.slices + other.slices)


@dataclass(frozen=True)
class Dataset:
    name: str
    labels: tuple[str, ...]  # in-scope labels of the training split, sorted: index = class id
    train: Examples
    val: Examples
    test: Examples
    oos_val: Examples
    oos_test: Examples
    val_carved: bool = False  # no validation file: ``val`` was held out of train

    def label_ids(self, examples: Examples) -> list[int]:
        index = {label: i for i, label in enumerate(self.labels)}
        return [index[label] for label in examples.labels]


def load_dataset(source: str, *, variant: str = "full", slice_column: str = "domain", seed: int = 0) -> Dataset:
    """Load ``clinc150``, ``hf:NAME[:CONFIG]`` or a local folder into a validated ``Dataset``."""
    if source == "clinc150":
        if variant not in (*VARIANTS, *SHOTS):
            raise PermanentError(f"clinc150: unknown variant {variant!r}; known: {', '.join((*VARIANTS, *SHOTS))}")
        base = "full" if variant in SHOTS else variant
        dataset = load_folder(clinc150_folder(base), slice_column=slice_column, seed=seed, name=f"clinc150/{variant}")
        return few_shot(dataset, SHOTS[variant]) if variant in SHOTS else dataset
    if source.startswith("hf:"):
        return build_dataset(source, _hf_rows(source, slice_column), seed=seed)
    return load_folder(Path(source), slice_column=slice_column, seed=seed)


def few_shot(dataset: Dataset, per_label: int) -> Dataset:
    """``dataset`` with ``per_label`` training rows per label: those whose text has the lowest sha256.

    A hash, not a seeded shuffle: the subset is the same for every job and seed, so runs with
    different seeds differ in training randomness only, never in their data.
    """
    by_label: dict[str, list[int]] = {}
    for i, label in enumerate(dataset.train.labels):
        by_label.setdefault(label, []).append(i)

    def digest(i: int) -> str:
        return hashlib.sha256(dataset.train.texts[i].encode()).hexdigest()

    keep = [i for rows in by_label.values() for i in sorted(rows, key=digest)[:per_label]]
    return dataclasses.replace(dataset, train=dataset.train.pick(sorted(keep)))


def note_val_carved(ctx: Any, dataset: Dataset) -> None:
    """Log ``data.val_carved`` (1 or 0) and, when carved, warn the job: its validation rows came out of train."""
    ctx.log_metric("data.val_carved", float(dataset.val_carved))
    if dataset.val_carved:
        ctx.warn(CARVED_WARNING)


def load_folder(folder: Path, *, slice_column: str = "domain", seed: int = 0, name: str = "") -> Dataset:
    """Read ``<split>.*`` and ``oos_<split>.*`` files from ``folder``."""
    if not folder.is_dir():
        raise PermanentError(f"{folder}: no such dataset folder")
    rows: dict[str, list[Row]] = {}
    for split in SPLITS:
        found = [_split_file(folder, prefix + split) for prefix in ("", "oos_")]
        if found[0] is None and split == "val":
            continue  # build_dataset carves one from train
        if found[0] is None:
            raise PermanentError(f"{folder}: no {split} file ({' or '.join(split + s for s in SUFFIXES)})")
        rows[split] = [row for path in found if path for row in read_rows(path, slice_column, require_slice=path == found[0])]
    return build_dataset(name or str(folder), rows, seed=seed)


def _split_file(folder: Path, stem: str) -> Optional[Path]:
    for suffix in SUFFIXES:
        if (folder / (stem + suffix)).is_file():
            return folder / (stem + suffix)
    return None


def build_dataset(name: str, rows: dict[str, list[Row]], *, seed: int = 0) -> Dataset:
    """Split off out-of-scope rows, check eval labels, and carve a validation split if none was given."""
    parts = {split: _partition(split_rows) for split, split_rows in rows.items()}
    train, _ = parts["train"]  # out-of-scope training rows are dropped: OOD scores are fitted on in-scope only
    if not train:
        raise PermanentError(f"{name}: empty split 'train' (no in-scope rows)")
    carved = "val" not in parts
    if carved:
        train, val, oos_val = *_carve_val(name, train, seed), []
    else:
        val, oos_val = parts["val"]
    test, oos_test = parts["test"]
    labels = sorted({r.label for r in train})
    for split_rows in (val, test):
        _check_known_labels(split_rows, set(labels))
    if not test:
        raise PermanentError(f"{name}: empty split 'test' (no in-scope rows)")
    examples = [Examples.of(r) for r in (train, val, test, oos_val, oos_test)]
    return Dataset(name, tuple(labels), *examples, val_carved=carved)


def _partition(rows: list[Row]) -> tuple[list[Row], list[Row]]:
    in_scope = [r for r in rows if r.slice != OOS and r.label != OOS]
    return in_scope, [r for r in rows if r.slice == OOS or r.label == OOS]


def _carve_val(name: str, train: list[Row], seed: int) -> tuple[list[Row], list[Row]]:
    """(train, val): no validation file, so hold out 10% of each label's rows (seeded; at least one of
    a label with two or more), so every class is validated and thresholds and early stopping never see test."""
    by_label: dict[str, list[int]] = {}
    for i, row in enumerate(train):
        by_label.setdefault(row.label, []).append(i)
    rng = random.Random(seed)
    held = set()
    for label in sorted(by_label):
        rows = by_label[label]
        if len(rows) >= 2:
            held.update(rng.sample(rows, max(1, round(len(rows) / 10))))
    if not held:
        raise PermanentError(f"{name}: no val split, and no label has the 2 training rows needed to carve one; add a val file")
    return [r for i, r in enumerate(train) if i not in held], [train[i] for i in sorted(held)]


def _check_known_labels(rows: list[Row], labels: set[str]) -> None:
    for row in rows:
        if row.label not in labels:
            raise PermanentError(f"{row.where}, field 'label': unknown label {row.label!r} (not in the train split)")


def read_rows(path: Path, slice_column: str = "domain", *, require_slice: bool = False) -> list[Row]:
    """Read one JSONL, CSV or Parquet file into rows, checking fields, encoding and duplicate ids.

    ``require_slice``: refuse a file in which no row has the slice column (an in-scope split: every
    per-slice metric, and augment's targeting, would silently have nothing to work with).
    """
    readers = {".jsonl": _jsonl_records, ".csv": _csv_records, ".parquet": _parquet_records}
    if path.suffix not in readers:
        raise PermanentError(f"{path}: unsupported file type {path.suffix!r} (use {', '.join(SUFFIXES)})")
    rows, seen_ids, columns = [], {}, {}
    for where, record in readers[path.suffix](path):
        rows.append(_to_row(record, where, slice_column))
        _check_unique_id(record, where, seen_ids)
        columns.update(dict.fromkeys(record))
    if not rows:
        raise PermanentError(f"{path}: empty split '{path.stem}' (no rows)")
    if require_slice:
        check_slice_column(str(path), rows, slice_column, columns)
    return rows


def check_slice_column(where: str, rows: list[Row], slice_column: str, columns) -> None:
    """Raise when no row of a split has the slice column, naming the columns it does have."""
    if all(row.slice is None for row in rows):
        raise PermanentError(f"{where}: no row has the slice column {slice_column!r} (columns: {', '.join(columns)}); "
                             "set slice_column: label, or a column that exists")


def _to_row(record: dict[str, Any], where: str, slice_column: str) -> Row:
    values = {}
    for field in ("text", "label"):
        value = record.get(field)
        if value is None or str(value).strip() == "":
            problem = "missing field" if field not in record else "empty field"
            raise PermanentError(f"{where}, field '{field}': {problem} (fields: {', '.join(record) or 'none'})")
        values[field] = str(value)
    # ``label`` as the slice column makes each class its own slice (per-class reports and targeting).
    group = values["label"] if slice_column == "label" else record.get(slice_column)
    return Row(values["text"], values["label"], None if group is None or str(group).strip() == "" else str(group), where)


def _check_unique_id(record: dict[str, Any], where: str, seen: dict[str, str]) -> None:
    if record.get("id") is None:
        return
    key = str(record["id"])
    if key in seen:
        raise PermanentError(f"{where}, field 'id': duplicate id {key!r} (first at {seen[key]})")
    seen[key] = where


def _decode(path: Path, data: bytes, line_offset: int = 0) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = line_offset + data[: exc.start].count(b"\n") + 1
        raise PermanentError(f"{path}, line {line}: bad encoding, not UTF-8 (byte 0x{data[exc.start]:02x})") from None


def _jsonl_records(path: Path):
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            try:
                record = json.loads(_decode(path, raw, number - 1))
            except json.JSONDecodeError as exc:
                raise PermanentError(f"{path}, line {number}: not JSON ({exc.msg})") from None
            if not isinstance(record, dict):
                raise PermanentError(f"{path}, line {number}: not a JSON object")
            yield f"{path}, line {number}", record


def _csv_records(path: Path):
    reader = csv.DictReader(io.StringIO(_decode(path, path.read_bytes()), newline=""))
    for column in ("text", "label"):
        if column not in (reader.fieldnames or []):
            columns = ", ".join(reader.fieldnames or []) or "none"
            raise PermanentError(f"{path}, line 1, field '{column}': missing column (columns: {columns})")
    for record in reader:
        yield f"{path}, line {reader.line_num}", record


def _parquet_records(path: Path):
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    for column in ("text", "label"):
        if column not in table.column_names:
            columns = ", ".join(table.column_names) or "none"
            raise PermanentError(f"{path}, field '{column}': missing column (columns: {columns})")
    for number, record in enumerate(table.to_pylist(), start=1):
        yield f"{path}, row {number}", record


def _hf_rows(source: str, slice_column: str) -> dict[str, list[Row]]:
    name, _, config = source[3:].partition(":")
    try:
        import datasets
    except ImportError:
        raise PermanentError(f"{source}: the `datasets` package is not installed (pip install datasets)") from None
    loaded = datasets.load_dataset(name, config or None)
    aliases = {"train": ("train",), "val": ("validation", "val"), "test": ("test",)}
    rows = {}
    for split, names in aliases.items():
        found = next((n for n in names if n in loaded), None)
        if found is not None:
            rows[split] = _hf_split_rows(source, found, loaded[found], slice_column)
        elif split != "val":
            raise PermanentError(f"{source}: no {split} split (has {', '.join(loaded)})")
    return rows


def _hf_split_rows(source: str, split: str, table, slice_column: str) -> list[Row]:
    label_names = getattr(table.features.get("label"), "names", None)
    rows = []
    for number, record in enumerate(table, start=1):
        if label_names is not None and record.get("label") is not None:
            record = {**record, "label": label_names[record["label"]]}
        rows.append(_to_row(record, f"{source} {split}, row {number}", slice_column))
    if not rows:
        raise PermanentError(f"{source}: empty split '{split}' (no rows)")
    check_slice_column(f"{source} {split}", rows, slice_column, table.column_names)
    return rows
