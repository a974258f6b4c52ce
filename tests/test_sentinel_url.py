"""``CONTACTSYNC_REDIS_URL=sentinel://...``: how it is read, refused, shown, and what it becomes
for kombu and for redis-py (the failover itself: ``test_failover.py``)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from worker.sentinel import parse
from worker.settings import Settings, mask_url_password, settings_problem

pytestmark = pytest.mark.timeout(5)

PASSWORD = "sN4-vB8-qR3-tY6"
SENTINEL_PASSWORD = "gH2-kL7-pW5-cX9"


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    monkeypatch.chdir(tmp_path)  # no .env of the developer's
    for name in ("CONTACTSYNC_REDIS_URL",):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_the_documented_form_is_read() -> None:
    url = parse(
        f"sentinel://:{PASSWORD}@10.0.0.1:26379,10.0.0.2:26380,s3/cs/2"
        f"?sentinel_password={SENTINEL_PASSWORD}"
    )
    assert url.sentinels == (("10.0.0.1", 26379), ("10.0.0.2", 26380), ("s3", 26379))
    assert (url.service, url.db, url.password) == ("cs", 2, PASSWORD)
    assert url.sentinel_kwargs()["password"] == SENTINEL_PASSWORD
    assert PASSWORD not in repr(url) and SENTINEL_PASSWORD not in repr(url)


def test_db_defaults_to_0_and_a_percent_encoded_password_is_decoded() -> None:
    url = parse("sentinel://app:p%40ss%2Fw@[::1]:5000/svc")
    assert (url.sentinels, url.db, url.username, url.password) == (
        (("::1", 5000),),
        0,
        "app",
        "p@ss/w",
    )


def test_kombu_gets_one_sentinel_url_per_sentinel_and_the_service_as_master_name() -> None:
    url = parse(f"sentinel://:{PASSWORD}@h1:1,h2:2/cs/3")
    assert url.kombu_url() == f"sentinel://:{PASSWORD}@h1:1/3;sentinel://:{PASSWORD}@h2:2/3"
    assert url.kombu_transport_options()["master_name"] == "cs"
    assert "password" not in url.kombu_transport_options()["sentinel_kwargs"]


@pytest.mark.parametrize(
    "url",
    [
        f"sentinel://:{PASSWORD}@h1:26379",  # no service
        f"sentinel://:{PASSWORD}@h1:26379/",
        f"sentinel://:{PASSWORD}@h1:26379/cs/x",  # db not a number
        f"sentinel://:{PASSWORD}@h1:99999/cs",  # port
        f"sentinel://:{PASSWORD}@h1:2,,h2:3/cs",  # empty host
        f"sentinel://{PASSWORD}@h1:2/cs",  # password without its colon
        f"sentinel://:{PASSWORD}@h1:2/cs?password={PASSWORD}",  # unknown option
    ],
)
def test_a_bad_sentinel_url_is_refused_naming_the_variable_and_the_form_never_the_password(
    env: pytest.MonkeyPatch, url: str
) -> None:
    env.setenv("CONTACTSYNC_REDIS_URL", url)
    with pytest.raises(ValidationError) as caught:
        Settings()
    line = settings_problem(caught.value)
    assert "CONTACTSYNC_REDIS_URL" in line and "sentinel://[:PASSWORD@]HOST:PORT" in line
    assert PASSWORD[:6] not in line and PASSWORD[-6:] not in line
    assert "\n" not in line


def test_a_sentinel_url_is_accepted_and_masked(env: pytest.MonkeyPatch) -> None:
    url = f"sentinel://:{PASSWORD}@h1:1,h2:2/cs/1?sentinel_password={SENTINEL_PASSWORD}"
    env.setenv("CONTACTSYNC_REDIS_URL", url)
    settings = Settings()
    assert settings.redis_url == url
    shown = str(settings.masked()) + repr(settings)
    assert PASSWORD not in shown and SENTINEL_PASSWORD not in shown
    assert mask_url_password(url) == "sentinel://:***@h1:1,h2:2/cs/1?sentinel_password=***"


def test_the_celery_app_and_the_clients_use_sentinel(
    env: pytest.MonkeyPatch,
) -> None:
    from redis.sentinel import SentinelConnectionPool

    from worker.app import broker_settings
    from worker.broker import connect
    from worker.settings import get_settings

    url = f"sentinel://:{PASSWORD}@127.0.0.1:1,127.0.0.1:2/cs/4"
    env.setenv("CONTACTSYNC_REDIS_URL", url)
    get_settings.cache_clear()
    try:
        conf = broker_settings()
    finally:
        get_settings.cache_clear()
    assert conf["broker_url"].startswith("sentinel://")
    options = conf["broker_transport_options"]
    assert options["master_name"] == "cs" and options["priority_steps"] == [0, 9]
    client = connect(url, client_name="x", socket_timeout=7)
    pool = client.connection_pool
    assert isinstance(pool, SentinelConnectionPool) and pool.service_name == "cs"
    kwargs = pool.connection_kwargs
    assert (kwargs["db"], kwargs["socket_timeout"], kwargs["client_name"]) == (4, 7, "x")
    assert PASSWORD not in repr(client)


def test_a_command_waits_for_a_primary_once_for_the_whole_budget(
    env: pytest.MonkeyPatch,
) -> None:
    """No sentinel answers: the command is retried (reconnecting, asking the sentinels again)
    until CONTACTSYNC_REDIS_FAILOVER_WAIT_S is spent, then fails as an outage does; redis-py's
    nested retries (connecting, inside the command) do not multiply it, and a sentinel that is
    down is not retried on its own."""
    import time

    import redis

    from worker.broker import connect
    from worker.settings import get_settings

    env.setenv("CONTACTSYNC_REDIS_FAILOVER_WAIT_S", "0.6")
    get_settings.cache_clear()
    try:
        client = connect("sentinel://127.0.0.1:1,127.0.0.1:2/cs", socket_connect_timeout=0.2)
    finally:
        get_settings.cache_clear()
    started = time.monotonic()
    with pytest.raises(redis.ConnectionError):
        client.ping()
    took = time.monotonic() - started
    assert 0.6 <= took < 1.5, took
