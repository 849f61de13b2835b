"""Object storage for checkpoints and artifacts, against a real S3-compatible server on 127.0.0.1 (moto)."""

import json
import pickle
from pathlib import Path

import pytest

from core.errors import ConfigError, PermanentError
from worker.storage import COMPLETE, Checkpoints, Store, digest, fetch_artifact, store_artifact


def write_checkpoint(folder: Path, step: int, payload: str = "weights") -> Path:
    step_dir = folder / f"step-{step:06d}"
    step_dir.mkdir(parents=True)
    (step_dir / "model.safetensors").write_text(f"{payload}-{step}")
    (step_dir / "state.json").write_text(json.dumps({"step": step}))
    return step_dir


def test_a_checkpoint_uploaded_on_one_machine_is_restored_on_another(s3_bucket, tmp_path):
    store = Store(s3_bucket.url + "/checkpoints")
    here = Checkpoints(store, "job1", tmp_path / "machine-a")
    for step in (10, 20, 30):
        here.upload(write_checkpoint(tmp_path / "machine-a" / "train", step))
    there = Checkpoints(Store(s3_bucket.url + "/checkpoints"), "job1", tmp_path / "machine-b")
    assert there.restore() == ["train/step-000030"]
    assert (tmp_path / "machine-b" / "train" / "step-000030" / "model.safetensors").read_text() == "weights-30"
    assert not (tmp_path / "machine-b" / "train" / "step-000030" / COMPLETE).exists()
    assert there.restore() == []  # already here
    # Only the two newest stay in the bucket.
    steps = {f.split("/")[-2] for f in store.find("job1", "train")}
    assert steps == {"step-000020", "step-000030"}


def test_a_checkpoint_without_its_completion_marker_is_never_trusted(s3_bucket, tmp_path):
    store = Store(s3_bucket.url)
    Checkpoints(store, "job2", tmp_path / "a").upload(write_checkpoint(tmp_path / "a" / "train", 10))
    # An upload cut short by the preemption: the files of step 20 but no marker.
    store.put(write_checkpoint(tmp_path / "a" / "train", 20), "job2", "train", "step-000020")
    assert Checkpoints(store, "job2", tmp_path / "b").restore() == ["train/step-000010"]


def test_an_artifact_in_the_bucket_is_fetched_once_and_its_sha256_checked(s3_bucket, tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "model.safetensors").write_bytes(b"\x00" * 64)
    (model / "labels.json").write_text('["a", "b"]')
    uri, sha, size = store_artifact(Store(s3_bucket.url + "/artifacts"), model, job_id="j", attempt=1, name="model")
    assert uri == f"{s3_bucket.url}/artifacts/j/1/model" and (sha, size) == digest(model)
    cache = tmp_path / "other-machine-cache"
    fetched = fetch_artifact(uri, sha, cache=cache)
    assert fetched == cache / sha / "model" and digest(fetched) == (sha, size)
    assert fetch_artifact(uri, sha, cache=cache) == fetched  # from the cache now
    with pytest.raises(PermanentError, match="sha256"):
        fetch_artifact(uri, "0" * 64, cache=cache)
    assert not (cache / ("0" * 64)).exists()


def test_a_local_artifact_is_checked_where_it_lies(tmp_path):
    report = tmp_path / "report.json"
    report.write_text("{}")
    uri, sha, _ = store_artifact(Store(str(tmp_path / "artifacts")), report, job_id="j", attempt=2, name="report")
    assert Path(uri) == tmp_path / "artifacts" / "j" / "2" / "report"
    assert fetch_artifact(uri, sha, cache=tmp_path / "cache") == Path(uri)
    Path(uri).write_text('{"tampered": true}')
    with pytest.raises(PermanentError, match="sha256"):
        fetch_artifact(uri, sha, cache=tmp_path / "cache")


@pytest.mark.parametrize("name, content", [
    ("pytorch_model.bin", b"anything"),
    ("weights.pt", b"anything"),
    ("innocent.json", pickle.dumps({"a": 1})),
])
def test_an_artifact_holding_pickled_weights_is_refused(tmp_path, name, content):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"\x00")
    (folder / name).write_bytes(content)
    with pytest.raises(PermanentError, match="safetensors only"):
        store_artifact(Store(str(tmp_path / "artifacts")), folder, job_id="j", attempt=1, name="model")
    assert not (tmp_path / "artifacts").exists()


def test_a_store_url_no_filesystem_can_open_is_a_config_error_naming_the_variable():
    with pytest.raises(ConfigError, match="ARTIFACT_DIR"):
        Store("nosuchscheme://bucket/prefix", variable="ARTIFACT_DIR")
