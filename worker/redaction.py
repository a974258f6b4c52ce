"""The one redaction function: how personal data and secrets look wherever a person can see them.

Contact data (names, phones, e-mail, addresses, SSN, dates of birth) is masked in listings, logs,
Flower and errors; secrets (API keys, passwords, tokens) are replaced outright.
"""

from __future__ import annotations

import json
import re
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


#: Personal values shorter than this are not scrubbed from free text: "12" or "VIC" would
#: mangle every number and word they happen to match, and say little about a person.
SCRUB_MIN_CHARS = 3


def personal_values(fields: Mapping[str, Any], public: Iterable[str] = ()) -> list[str]:
    """Every text value of ``fields`` (nested mappings included) except under the keys named in
    ``public``: what ``mask_fields`` would mask, as the strings to find in free text."""
    keep = set(public)
    found: list[str] = []
    for key, value in fields.items():
        if key in keep or value is None:
            continue
        if isinstance(value, Mapping):
            found += personal_values(value, keep)
        elif isinstance(value, str) and len(value.strip()) >= SCRUB_MIN_CHARS:
            found.append(value.strip())
    return found


def scrub_personal(text: str, values: Iterable[str]) -> str:
    """``text`` with every occurrence of each personal value (case-insensitive, and as JSON
    would escape it) replaced by its mask, as ``mask`` shows it in a payload: a destination's
    message that quotes the lead ("0412345678 is on the DNC list") keeps its meaning
    ("0***78 is on the DNC list") and loses the data."""
    forms: dict[str, str] = {}  # each form of a value as given -> its mask
    for value in values:
        shown = mask(value)
        for form in (value, json.dumps(value)[1:-1]):
            if len(form) >= SCRUB_MIN_CHARS:
                forms.setdefault(form, shown)
    if not forms or not text:
        return text
    # Most texts quote none of the values: say so without building a pattern (a new one per
    # job, which Python's cache of compiled patterns cannot keep: 2 % of a worker's CPU).
    # casefold() folds at least every pair of letters IGNORECASE matches, so no text the
    # pattern would change is let through here.
    folded = {form.casefold(): shown for form, shown in forms.items()}
    text_folded = text.casefold()
    if not any(form in text_folded for form in folded):
        return text
    # Longest first, so a value that contains another is replaced whole.
    pattern = re.compile(
        "|".join(re.escape(f) for f in sorted(forms, key=len, reverse=True)), re.IGNORECASE
    )
    # (Should some letter IGNORECASE matched not fold to its value's form, the text found is
    # masked as it stands rather than let through.)
    return pattern.sub(
        lambda found: folded.get(found.group(0).casefold()) or mask(found.group(0)), text
    )
