"""Settings: defaults in one place, RAYTRANSCRIBE_* variables, nested groups, validation."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from raytranscribe.config import Settings

ENV = {
    "RAYTRANSCRIBE_DATABASE_URL": "postgresql+psycopg2://u@db:5432/rt",
    "RAYTRANSCRIBE_RETRY__MAX_RETRIES": "7",
    "RAYTRANSCRIBE_LEASE__LEASE_S": "30.5",
    "RAYTRANSCRIBE_STORE__OP_RETRIES": "0",
}


def test_defaults():
    s = Settings()
    assert (s.retry.max_retries, s.retry.base_delay_s, s.retry.backoff_factor, s.retry.max_delay_s) == (3, 5.0, 2.0, 900.0)
    assert (s.lease.lease_s, s.lease.heartbeat_s) == (120.0, 10.0)
    assert (s.store.op_retries, s.store.op_retry_base_s) == (5, 0.2)
    assert s.s3.presign_expiry_s > s.lease.lease_s  # a URL outlives the lease it was signed for


def test_environment_variables(monkeypatch_env):
    s = Settings()
    assert s.database_url == "postgresql+psycopg2://u@db:5432/rt"
    assert (s.retry.max_retries, s.lease.lease_s, s.store.op_retries) == (7, 30.5, 0)


@pytest.fixture
def monkeypatch_env(monkeypatch):
    # Environment variables only (no code is patched): Settings() reads them.
    for k, v in ENV.items():
        monkeypatch.setenv(k, v)


def test_with_replaces_fields_of_groups_and_keeps_the_rest():
    s = Settings().with_(retry={"max_retries": 1}, store={"op_retries": 9})
    assert (s.retry.max_retries, s.retry.base_delay_s, s.store.op_retries, s.store.pool_size) == (1, 5.0, 9, 5)
    assert Settings().retry.max_retries == 3  # the original is untouched (frozen)


def test_with_validates_what_it_is_given():
    """An unknown field (a setting renamed since), an unknown group or a value out of range raises,
    instead of a copy that silently carries it (model_copy does not validate)."""
    with pytest.raises(ValidationError, match="actors"):
        Settings().with_(worker={"actors": 1})
    with pytest.raises(ValidationError, match="max_retries"):
        Settings().with_(retry={"max_retries": -1})
    with pytest.raises(ValueError, match="no group or field 'workers'"):
        Settings().with_(workers={"min_actors": 1})
    assert Settings().with_(health={"start_timeout_s": "2.5"}).health.start_timeout_s == 2.5  # coerced, as from env


def test_validation_rejects_bad_values(monkeypatch):
    monkeypatch.setenv("RAYTRANSCRIBE_RETRY__BACKOFF_FACTOR", "0.5")
    with pytest.raises(ValidationError, match="backoff_factor"):
        Settings()


def test_settings_are_frozen():
    with pytest.raises(ValidationError):
        Settings().log_level = "DEBUG"  # type: ignore[misc]


def test_names_in_any_case_and_a_group_as_json(monkeypatch):
    """A group may come whole as a JSON object; its fields' own variables win over it."""
    monkeypatch.setenv("raytranscribe_log_level", "DEBUG")
    monkeypatch.setenv("RAYTRANSCRIBE_RETRY", '{"max_retries": 9, "base_delay_s": 1}')
    monkeypatch.setenv("RAYTRANSCRIBE_RETRY__MAX_RETRIES", "2")
    s = Settings()
    assert (s.log_level, s.retry.max_retries, s.retry.base_delay_s) == ("DEBUG", 2, 1.0)


def test_keyword_arguments_win_over_the_environment(monkeypatch_env):
    s = Settings(database_url="postgresql://other/db", retry={"base_delay_s": 1.0})
    assert s.database_url == "postgresql://other/db"
    assert (s.retry.max_retries, s.retry.base_delay_s) == (7, 1.0)  # a group's dict merges with its variables
    assert s.with_(retry={"base_delay_s": 2.0}).retry.max_retries == 7  # a copy keeps what it was made with


@pytest.mark.parametrize(
    ("name", "value", "loc"),
    [
        ("RAYTRANSCRIBE_WORKER__NUM_GPU", "1", ("worker", "num_gpu")),  # a misspelt field is named, not dropped
        ("RAYTRANSCRIBE_RETRY", "five", ("retry",)),  # a group that is not a JSON object
        ("RAYTRANSCRIBE_ENGINE__BATCH_SIZE", "many", ("engine", "batch_size")),
        ("RAYTRANSCRIBE_RETRY__MAX_RETRIES__X", "1", ("retry", "max_retries")),  # a field is no group
    ],
)
def test_a_bad_variable_is_named(monkeypatch, name, value, loc):
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError) as caught:
        Settings()
    assert [tuple(e["loc"]) for e in caught.value.errors()] == [loc]


def test_variables_naming_no_setting_are_ignored(monkeypatch):
    monkeypatch.setenv("RAYTRANSCRIBE_NO_SUCH_THING", "1")
    monkeypatch.setenv("RAYTRANSCRIBE_NO_SUCH__GROUP", "1")
    assert Settings() == Settings(database_url=None)
