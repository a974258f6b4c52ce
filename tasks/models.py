"""The base of every job model, the registry of job kinds, and readable validation errors.

A job model validates every field at the door; a job that cannot succeed never reaches a queue.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, ValidationError

from worker.redaction import mask_fields

_KINDS: dict[str, type[JobModel]] = {}


class JobModel(BaseModel):
    """A validated destination action. Subclasses set ``kind`` (``"noojee.update"``),
    ``destination`` (the queue and module name) and ``public_fields`` (the fields that are not
    personal data and may be shown unmasked)."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    kind: ClassVar[str]
    destination: ClassVar[str]
    public_fields: ClassVar[frozenset[str]] = frozenset()

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        if "kind" in cls.__dict__:
            _KINDS[cls.kind] = cls

    def masked(self) -> dict[str, Any]:
        """The job as a person may see it: personal values masked."""
        return mask_fields(self.model_dump(mode="json", exclude_none=True), self.public_fields)


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
    """Import every destination module of ``tasks/`` (each registers its kinds on import)."""
    import importlib

    from worker.app import destinations

    for name in destinations():
        importlib.import_module(f"tasks.{name}")


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
