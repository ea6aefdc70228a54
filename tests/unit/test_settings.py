from __future__ import annotations

import stat
from pathlib import Path

import pytest

from loyalty.settings import Settings, ensure_secret_key


def test_defaults_when_nothing_is_set() -> None:
    settings = Settings.from_env({})

    assert settings.database_url is None
    assert settings.redis_url is None
    assert settings.data_dir == Path(".loyalty")
    assert settings.secret_key is None
    assert (settings.api_host, settings.api_port, settings.api_workers) == ("127.0.0.1", 8000, 2)
    assert settings.worker_enabled is True
    assert settings.log_level == "INFO"
    assert settings.db_pool_size == 10
    assert settings.member_token_ttl_seconds == 3600
    assert settings.key_cache_ttl_seconds == 10
    assert settings.demo is True


def test_reads_prefixed_variables() -> None:
    settings = Settings.from_env(
        {
            "LOYALTY_DATABASE_URL": "postgresql://u@h/db",
            "LOYALTY_REDIS_URL": "redis://h:6379/0",
            "LOYALTY_DATA_DIR": "/var/lib/loyalty",
            "LOYALTY_SECRET_KEY": "s3cret",
            "LOYALTY_API_HOST": "0.0.0.0",
            "LOYALTY_API_PORT": "9000",
            "LOYALTY_API_WORKERS": "4",
            "LOYALTY_WORKER_ENABLED": "false",
            "LOYALTY_LOG_LEVEL": "debug",
            "LOYALTY_DB_POOL_SIZE": "20",
            "LOYALTY_MEMBER_TOKEN_TTL_SECONDS": "60",
            "LOYALTY_KEY_CACHE_TTL_SECONDS": "0",
            "LOYALTY_DEMO": "0",
            "DATABASE_URL": "postgresql://ignored/without-prefix",
        }
    )

    assert settings.database_url == "postgresql://u@h/db"
    assert settings.redis_url == "redis://h:6379/0"
    assert settings.data_dir == Path("/var/lib/loyalty")
    assert settings.secret_key == "s3cret"
    assert (settings.api_host, settings.api_port, settings.api_workers) == ("0.0.0.0", 9000, 4)
    assert settings.worker_enabled is False
    assert settings.log_level == "DEBUG"
    assert settings.db_pool_size == 20
    assert settings.member_token_ttl_seconds == 60
    assert settings.key_cache_ttl_seconds == 0
    assert settings.demo is False


def test_empty_values_mean_unset() -> None:
    settings = Settings.from_env({"LOYALTY_DATABASE_URL": "", "LOYALTY_DEMO": " ", "LOYALTY_API_PORT": ""})

    assert settings.database_url is None
    assert settings.demo is True
    assert settings.api_port == 8000


@pytest.mark.parametrize(
    ("name", "value"),
    [("LOYALTY_API_PORT", "eighty"), ("LOYALTY_DEMO", "maybe"), ("LOYALTY_WORKER_ENABLED", "2")],
)
def test_bad_values_name_the_variable(name: str, value: str) -> None:
    with pytest.raises(ValueError, match=name):
        Settings.from_env({name: value})


def test_with_urls_returns_a_new_frozen_object() -> None:
    settings = Settings.from_env({})

    resolved = settings.with_urls("postgresql://a/b", "redis://c/0")

    assert (resolved.database_url, resolved.redis_url) == ("postgresql://a/b", "redis://c/0")
    assert settings.database_url is None
    with pytest.raises(AttributeError):
        resolved.api_port = 1  # type: ignore[misc]


def test_to_env_round_trips() -> None:
    settings = Settings.from_env(
        {"LOYALTY_SECRET_KEY": "k", "LOYALTY_DEMO": "false", "LOYALTY_API_PORT": "81"}
    )

    assert Settings.from_env(settings.to_env()) == settings


def test_ensure_secret_key_creates_a_private_file_once(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data")

    first = ensure_secret_key(settings)
    second = ensure_secret_key(settings)

    key_file = tmp_path / "data" / "secret_key"
    assert first.secret_key and len(first.secret_key) >= 40
    assert second.secret_key == first.secret_key
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600


def test_ensure_secret_key_keeps_an_explicit_key(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, secret_key="given")

    assert ensure_secret_key(settings).secret_key == "given"
    assert not (tmp_path / "secret_key").exists()
