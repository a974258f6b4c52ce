"""Settings read from CONTACTSYNC_* variables, their cross-checks and how secrets stay hidden;
the redaction helpers every listing, log and error goes through."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from worker.redaction import MASK, mask, mask_fields, scrub
from worker.settings import Settings, mask_url_password

pytestmark = pytest.mark.timeout(5)

# Random-looking, so that no piece of them occurs in an error text by chance.
API_KEY = "k7Qx9-Zp2Lw4-Rt8Vy"
FLOWER_PASSWORD = "fW3n-Hq8c-Ts5e"
REDIS_PASSWORD = "rP4-wQ9-zX2-mN7"


def shows_any_of(secret: str, text: str, piece: int = 6) -> bool:
    """Whether ``text`` holds the secret or any ``piece`` consecutive characters of it."""
    return any(secret[i : i + piece] in text for i in range(len(secret) - piece + 1))


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    """An environment with no CONTACTSYNC_* variables and no .env file in the working dir."""
    monkeypatch.chdir(tmp_path)
    for name in list(os.environ):
        if name.startswith("CONTACTSYNC_"):
            monkeypatch.delenv(name)
    return monkeypatch


def settings_error(env: pytest.MonkeyPatch, **variables: str) -> str:
    for name, value in variables.items():
        env.setenv(name, value)
    with pytest.raises(ValidationError) as caught:
        Settings()
    return str(caught.value)


# -- reading the environment -------------------------------------------------------------------
def test_settings_read_prefixed_and_nested_variables(env: pytest.MonkeyPatch) -> None:
    env.setenv("CONTACTSYNC_NOOJEE__BASE_URL", "https://pbx.example.com")
    env.setenv("CONTACTSYNC_NOOJEE__API_KEY", API_KEY)
    env.setenv("CONTACTSYNC_NOOJEE__READ_TIMEOUT_S", "90")
    env.setenv("CONTACTSYNC_RETRY__FAULT_ATTEMPTS", "3")
    env.setenv("CONTACTSYNC_WORKER_CONCURRENCY", "16")
    env.setenv("CONTACTSYNC_FLOWER__PASSWORD", FLOWER_PASSWORD)

    settings = Settings()

    assert str(settings.noojee.base_url) == "https://pbx.example.com/"
    assert settings.noojee.api_key.get_secret_value() == API_KEY
    assert settings.noojee.read_timeout_s == 90
    assert settings.retry.fault_attempts == 3
    assert settings.worker_concurrency == 16
    assert settings.flower.password is not None
    assert settings.flower.password.get_secret_value() == FLOWER_PASSWORD


def test_defaults_hold_without_any_variable(env: pytest.MonkeyPatch) -> None:
    settings = Settings()

    assert settings.redis_url is None
    assert settings.noojee.base_url is None
    assert settings.noojee.read_timeout_s > settings.noojee.pbx_queue_timeout_s


# -- secrets stay hidden ----------------------------------------------------------------------
@pytest.fixture
def secret_settings(env: pytest.MonkeyPatch) -> Settings:
    env.setenv("CONTACTSYNC_NOOJEE__API_KEY", API_KEY)
    env.setenv("CONTACTSYNC_FLOWER__PASSWORD", FLOWER_PASSWORD)
    env.setenv("CONTACTSYNC_REDIS_URL", f"redis://:{REDIS_PASSWORD}@cache.internal:6379/0")
    return Settings()


@pytest.mark.parametrize(
    "show", [str, repr, lambda s: json.dumps(s.masked())], ids=["str", "repr", "masked"]
)
@pytest.mark.parametrize("secret", [API_KEY, FLOWER_PASSWORD], ids=["api-key", "flower-password"])
def test_api_key_and_flower_password_never_appear(
    secret_settings: Settings, show: object, secret: str
) -> None:
    assert callable(show)
    assert not shows_any_of(secret, show(secret_settings))


def test_redis_url_with_a_password_stays_out_of_repr(secret_settings: Settings) -> None:
    assert not shows_any_of(REDIS_PASSWORD, repr(secret_settings))
    assert not shows_any_of(REDIS_PASSWORD, str(secret_settings))


def test_masked_hides_the_redis_password_and_keeps_the_rest_of_the_url(
    secret_settings: Settings,
) -> None:
    shown = secret_settings.masked()

    assert shown["redis_url"] == "redis://:***@cache.internal:6379/0"
    assert not shows_any_of(REDIS_PASSWORD, json.dumps(shown))


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:s3cret@host:6379/0", "redis://:***@host:6379/0"),
        ("rediss://default:s3cret@host:6380/1", "rediss://default:***@host:6380/1"),
        ("redis://:p@ss@host:6379/0", "redis://:***@host:6379/0"),
        ("redis://host:6379/0", "redis://host:6379/0"),
        ("redis://user@host:6379/0", "redis://user@host:6379/0"),
        ("redis://host:6379/0?password=s3cret&db=2", "redis://host:6379/0?password=***&db=2"),
    ],
)
def test_mask_url_password(url: str, shown: str) -> None:
    assert mask_url_password(url) == shown


@pytest.mark.parametrize(
    ("variables", "secret"),
    [
        (
            {"CONTACTSYNC_NOOJEE__API_KEY": API_KEY, "CONTACTSYNC_NOOJEE__READ_TIMEOUT_S": "30"},
            API_KEY,
        ),
        (
            {"CONTACTSYNC_REDIS_URL": f"http://:{REDIS_PASSWORD}@cache.internal:6379"},
            REDIS_PASSWORD,
        ),
    ],
    ids=["api-key-in-timeout-error", "redis-password-in-scheme-error"],
)
def test_settings_error_never_repeats_a_secret(
    env: pytest.MonkeyPatch, variables: dict[str, str], secret: str
) -> None:
    # pydantic shortens a long input to its first and last characters: a piece is a leak too.
    assert not shows_any_of(secret, settings_error(env, **variables))


# -- cross-checks ---------------------------------------------------------------------------------
@pytest.mark.parametrize(("read", "queue"), [("60", "60"), ("30", "60"), ("4", "4.5")])
def test_read_timeout_not_above_pbx_queue_timeout_is_refused_naming_both(
    env: pytest.MonkeyPatch, read: str, queue: str
) -> None:
    error = settings_error(
        env,
        CONTACTSYNC_NOOJEE__READ_TIMEOUT_S=read,
        CONTACTSYNC_NOOJEE__PBX_QUEUE_TIMEOUT_S=queue,
    )

    assert "CONTACTSYNC_NOOJEE__READ_TIMEOUT_S" in error
    assert "CONTACTSYNC_NOOJEE__PBX_QUEUE_TIMEOUT_S" in error


def test_read_timeout_just_above_pbx_queue_timeout_is_accepted(env: pytest.MonkeyPatch) -> None:
    env.setenv("CONTACTSYNC_NOOJEE__PBX_QUEUE_TIMEOUT_S", "60")
    env.setenv("CONTACTSYNC_NOOJEE__READ_TIMEOUT_S", "60.5")

    assert Settings().noojee.read_timeout_s == 60.5


def test_short_visibility_timeout_is_refused_naming_the_variable_and_minimum(
    env: pytest.MonkeyPatch,
) -> None:
    # Defaults: fast window 5 s + gate wait 5 s + the longest calls: three of (5 s connect + 30 s
    # read) for a login, Trendsic's read and its write = 115 s, so at least 230.
    error = settings_error(env, CONTACTSYNC_VISIBILITY_TIMEOUT_S="100")

    assert "CONTACTSYNC_VISIBILITY_TIMEOUT_S" in error
    assert "at least 230" in error


SHORT_DESTINATION_TIMEOUTS = {
    f"CONTACTSYNC_{name}__{knob}": value
    for name in ("MISSIONCAPITAL", "TRENDSIC", "EXPANDABLE")
    for knob, value in (("CONNECT_TIMEOUT_S", "0.5"), ("READ_TIMEOUT_S", "1"))
}


def test_visibility_timeout_follows_the_timeouts_it_must_cover(env: pytest.MonkeyPatch) -> None:
    # Noojee's one call is the longest here: 0.5 + 0.5 + 2 + 4 = 7 s a task, so at least 14 s.
    error = settings_error(
        env,
        CONTACTSYNC_RETRY__FAST_WINDOW_S="0.5",
        CONTACTSYNC_GATE__MAX_WAIT_S="0.5",
        CONTACTSYNC_NOOJEE__CONNECT_TIMEOUT_S="2",
        CONTACTSYNC_NOOJEE__PBX_QUEUE_TIMEOUT_S="2",
        CONTACTSYNC_NOOJEE__READ_TIMEOUT_S="4",
        CONTACTSYNC_VISIBILITY_TIMEOUT_S="13",
        **SHORT_DESTINATION_TIMEOUTS,
    )

    assert "at least 14" in error


def test_three_calls_of_another_destination_count_too(env: pytest.MonkeyPatch) -> None:
    # Trendsic may log in, read and write: 3 x (1 + 9) = 30 s, more than Noojee's 2 + 4.
    error = settings_error(
        env,
        CONTACTSYNC_RETRY__FAST_WINDOW_S="0.5",
        CONTACTSYNC_GATE__MAX_WAIT_S="0.5",
        CONTACTSYNC_NOOJEE__CONNECT_TIMEOUT_S="2",
        CONTACTSYNC_NOOJEE__PBX_QUEUE_TIMEOUT_S="2",
        CONTACTSYNC_NOOJEE__READ_TIMEOUT_S="4",
        CONTACTSYNC_VISIBILITY_TIMEOUT_S="14",
        **{
            **SHORT_DESTINATION_TIMEOUTS,
            "CONTACTSYNC_TRENDSIC__CONNECT_TIMEOUT_S": "1",
            "CONTACTSYNC_TRENDSIC__READ_TIMEOUT_S": "9",
        },
    )

    assert "at least 62" in error


def test_visibility_timeout_at_the_minimum_is_accepted(env: pytest.MonkeyPatch) -> None:
    env.setenv("CONTACTSYNC_VISIBILITY_TIMEOUT_S", "230")

    assert Settings().visibility_timeout_s == 230
    assert Settings().gate_patience_s() == 5  # no room left to wait longer than max_wait_s


def test_a_waiter_near_its_turn_may_wait_what_the_visibility_timeout_leaves_room_for(
    env: pytest.MonkeyPatch,
) -> None:
    # Defaults: 600 / 2 - 5 s of fast retries - 105 s of calls (three of 5 s + 30 s).
    assert Settings().gate_patience_s() == 190
    env.setenv("CONTACTSYNC_VISIBILITY_TIMEOUT_S", "300")
    assert Settings().gate_patience_s() == 40


@pytest.mark.parametrize(
    "url", ["http://cache.internal:6379", "https://cache.internal", "cache.internal:6379"]
)
def test_redis_url_with_another_scheme_is_refused_naming_the_variable(
    env: pytest.MonkeyPatch, url: str
) -> None:
    error = settings_error(env, CONTACTSYNC_REDIS_URL=url)

    assert "CONTACTSYNC_REDIS_URL" in error
    assert "redis://" in error


@pytest.mark.parametrize(
    "url", ["redis://127.0.0.1:6379/0", "rediss://cache.internal:6380/0", "unix:///run/redis.sock"]
)
def test_redis_unix_and_tls_urls_are_accepted(env: pytest.MonkeyPatch, url: str) -> None:
    env.setenv("CONTACTSYNC_REDIS_URL", url)

    assert Settings().redis_url == url


# -- redaction ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("0383218199", "0***99"),
        ("Jane Smith", "J***th"),
        ("abcdef", "a***ef"),
        ("abcde", MASK),
        ("", MASK),
        (12, MASK),
        (38321819, "3***19"),
    ],
)
def test_mask_keeps_first_and_last_two_characters_of_longer_values(
    value: object, shown: str
) -> None:
    assert mask(value) == shown


def test_mask_fields_masks_everything_but_the_public_keys() -> None:
    shown = mask_fields(
        {"id": 7, "Name": "Jane Smith", "FirstPhone": "0383218199", "status": "open"},
        public=["id", "status"],
    )

    assert shown == {"id": 7, "Name": "J***th", "FirstPhone": "0***99", "status": "open"}


def test_mask_fields_masks_nested_mappings_and_keeps_none() -> None:
    shown = mask_fields(
        {"id": 7, "Email": None, "contact": {"id": 3, "Name": "Jane Smith", "Fax": None}},
        public={"id"},
    )

    assert shown == {"id": 7, "Email": None, "contact": {"id": 3, "Name": "J***th", "Fax": None}}


def test_mask_fields_masks_every_key_by_default_and_leaves_the_input_alone() -> None:
    fields = {"Name": "Jane Smith", "note": "called twice"}

    assert mask_fields(fields) == {"Name": "J***th", "note": "c***ce"}
    assert fields == {"Name": "Jane Smith", "note": "called twice"}


def test_scrub_replaces_every_occurrence_of_each_secret() -> None:
    text = f"POST /x?apiKey={API_KEY} failed; retried with {API_KEY}; flower {FLOWER_PASSWORD}"

    scrubbed = scrub(text, [API_KEY, FLOWER_PASSWORD])

    assert scrubbed == f"POST /x?apiKey={MASK} failed; retried with {MASK}; flower {MASK}"


def test_scrub_ignores_empty_secrets() -> None:
    assert scrub("nothing to hide", ["", API_KEY]) == "nothing to hide"


def test_a_flower_password_with_a_comma_is_refused_without_echoing_it() -> None:
    from pydantic import ValidationError

    from worker.settings import FlowerSettings

    with pytest.raises(ValidationError, match="must not contain a comma") as refused:
        FlowerSettings(password="pa,ss")  # type: ignore[arg-type]
    assert "pa,ss" not in str(refused.value)


def test_the_intake_must_be_allowed_to_hold_one_body_of_the_largest_size(
    env: pytest.MonkeyPatch,
) -> None:
    error = settings_error(
        env,
        CONTACTSYNC_INTAKE__MAX_BODY_BYTES="2000000",
        CONTACTSYNC_INTAKE__MAX_BUFFERED_BYTES="1000000",
    )
    assert "CONTACTSYNC_INTAKE__MAX_BUFFERED_BYTES" in error


def test_payload_keys_never_appear(env: pytest.MonkeyPatch) -> None:
    from worker.codec import new_key

    key = new_key()
    env.setenv("CONTACTSYNC_PAYLOAD_KEYS", json.dumps({"k1": key}))
    settings = Settings()
    for shown in (str(settings), repr(settings), json.dumps(settings.masked())):
        assert not shows_any_of(key, shown)


@settings(max_examples=300, deadline=None)
@given(
    value=st.text(min_size=4, max_size=12),
    before=st.text(max_size=8),
    after=st.text(max_size=8),
    swap=st.booleans(),
)
def test_scrub_personal_quick_path_never_lets_a_quoted_value_through(
    value: str, before: str, after: str, swap: bool
) -> None:
    """A text that quotes the value in any letter case (or as JSON escapes it) is changed; the
    quick check that skips the pattern only skips texts that quote nothing."""
    from worker.redaction import SCRUB_MIN_CHARS, scrub_personal

    quoted = value.swapcase() if swap else value
    text = f"{before}{quoted}{after}"
    scrubbed = scrub_personal(text, [value])
    if len(value) < SCRUB_MIN_CHARS:
        return
    pattern = re.compile(re.escape(value), re.IGNORECASE)
    if pattern.search(text):
        assert scrubbed != text or mask(value) == value
