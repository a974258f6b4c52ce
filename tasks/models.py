"""The base of every job model, the registry of job kinds, and readable validation errors.

A job model validates every field at the door; a job that cannot succeed never reaches a queue.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, ClassVar, Self
from urllib.parse import quote

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from worker.redaction import mask_fields, personal_values

_KINDS: dict[str, type[JobModel]] = {}

#: The largest .NET/Java Int32: the destinations that declare an id as Int32 (Noojee's
#: template, campaign and allocation ids; Trendsic's ids) refuse anything above it.
INT32_MAX = 2**31 - 1
#: Control characters (NUL included): never in an id, a key or a field name.
CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f]")
#: The same, less tab, line feed and carriage return, which free text may hold.
TEXT_CONTROL_CHARACTERS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def _whole_number(value: Any) -> Any:
    """An id or a count as JSON sends it: an integer. ``true`` is not 1 and ``41.0`` is not 41
    here (pydantic's lax mode takes both); a string of at most 10 ASCII digits is let through,
    as a backfill's cell or an operator's ``--set`` edit is text."""
    if isinstance(value, bool | float):
        raise ValueError("must be a whole number (a JSON integer), not true/false or a decimal")
    if isinstance(value, str) and not (value.isascii() and value.isdigit() and len(value) <= 10):
        raise ValueError("must be a whole number (a JSON integer)")
    return value


# The bounds come before the validator: after it, pydantic writes them into the JSON Schema
# as "gt"/"le", which no client (nor schemathesis) reads as exclusiveMinimum/maximum.
#: A positive Int32 id (``> 0``, ``≤ 2,147,483,647``), a JSON integer.
Int32Id = Annotated[int, Field(gt=0, le=INT32_MAX), BeforeValidator(_whole_number)]
#: A percentage-like whole number 0-100 given as a JSON integer (Noojee's njPriority).
Percent = Annotated[int, Field(ge=0, le=100), BeforeValidator(_whole_number)]


class JobModel(BaseModel):
    """A validated destination action. Subclasses set ``kind`` (``"noojee.update"``),
    ``destination`` (the queue and module name), ``public_fields`` (the fields that are not
    personal data and may be shown unmasked) and ``entity_fields`` (the fields that name the
    destination record the job writes; see ``entity_key``).

    Jobs of one entity are delivered one at a time in submission order. Pending ones may be
    coalesced into one call: a kind that allows it overrides ``mergeable`` and ``merge``.
    """

    # hide_input_in_errors: a ValidationError's text must not quote the job (str(exc) would
    # show ``input_value={... 'MobilePhone': '0412345678'}``); nested models set it too.
    model_config = ConfigDict(
        extra="forbid", frozen=True, populate_by_name=True, hide_input_in_errors=True
    )

    kind: ClassVar[str]
    destination: ClassVar[str]
    public_fields: ClassVar[frozenset[str]] = frozenset()
    entity_fields: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        if "kind" in cls.__dict__:
            if not cls.entity_fields and "entity_key" not in cls.__dict__:
                raise TypeError(
                    f"{cls.__name__} must declare entity_fields (the fields that "
                    "name the record it writes) or override entity_key()"
                )
            _KINDS[cls.kind] = cls

    def masked(self) -> dict[str, Any]:
        """The job as a person may see it: personal values masked."""
        return mask_fields(self.model_dump(mode="json", exclude_none=True), self.public_fields)

    def personal_values(self) -> list[str]:
        """The values ``masked`` hides, as text to scrub from what a destination answers about
        this job (its messages may quote them)."""
        return personal_values(self.model_dump(mode="json", exclude_none=True), self.public_fields)

    def entity_key(self) -> str:
        """The destination record this job writes, as ``destination:part/part`` (each part
        URL-quoted, so ``:`` and ``/`` in ids cannot make two records one). Built from public
        fields only: it is shown in listings. Kinds of one destination that write the same
        records (Noojee's insert and update) share keys."""
        parts = (quote(str(getattr(self, name)), safe="") for name in self.entity_fields)
        return f"{self.destination}:{'/'.join(parts)}"

    def mergeable(self, newer: JobModel) -> bool:
        """Whether ``newer`` (a later job of the same entity) may be delivered in one call with
        this one. By default no: a kind that can be coalesced says when."""
        return False

    def merge(self, newer: Self) -> Self:
        """This job with ``newer``'s changes on top (newest value of each field wins); only
        called when ``mergeable``."""
        raise NotImplementedError(f"{self.kind} jobs are not merged")


class JobValidationError(ValueError):
    """A job was refused at the door. ``problems`` is a list of (field path, message); neither
    contains the offending value, which may be personal data."""

    def __init__(self, kind: str, problems: list[tuple[str, str]]) -> None:
        self.kind = kind
        self.problems = problems
        lines = "\n".join(f"  {path}: {message}" for path, message in problems)
        super().__init__(f"invalid {kind} job:\n{lines}")

    @classmethod
    def from_pydantic(cls, kind: str, exc: ValidationError) -> JobValidationError:
        problems = []
        for error in exc.errors(include_input=False, include_url=False):
            path = ".".join(str(p) for p in error["loc"]) or "(job)"
            message = error["msg"].removeprefix("Value error, ")
            problems.append((path, message))
        return cls(kind, problems)


def load_kinds() -> None:
    """Import every registered destination's module (each registers its kinds on import)."""
    from worker.destinations import registry

    registry()


def kinds() -> dict[str, type[JobModel]]:
    """Every job kind of every destination."""
    load_kinds()
    return dict(_KINDS)


def model_for(kind: str) -> type[JobModel]:
    if kind not in _KINDS:
        load_kinds()
    try:
        return _KINDS[kind]
    except KeyError:
        known = ", ".join(sorted(_KINDS)) or "none loaded"
        raise JobValidationError(kind, [("kind", f"unknown job kind; known: {known}")]) from None


def validate_job(kind: str, data: dict[str, Any]) -> JobModel:
    """Build a job of ``kind`` from plain data, or raise ``JobValidationError``."""
    model = model_for(kind)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise JobValidationError.from_pydantic(kind, exc) from None


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
#: The largest integer version: its sort key must keep 20 digits.
MAX_VERSION = 10**19 - 1


def version_key(version: int | str | datetime) -> tuple[str, str]:
    """A producer's version of a job's data → (as shown, sort key). An integer 0 ≤ v < 10**19,
    or an RFC 3339 timestamp with its offset (``2026-11-30T09:30:00Z``); the sort key is 20
    digits (the integer, or microseconds since 1970), so keys compare as strings in Lua. Use one
    form per entity: an integer and a timestamp compare as numbers. ValueError naming what is
    expected otherwise."""
    if isinstance(version, bool):
        raise ValueError("version must be an integer or an RFC 3339 timestamp, not a boolean")
    if isinstance(version, int):
        if not 0 <= version <= MAX_VERSION:
            raise ValueError(f"version must be an integer from 0 to {MAX_VERSION}")
        return str(version), f"{version:020d}"
    if isinstance(version, str):
        text = version.strip()
        if text.isascii() and text.isdigit() and len(text) <= 19:
            return version_key(int(text))
        try:
            when = datetime.fromisoformat(text.replace("z", "Z"))
        except ValueError:
            when = None
        if when is None or "T" not in text.upper() or when.tzinfo is None:
            raise ValueError(
                "version must be an integer, or an RFC 3339 timestamp with its "
                "offset, e.g. 2026-11-30T09:30:00Z"
            )
        version = when
    if isinstance(version, datetime):
        if version.tzinfo is None:
            raise ValueError("a version timestamp needs its offset (Z or +hh:mm)")
        micros = (version - EPOCH) // timedelta(microseconds=1)  # exact, unlike a float
        if micros < 0:
            raise ValueError("a version timestamp must be after 1970-01-01")
        return version.isoformat(), f"{micros:020d}"
    raise ValueError("version must be an integer or an RFC 3339 timestamp")
