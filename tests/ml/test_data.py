"""Datasets load from JSONL, CSV and Parquet; bad data fails with one line naming file, line and field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.errors import PermanentError
from core.settings import current_settings
from worker.ml import clinc150
from worker.ml.data import load_dataset, load_folder

TRAIN = [
    {"id": 1, "text": "what is my balance", "label": "balance", "domain": "banking"},
    {"id": 2, "text": "book me a flight", "label": "book_flight", "domain": "travel"},
    {"id": 3, "text": "how much money do i have", "label": "balance", "domain": "banking"},
]
TEST = [{"text": "flights to paris", "label": "book_flight", "domain": "travel"}]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def folder_with(tmp_path: Path, train=TRAIN, test=TEST) -> Path:
    write_jsonl(tmp_path / "train.jsonl", train)
    write_jsonl(tmp_path / "test.jsonl", test)
    return tmp_path


def error_of(folder: Path) -> str:
    with pytest.raises(PermanentError) as caught:
        load_folder(folder)
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_a_folder_without_val_gets_a_seeded_validation_split_carved_from_train(tmp_path):
    dataset = load_folder(folder_with(tmp_path))
    assert dataset.labels == ("balance", "book_flight")
    assert len(dataset.train) + len(dataset.val) == 3 and len(dataset.val) == 1
    assert dataset.test.slices == ("travel",) and dataset.val_carved
    # book_flight has a single training row: it stays in train rather than leave the class untrained.
    assert dataset.val.labels == ("balance",) and "book_flight" in dataset.train.labels


def test_a_carved_validation_split_holds_ten_percent_of_every_label(tmp_path):
    rows = [{"text": f"{label} query {i}", "label": label, "domain": "d"} for label, n in (("a", 50), ("b", 20), ("c", 10))
            for i in range(n)]
    dataset = load_folder(folder_with(tmp_path, train=rows, test=[{"text": "x", "label": "a", "domain": "d"}]), seed=4)
    assert {label: dataset.val.labels.count(label) for label in "abc"} == {"a": 5, "b": 2, "c": 1}
    assert load_folder(tmp_path, seed=4).val == dataset.val and load_folder(tmp_path, seed=5).val != dataset.val
    assert not set(dataset.val.texts) & set(dataset.train.texts)


def test_a_job_on_a_carved_validation_split_logs_it_and_warns(tmp_path, clinc_subset, tiny_bert, run_job):
    import shutil

    folder = tmp_path / "no_val"
    shutil.copytree(clinc_subset, folder)
    (folder / "val.jsonl").unlink()
    params = {"dataset": str(folder), "model": str(tiny_bert), "steps": 2, "latency_samples": 2}
    ctx = run_job(tmp_path / "jobs", "baseline", params, [])
    assert ctx.values("data.val_carved")[0].value == 1.0
    assert ctx.warnings == ["validation split carved from train: 10% per label, stratified"]
    # A job on that model (loaded with its dataset) says so too
    report = run_job(tmp_path / "jobs", "robustness", {"model_job": ctx.job_id, "perturbations": "casing", "max_rows": 10}, [ctx.settle()])
    assert report.values("data.val_carved")[0].value == 1.0 and report.warnings == ctx.warnings
    with_val = run_job(tmp_path / "jobs", "baseline", {**params, "dataset": str(clinc_subset)}, [])
    assert with_val.values("data.val_carved")[0].value == 0.0 and with_val.warnings == []


def test_a_dataset_without_its_slice_column_says_which_columns_it_has_and_what_to_set(tmp_path):
    bare = [{"text": r["text"], "label": r["label"]} for r in TRAIN]
    message = error_of(folder_with(tmp_path, train=bare))
    assert message.endswith("train.jsonl: no row has the slice column 'domain' (columns: text, label); "
                            "set slice_column: label, or a column that exists")


def test_slice_column_label_makes_every_intent_its_own_slice(tmp_path):
    bare = [{"text": r["text"], "label": r["label"]} for r in TRAIN]
    dataset = load_folder(folder_with(tmp_path, train=bare, test=[{"text": "flights to paris", "label": "book_flight"}]),
                          slice_column="label")
    assert dataset.train.slices == dataset.train.labels and dataset.test.slices == ("book_flight",)


def test_out_of_scope_rows_are_kept_apart_from_the_in_scope_splits(tmp_path):
    folder = folder_with(tmp_path)
    write_jsonl(folder / "oos_test.jsonl", [{"text": "what is love", "label": "oos", "domain": "oos"}])
    write_jsonl(folder / "val.jsonl", [*TEST, {"text": "tell me a joke", "label": "x", "domain": "oos"}])
    dataset = load_folder(folder)
    assert dataset.oos_test.texts == ("what is love",)
    assert dataset.oos_val.texts == ("tell me a joke",)
    assert "oos" not in dataset.labels and "oos" not in dataset.test.labels


def test_a_missing_field_names_the_file_line_and_field(tmp_path):
    rows = [*TRAIN[:2], {"text": "no label here", "domain": "banking"}]
    message = error_of(folder_with(tmp_path, train=rows))
    assert "train.jsonl, line 3, field 'label': missing field" in message


def test_a_csv_missing_a_column_names_the_column(tmp_path):
    (tmp_path / "train.csv").write_text("text,intent\nhello,greet\n")
    write_jsonl(tmp_path / "test.jsonl", TEST)
    assert "train.csv, line 1, field 'label': missing column (columns: text, intent)" in error_of(tmp_path)


def test_a_parquet_missing_a_column_names_the_column(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"label": ["a"]}), tmp_path / "train.parquet")
    write_jsonl(tmp_path / "test.jsonl", TEST)
    assert "train.parquet, field 'text': missing column (columns: label)" in error_of(tmp_path)


def test_parquet_and_csv_files_load_like_jsonl(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({k: [r[k] for r in TRAIN] for k in ("text", "label", "domain")}), tmp_path / "train.parquet")
    (tmp_path / "test.csv").write_text("text,label,domain\nflights to rome,book_flight,travel\n")
    dataset = load_folder(tmp_path)
    assert dataset.test.texts == ("flights to rome",) and dataset.labels == ("balance", "book_flight")


def test_an_empty_split_is_named(tmp_path):
    folder = folder_with(tmp_path)
    (folder / "test.jsonl").write_text("")
    assert "test.jsonl: empty split 'test'" in error_of(folder)


def test_an_unknown_label_in_an_eval_split_names_its_line(tmp_path):
    test = [*TEST, {"text": "order a pizza", "label": "order_food", "domain": "kitchen"}]
    message = error_of(folder_with(tmp_path, test=test))
    assert "test.jsonl, line 2, field 'label': unknown label 'order_food'" in message


def test_bad_encoding_names_the_line(tmp_path):
    folder = folder_with(tmp_path)
    with (folder / "train.jsonl").open("ab") as handle:
        handle.write(b'{"text": "caf\xe9", "label": "balance"}\n')
    assert "train.jsonl, line 4: bad encoding, not UTF-8 (byte 0xe9)" in error_of(folder)


def test_a_duplicate_id_names_both_lines(tmp_path):
    rows = [*TRAIN, {**TRAIN[0], "text": "balance please"}]
    message = error_of(folder_with(tmp_path, train=rows))
    assert "train.jsonl, line 4, field 'id': duplicate id '1' (first at" in message
    assert "train.jsonl, line 1)" in message


def test_hf_datasets_without_the_datasets_package_say_how_to_install_it(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` raise ImportError
    with pytest.raises(PermanentError, match=r"hf:clinc_oos:plus: the `datasets` package is not installed"):
        load_dataset("hf:clinc_oos:plus")


@pytest.fixture
def clinc150_setting(clinc150_dir, monkeypatch):
    """CLINC150_DIR set, and this process's settings read again so that they see it."""
    monkeypatch.setenv("CLINC150_DIR", str(clinc150_dir))
    current_settings.cache_clear()
    yield clinc150_dir
    monkeypatch.undo()
    current_settings.cache_clear()


def test_clinc150_10shot_keeps_the_same_10_training_rows_per_intent_for_every_seed(clinc150_setting):
    shots, other_seed = load_dataset("clinc150", variant="10shot"), load_dataset("clinc150", variant="10shot", seed=9)
    full = load_dataset("clinc150", variant="full")
    assert len(shots.labels) == 150 and {shots.train.labels.count(label) for label in shots.labels} == {10}
    assert shots.train == other_seed.train and set(shots.train.texts) <= set(full.train.texts)
    assert (shots.val, shots.test, shots.oos_test) == (full.val, full.test, full.oos_test)
    assert shots.name == "clinc150/10shot"
    with pytest.raises(PermanentError, match="unknown variant '5shot'; known: full, small, imbalanced, 10shot"):
        load_dataset("clinc150", variant="5shot")


def test_clinc150_loads_offline_from_the_folder_named_by_CLINC150_DIR(clinc150_setting):
    dataset = load_dataset("clinc150", variant="small")
    assert len(dataset.labels) == 150 and len(dataset.train) == 7500
    assert len(dataset.oos_test) == 1000 and set(dataset.oos_test.slices) == {"oos"}
    assert len(set(dataset.test.slices)) == 10


def test_a_downloaded_file_is_pinned_on_first_use_and_a_changed_one_is_refused(tmp_path, monkeypatch):
    url = f"{clinc150.BASE_URL}/domains.json"
    monkeypatch.setattr(clinc150, "_download", lambda url, path: path.write_bytes(b'{"banking": ["balance"]}'))
    assert clinc150.fetch_verified(url, tmp_path) == b'{"banking": ["balance"]}'
    assert url in (tmp_path / "SHA256SUMS").read_text()
    (tmp_path / "domains.json").write_bytes(b'{"tampered": []}')
    with pytest.raises(PermanentError, match="does not match the pinned"):
        clinc150.fetch_verified(url, tmp_path)


def test_the_oos_eval_layout_converts_to_jsonl_with_domains(tmp_path):
    data = {split: [["hello there", "greeting"]] for split in clinc150.SOURCE_SPLITS}
    data["oos_test"] = [["what is love", "oos"]]
    clinc150.write_jsonl_layout(data, {"small_talk": ["greeting"]}, tmp_path)
    assert json.loads((tmp_path / "train.jsonl").read_text()) == {"text": "hello there", "label": "greeting", "domain": "small_talk"}
    assert json.loads((tmp_path / "oos_test.jsonl").read_text())["domain"] == "oos"


def test_per_label_keeps_the_first_rows_of_each_label(tmp_path):
    dataset = load_folder(folder_with(tmp_path, train=TRAIN * 1 + [{**TRAIN[0], "id": 9, "text": "balance?"}]))
    sample = dataset.train.per_label(1)
    assert sorted(sample.labels) == ["balance", "book_flight"]
    assert sample.texts[0] == dataset.train.texts[0]
