"""Settings are typed and read once; a malformed variable fails at start-up with its name."""

import pytest

from core.errors import ConfigError
from core.settings import load_settings, mask_url


def test_unset_variables_take_the_embedded_defaults(tmp_path):
    settings = load_settings({"BUDGETQ_HOME": str(tmp_path)})
    assert settings.database_url == f"sqlite:///{tmp_path / 'ledger.db'}"
    assert settings.embedded_broker and settings.concurrency == 1 and settings.price_micros_per_hour == 1_000_000
    assert settings.artifact_dir == tmp_path / "artifacts" and settings.worker_name


def test_values_are_parsed_into_their_types():
    settings = load_settings({"WORKER_PRICE_PER_HOUR": "2.50", "WORKER_SPOT": "yes", "LEASE_SECONDS": "12",
                              "QUEUE_ROUTES": '{"baseline": "gpu"}', "DATABASE_URL": ""})
    assert settings.price_micros_per_hour == 2_500_000 and settings.spot is True and settings.lease_seconds == 12.0
    assert settings.queue_for("baseline") == "gpu" and settings.queue_for("augment") == "augment"
    assert settings.database_url.startswith("sqlite:///")  # empty means unset


@pytest.mark.parametrize("name, value", [
    ("WORKER_PRICE_PER_HOUR", "cheap"), ("WORKER_SPOT", "maybe"), ("WORKER_CONCURRENCY", "0"),
    ("LEASE_SECONDS", "inf"), ("LEASE_SECONDS", "nan"), ("HEARTBEAT_SECONDS", "0"), ("MAX_ATTEMPTS", "many"),
    ("RESEND_AFTER_SECONDS", "-1"), ("QUEUE_ROUTES", "gpu"), ("QUEUE_ROUTES", '{"baseline": ""}'),
    ("PREEMPTION_NOTICE_KIND", "azure"), ("PREEMPTION_NOTICE_URL", "169.254.169.254"), ("PREEMPTION_POLL_SECONDS", "0"),
    ("ARTIFACT_DIR", "s3:// bucket"), ("CHECKPOINT_DIR", "gs://bucket with spaces"), ("STORAGE_OPTIONS", "[1, 2]"),
])
def test_a_malformed_variable_is_one_config_error_naming_it(name, value):
    with pytest.raises(ConfigError) as raised:
        load_settings({name: value})
    message = str(raised.value)
    assert name in message and "\n" not in message


def test_passwords_in_urls_are_masked():
    assert mask_url("redis://:sekrit@127.0.0.1:6379/0") == "redis://:***@127.0.0.1:6379/0"
    assert mask_url("postgresql://budget:hunter2@db/ledger") == "postgresql://budget:***@db/ledger"


def test_artifact_and_checkpoint_locations_take_object_store_urls_and_keep_a_local_cache(tmp_path):
    settings = load_settings({"BUDGETQ_HOME": str(tmp_path), "ARTIFACT_DIR": "s3://models/team/", "CHECKPOINT_DIR": "file:///mnt/ckpt",
                              "STORAGE_OPTIONS": '{"client_kwargs": {"endpoint_url": "http://127.0.0.1:9000"}}'})
    assert settings.artifact_url == "s3://models/team" and settings.checkpoint_url == "file:///mnt/ckpt"
    assert settings.artifact_dir == tmp_path / "artifacts" and settings.checkpoint_dir == tmp_path / "checkpoints"
    assert settings.storage_options == {"client_kwargs": {"endpoint_url": "http://127.0.0.1:9000"}}
    assert not settings.preemption_notice_url and settings.preemption_poll_seconds == 5.0  # nothing is polled by default
