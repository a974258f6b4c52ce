"""The one redaction function: how personal data and secrets look wherever a person can see them.

Contact data (names, phones, e-mail, addresses, SSN, dates of birth) is masked in listings, logs,
Flower and errors; secrets (API keys, passwords, tokens) are replaced outright.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

MASK = "***"


def mask(value: object) -> str:
    """Mask one personal value, keeping just enough to tell two records apart.

    ``"0383218199"`` → ``"0***99"``, ``"Jane Smith"`` → ``"J***th"``; short values become ``***``.
    """
    text = str(value)
    if len(text) <= 5:
        return MASK
    return f"{text[0]}{MASK}{text[-2:]}"


def mask_fields(fields: Mapping[str, Any], public: Iterable[str] = ()) -> dict[str, Any]:
    """Copy of ``fields`` with every value masked except the keys named in ``public``.

    Masking is the default and ``public`` the exception, so a field nobody thought about is hidden.
    Nested mappings are masked recursively; ``None`` stays ``None`` (its absence is not personal).
    """
    keep = set(public)
    shown: dict[str, Any] = {}
    for key, value in fields.items():
        if key in keep or value is None:
            shown[key] = value
        elif isinstance(value, Mapping):
            shown[key] = mask_fields(value, keep)
        else:
            shown[key] = mask(value)
    return shown


def scrub(text: str, secrets: Iterable[str]) -> str:
    """Remove every occurrence of each (non-empty) secret from ``text``."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, MASK)
    return text
