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
    ("WORKER_PRICE_PER_HOUR", "cheap"), ("WORKER_PRICE_PER_HOUR", "1e3"), ("WORKER_SPOT", "maybe"), ("WORKER_CONCURRENCY", "0"),
    ("WORKER_CONCURRENCY", "99999999999999999999"), ("LEASE_SECONDS", "inf"), ("LEASE_SECONDS", "nan"),
    ("LEASE_SECONDS", "1e400"), ("HEARTBEAT_SECONDS", "0"), ("HEARTBEAT_SECONDS", "-inf"), ("MAX_ATTEMPTS", "many"),
    ("MAX_ATTEMPTS", "1e3"), ("RESEND_AFTER_SECONDS", "-1"), ("RESEND_AFTER_SECONDS", "inf"), ("PROGRESS_LOG_SECONDS", "nan"),
    ("QUEUE_ROUTES", "gpu"), ("QUEUE_ROUTES", '{"baseline": ""}'), ("QUEUE_ROUTES", '{"baseline": "a/b"}'),
    ("DATABASE_URL", "mysql://u:p@h/db"), ("DATABASE_URL", "ledger.db"), ("DATABASE_URL", "postgresql://u:p@ss@h/db"),
    ("BROKER_URL", "garbage"), ("BROKER_URL", "redis://h:port/0"), ("BROKER_URL", "redis://h:6379/0?password=x"), ("BROKER_URL", "redis://h/zero"), ("BROKER_URL", "memory://"),
    ("WORKER_NAME", "two words"), ("WORKER_NAME", "w" * 101), ("WORKER_INSTANCE_TYPE", "x" * 101),
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


def test_a_heartbeat_must_come_more_often_than_the_lease_runs_out():
    with pytest.raises(ConfigError, match="HEARTBEAT_SECONDS .* must be shorter than LEASE_SECONDS"):
        load_settings({"LEASE_SECONDS": "2", "HEARTBEAT_SECONDS": "2"})
    assert load_settings({"LEASE_SECONDS": "2", "HEARTBEAT_SECONDS": "0.5"}).lease_seconds == 2


def test_folders_under_a_file_are_refused_with_the_variable_named(tmp_path):
    (tmp_path / "file").write_text("x")
    for name in ("BUDGETQ_HOME", "ARTIFACT_DIR", "CHECKPOINT_DIR"):
        with pytest.raises(ConfigError, match=f"{name}=.* is under .*file, which is a file"):
            load_settings({name: str(tmp_path / "file" / "sub")})
    with pytest.raises(ConfigError, match="BUDGETQ_HOME=.* is a file"):
        load_settings({"BUDGETQ_HOME": str(tmp_path / "file")})


def test_broker_urls_of_every_supported_shape_pass(tmp_path):
    for url in ("filesystem://", "redis://127.0.0.1:6379/0", "rediss://:p@ss@cache:6380/2", "amqp://guest:guest@rabbit//",
                "redis://a:6379/0;redis://b:6379/0"):
        assert load_settings({"BROKER_URL": url}).broker_url == url


def test_the_wordnet_location_is_a_setting_defaulting_to_debians():
    assert str(load_settings({}).wordnet_dir) == "/usr/share/wordnet"
    assert str(load_settings({"WORDNET_DIR": "/opt/wn"}).wordnet_dir) == "/opt/wn"


def test_downloads_are_cached_under_the_home_when_one_is_set_else_in_the_users_cache(tmp_path):
    from pathlib import Path

    assert load_settings({"BUDGETQ_HOME": str(tmp_path)}).cache_dir == tmp_path / "cache"
    assert load_settings({}).cache_dir == Path.home() / ".cache" / "budgetq"
    assert load_settings({"BUDGETQ_HOME": str(tmp_path), "BUDGETQ_CACHE": str(tmp_path / "dl")}).cache_dir == tmp_path / "dl"


@pytest.mark.parametrize("text, hidden", [
    ("postgresql://u:p@ss@127.0.0.1:1/db failed", "p@ss"),  # a password holding '@'
    ("postgresql://u:p@ss@ss@127.0.0.1:1/db x", "ss@ss"),
    ("postgresql://u@h/db?password=sekrit&sslmode=require", "sekrit"),
    ("postgresql://u@h/db?sslmode=require&PASSWORD=sekrit", "sekrit"),
    ("host=h password=sekrit dbname=d", "sekrit"),
    ("{'url': 'redis://:sekrit@h:6379/0'}", "sekrit"),
    ('"broker": "amqp://guest:sekrit@rabbit//"', "sekrit"),
])
def test_every_password_shape_is_masked(text, hidden):
    masked = mask_url(text)
    assert hidden not in masked and "***" in masked


def test_urls_without_passwords_are_left_alone():
    for text in ("postgresql://user@host:5432/db", "redis://host:6379/0", "sqlite:////tmp/a@b/ledger.db"):
        assert mask_url(text) == text


def test_log_records_are_masked_message_and_traceback():
    import logging

    from core.settings import PasswordMask

    logger = logging.getLogger("budgetq.test_mask")
    handler = logging.Handler()
    handler.emit = lambda record: records.append(logging.Formatter().format(record))
    records: list[str] = []
    handler.addFilter(PasswordMask())
    logger.addHandler(handler)
    try:
        try:
            raise RuntimeError("cannot reach redis://:sekrit@h:6379/0")
        except RuntimeError:
            logger.exception("broker %s failed", "amqp://guest:hunter2@rabbit//")
    finally:
        logger.removeHandler(handler)
    assert records and all("sekrit" not in r and "hunter2" not in r for r in records)
def test_artifact_and_checkpoint_locations_take_object_store_urls_and_keep_a_local_cache(tmp_path):
    settings = load_settings({"BUDGETQ_HOME": str(tmp_path), "ARTIFACT_DIR": "s3://models/team/", "CHECKPOINT_DIR": "file:///mnt/ckpt",
                              "STORAGE_OPTIONS": '{"client_kwargs": {"endpoint_url": "http://127.0.0.1:9000"}}'})
    assert settings.artifact_url == "s3://models/team" and settings.checkpoint_url == "file:///mnt/ckpt"
    assert settings.artifact_dir == tmp_path / "artifacts" and settings.checkpoint_dir == tmp_path / "checkpoints"
    assert settings.storage_options == {"client_kwargs": {"endpoint_url": "http://127.0.0.1:9000"}}
    assert not settings.preemption_notice_url and settings.preemption_poll_seconds == 5.0  # nothing is polled by default
