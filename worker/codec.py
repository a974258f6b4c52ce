"""Payload encryption at rest: job payloads sealed with AES-256-GCM before they are written to
Redis and opened where they are read, when ``CONTACTSYNC_PAYLOAD_KEYS`` names keys (off by
default: then ``seal`` and ``unseal`` pass text through).

The keys are named; the first one seals, every one opens, so a key is rotated without downtime
(Sidekiq Enterprise's ``encrypt`` and Temporal's payload codec work the same way): put a new
key first everywhere, keep the old one after it until no payload sealed with it is left
(``contactsync payloads reseal`` seals them all again with the first key), then drop it. A
sealed text names its key: ``cs1:NAME:BASE64(nonce + ciphertext + tag)``. Text without that
prefix is plaintext written before encryption was turned on, and is read as it is.

Only the job's payload (and the parts a merged job carries) is sealed: the envelope (kind,
state, record, times) stays readable, since the ledger's Lua scripts and the operators' lists
work from it and it holds no personal data.
"""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Mapping
from functools import lru_cache

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from worker.settings import get_settings

#: What every sealed text starts with (a JSON payload never does: it starts with ``{``).
PREFIX = "cs1:"
#: Bound to every ciphertext: a sealed payload is only ever opened as one.
_CONTEXT = b"contactsync payload v1"
NONCE_BYTES = 12
KEY_BYTES = 32


class PayloadKeyError(ValueError):
    """A sealed payload cannot be opened: its key is not configured, or it was altered."""


class PayloadCodec:
    """Seals with the first of ``keys`` (name → 32-byte key), opens with any of them."""

    def __init__(self, keys: Mapping[str, bytes]) -> None:
        self._sealers = {name: AESGCM(key) for name, key in keys.items()}
        self._first = next(iter(self._sealers), None)

    @property
    def enabled(self) -> bool:
        return self._first is not None

    def seal(self, text: str) -> str:
        """``text`` sealed with the first key (or as it is, without keys)."""
        if self._first is None or not text:
            return text
        nonce = os.urandom(NONCE_BYTES)
        sealed = self._sealers[self._first].encrypt(nonce, text.encode(), _CONTEXT)
        return f"{PREFIX}{self._first}:{base64.b64encode(nonce + sealed).decode()}"

    def unseal(self, text: str) -> str:
        """``text`` opened (plaintext, written before encryption was on, passes through)."""
        if not text.startswith(PREFIX):
            return text
        name, _, body = text[len(PREFIX) :].partition(":")
        sealer = self._sealers.get(name)
        if sealer is None:
            raise PayloadKeyError(
                f"a payload is sealed with the key {name!r}, which "
                "CONTACTSYNC_PAYLOAD_KEYS does not hold: add it back (after "
                "the key that seals) until no payload uses it"
            )
        try:
            raw = base64.b64decode(body, validate=True)
            return sealer.decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], _CONTEXT).decode()
        except (InvalidTag, binascii.Error, ValueError):
            raise PayloadKeyError(
                f"a payload sealed with the key {name!r} does not open: it "
                "was altered, or the key's value changed"
            ) from None

    def sealed_with_first(self, text: str) -> bool:
        """Whether ``text`` is sealed with the key that seals now (nothing to do on rotation)."""
        if self._first is None:
            return not text.startswith(PREFIX)
        return text.startswith(f"{PREFIX}{self._first}:")


@lru_cache(maxsize=1)
def payload_codec() -> PayloadCodec:
    """The process's codec, from ``CONTACTSYNC_PAYLOAD_KEYS`` (``get_settings``)."""
    keys = get_settings().payload_keys
    return PayloadCodec(
        {name: decode_key(secret.get_secret_value()) for name, secret in keys.items()}
    )


def seal(text: str) -> str:
    """A payload as it is written to Redis (``payload_codec().seal``)."""
    return payload_codec().seal(text)


def unseal(text: str) -> str:
    """A payload as it was before ``seal`` (``payload_codec().unseal``)."""
    return payload_codec().unseal(text)


def decode_key(text: str) -> bytes:
    """A key as the settings hold it: 32 bytes in base64 (standard or URL-safe)."""
    try:
        key = base64.urlsafe_b64decode(text.replace("+", "-").replace("/", "_") + "==")
    except (binascii.Error, ValueError):
        key = b""
    if len(key) != KEY_BYTES:
        raise ValueError(
            "each key must be 32 random bytes in base64, e.g. `python -c 'import "
            "base64, os; print(base64.b64encode(os.urandom(32)).decode())'`"
        )
    return key


def new_key() -> str:
    """A fresh key, as ``CONTACTSYNC_PAYLOAD_KEYS`` takes it."""
    return base64.b64encode(os.urandom(KEY_BYTES)).decode()
