"""What a database secret may hold, and what an unusable one says (never the secret)."""

from __future__ import annotations

import pytest

from shared.secret_settings import SecretFormatError, database_url_from_secret, resolve_secrets
from shared.settings import Settings


def test_a_url_secret_is_the_url() -> None:
    url = "postgresql://app:pw@db:5432/jobs"
    assert database_url_from_secret(f"  {url}\n", "postgresql://other@x/y") == url


def test_rds_json_with_everything_needs_no_base() -> None:
    secret = ('{"username": "app", "password": "pw", "host": "db.example", "port": 6432,'
              ' "dbname": "jobs", "engine": "postgres"}')
    assert database_url_from_secret(secret) == "postgresql://app:pw@db.example:6432/jobs"


def test_json_fields_override_the_base_and_ipv6_hosts_are_bracketed() -> None:
    secret = '{"password": "pw", "host": "::1"}'
    assert database_url_from_secret(secret, "postgresql://reader@db:5433/stats") == (
        "postgresql://reader:pw@[::1]:5433/stats")


@pytest.mark.parametrize("secret", ["hunter2", '{"password": "hunter2"', '["hunter2"]',
                                    '{"password": "hunter2"}'])
def test_unusable_secrets_are_refused_without_quoting_them(secret: str) -> None:
    with pytest.raises(SecretFormatError) as caught:
        database_url_from_secret(secret)
    assert "hunter2" not in str(caught.value)


def test_settings_without_secret_names_are_left_alone() -> None:
    settings = Settings(database_url="postgresql://a@b/c")
    assert resolve_secrets(settings) is settings
