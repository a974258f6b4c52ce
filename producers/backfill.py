"""Backfills: a CSV or JSONL file of contacts turned into bulk jobs, streamed in constant memory,
resumable from a Redis checkpoint (``{prefix}backfill:{run_id}``), paced by its queue's depth.

Owns the file's column → field mapping, the rejects file beside the input and the run id.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import difflib
import hashlib
import io
import json
import re
import sys
import time
import types
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Annotated, Any, Literal, NamedTuple, Union, cast, get_args, get_origin

from pydantic import BaseModel

from tasks.models import JobModel, JobValidationError, kinds, validate_job, version_key
from worker.ledger import TERMINAL, now_ms

Format = Literal["csv", "jsonl"]
Phase = Literal["hashing", "reading", "paused", "waiting", "done"]

#: Rows per round trip to Redis (``enqueue`` sends at most this many in one pipeline).
CHUNK_ROWS = 1000
#: How often a paused backfill looks at its queue again, and ``--wait`` at its jobs.
POLL_S = 0.25
#: How often, at most, the progress asks the ledger how many jobs of the run have ended.
COUNTS_EVERY_S = 0.5
#: The thread switch interval while a backfill sends (see ``run``).
SWITCH_INTERVAL_S = 0.0002
_READ_BYTES = 1 << 20
_EXTENSIONS: dict[str, Format] = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}
_INT = re.compile(r"[+-]?[0-9]+")
#: The strings pydantic's lax mode reads as booleans; strict fields (Trendsic's) get a bool.
_BOOLS = {
    **dict.fromkeys(("1", "on", "t", "true", "y", "yes"), True),
    **dict.fromkeys(("0", "off", "f", "false", "n", "no"), False),
}


class BackfillError(ValueError):
    """The backfill cannot run as asked (unknown destination or column, a file that is not
    UTF-8); the message says what to change. Raised before any row is read, except for a CSV
    that turns out malformed part-way: the run stops there, its checkpoint says what was sent."""


# -- what the caller asks for, what it gets back ------------------------------------------------
@dataclass(frozen=True)
class Backfill:
    """One backfill of ``path``.

    kind: a job kind (``noojee.update``) or a destination with a single kind (``trendsic``).
    format: ``csv`` or ``jsonl``; None: by the file's extension (.csv, .jsonl, .ndjson).
    mapping: file column (CSV) or top-level key (JSONL) → field path; None or "" ignores it.
    constants: field path → value, for every row (``--set``); strings, converted like cells.
    max_queue_depth: most jobs the destination's queue may hold before the backfill pauses;
    None: the setting ``backfill.max_queue_depth``; 0: no pause.
    version_column: the CSV column (or JSONL key) that holds each row's version of its data
    (an integer or an RFC 3339 timestamp; an empty cell: no version), not a job field.
    """

    path: Path
    kind: str
    format: str | None = None
    mapping: Mapping[str, str | None] = field(default_factory=dict)
    constants: Mapping[str, str] = field(default_factory=dict)
    resume: bool = False
    dry_run: bool = False
    wait: bool = False
    max_queue_depth: int | None = None
    chunk_rows: int = CHUNK_ROWS
    version_column: str | None = None


@dataclass
class BackfillProgress:
    """A run's figures, updated in place and handed to the progress callback after each chunk,
    while paused and while waiting. Row counters cover the whole run, a resumed one included."""

    run_id: str = ""
    phase: Phase = "hashing"
    bytes_read: int = 0
    bytes_total: int = 0
    rows_read: int = 0
    enqueued: int = 0
    already_queued: int = 0
    rejected: int = 0
    skipped: int = 0
    #: The last row fully submitted (the checkpoint's): a resume goes on after it.
    last_row: int = 0
    queue_depth: int | None = None
    queue_cap: int = 0
    pauses: int = 0
    paused_s: float = 0.0
    #: ``Ledger.batch_counts`` of the run (jobs, delivered, review, rejected, pending).
    jobs: dict[str, int] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)
    #: When the last row was read (``time.monotonic()``); None while reading.
    ended: float | None = None
    rows_at_start: int = 0

    @property
    def rows_per_s(self) -> float:
        """Rows this process read (skipped ones excluded) per second of reading them."""
        elapsed = (self.ended or time.monotonic()) - self.started
        return (self.rows_read - self.rows_at_start) / elapsed if elapsed > 0 else 0.0


@dataclass(frozen=True)
class BackfillResult:
    """How a run ended. ``rejects_path`` is None when no row was rejected; ``jobs`` is the
    run's final ``batch_counts`` (with ``wait``: every job ended) or empty on a dry run;
    ``seconds`` and ``rows_per_s`` cover reading and sending the rows (not the hashing pass
    before, nor ``wait`` after)."""

    run_id: str
    kind: str
    dry_run: bool
    rows_read: int
    enqueued: int
    already_queued: int
    rejected: int
    skipped: int
    resumed_after: int
    rejects_path: Path | None
    seconds: float
    rows_per_s: float
    pauses: int
    paused_s: float
    jobs: dict[str, int]

    @property
    def ok(self) -> bool:
        """Every row was queued (now or by an earlier run)."""
        return self.rejected == 0


ProgressCallback = Callable[[BackfillProgress], None]
NoteCallback = Callable[[str], None]


# -- destinations, formats, names -------------------------------------------------------------
def resolve_kind(destination: str, action: str | None = None) -> str:
    """The job kind of ``destination`` (``noojee``, or a kind: ``noojee.update``) and ``action``
    (``update``); a destination with one kind needs no action."""
    known = kinds()
    if destination in known:
        if action is not None and destination != f"{destination.partition('.')[0]}.{action}":
            raise BackfillError(
                f"--destination {destination} is a job kind already; "
                f"it does not take --kind {action}"
            )
        return destination
    choices = sorted(k for k in known if k.partition(".")[0] == destination)
    if not choices:
        names = ", ".join(sorted({k.partition(".")[0] for k in known}))
        raise BackfillError(
            f"unknown destination {destination!r}: the destinations are {names}; "
            f"the job kinds are {', '.join(sorted(known))}"
        )
    actions = ", ".join(k.partition(".")[2] for k in choices)
    if action is None:
        if len(choices) == 1:
            return choices[0]
        raise BackfillError(
            f"{destination} has several job kinds: choose one with --kind "
            f"({actions}), or pass --destination {choices[0]}"
        )
    kind = f"{destination}.{action}"
    if kind not in known:
        raise BackfillError(f"{destination} has no action {action!r}; its actions are {actions}")
    return kind


def file_format(path: Path, given: str | None = None) -> Format:
    """``given`` (``csv``/``jsonl``), else the format the file's extension says."""
    if given is not None:
        if given not in ("csv", "jsonl"):
            raise BackfillError(f"--format {given}: choose csv or jsonl")
        return cast(Format, given)
    found = _EXTENSIONS.get(path.suffix.lower())
    if found is None:
        raise BackfillError(
            f"cannot tell the format of {path.name} from its extension: name it "
            ".csv, .jsonl or .ndjson, or pass --format csv|jsonl"
        )
    return found


def load_mapping(path: Path) -> dict[str, str | None]:
    """A mapping file: a JSON object ``{"file column": "field path" | null}``."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise BackfillError(f"cannot read the mapping {path}: {exc}") from None
    except json.JSONDecodeError as exc:
        raise BackfillError(
            f"the mapping {path} is not JSON ({exc.msg}, line {exc.lineno})"
        ) from None
    if not isinstance(raw, dict) or not all(v is None or isinstance(v, str) for v in raw.values()):
        raise BackfillError(
            f'the mapping {path} must be a JSON object of "file column": '
            '"field path" (or null to ignore the column)'
        )
    return {str(k): v or None for k, v in raw.items()}


def rejects_path(path: Path) -> Path:
    """Where the rejected rows of ``path`` are written: ``FILE.rejects.csv`` beside it."""
    return path.with_name(f"{path.name}.rejects.csv")


def checkpoint_key(prefix: str, run_id: str) -> str:
    return f"{prefix}backfill:{run_id}"


def run_id_of(
    path: Path,
    kind: str,
    mapping: Mapping[str, str | None] | None = None,
    constants: Mapping[str, str] | None = None,
    file_format: str = "",
    on_bytes: Callable[[int], None] | None = None,
) -> str:
    """16 hex digits naming a run: the same file, kind, mapping and constants give the same id,
    so a re-run's idempotency keys are the first run's. Reads the file once, in constant memory,
    and refuses one that is not UTF-8 (before any row is sent). ``on_bytes``: bytes hashed so
    far, after each MiB."""
    digest = hashlib.blake2b(digest_size=8)
    setup = {
        "kind": kind,
        "format": file_format,
        "mapping": sorted((mapping or {}).items()),
        "set": sorted((constants or {}).items()),
    }
    digest.update(json.dumps(setup).encode() + b"\0")
    utf8 = codecs.getincrementaldecoder("utf-8")()
    done = 0
    with path.open("rb") as raw:
        while block := raw.read(_READ_BYTES):
            digest.update(block)
            try:
                utf8.decode(block)
            except UnicodeDecodeError as exc:
                raise BackfillError(
                    f"{path.name} is not UTF-8 text (byte {done + exc.start}): "
                    "save it as UTF-8 (CSV UTF-8 in a spreadsheet)"
                ) from None
            done += len(block)
            if on_bytes is not None:
                on_bytes(done)
    return digest.hexdigest()


# -- field paths --------------------------------------------------------------------------------
FieldPath = tuple[str, ...]
Convert = Callable[[str], Any] | None


def _unwrap(annotation: Any) -> Any:
    """``int`` of ``Annotated[int, ...] | None``; unions of several types stay as they are."""
    while True:
        origin = get_origin(annotation)
        if origin is Annotated:
            annotation = get_args(annotation)[0]
        elif origin in (Union, types.UnionType):
            others = [a for a in get_args(annotation) if a is not type(None)]
            if len(others) != 1:
                return annotation
            annotation = others[0]
        else:
            return annotation


def _to_int(value: str) -> Any:
    stripped = value.strip()
    return int(stripped) if _INT.fullmatch(stripped) else value


def _to_float(value: str) -> Any:
    try:
        return value if "_" in value else float(value)
    except ValueError:
        return value


def _to_bool(value: str) -> Any:
    return _BOOLS.get(value.strip().lower(), value)


def _converter(annotation: Any) -> Convert:
    """How a cell (text) becomes the field's value. Strict fields (Trendsic's) take no text for
    a number; text that does not parse is passed on as it is, for validation to name."""
    scalar = _unwrap(annotation)
    return {int: _to_int, float: _to_float, bool: _to_bool}.get(scalar)


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _lead_fields(model: type[BaseModel]) -> bool:
    """A model with a ``fields: dict[str, str]`` (Noojee's lead fields) takes any other name."""
    info = model.model_fields.get("fields")
    return info is not None and get_origin(info.annotation) is dict


def _names(model: type[BaseModel]) -> dict[str, str]:
    names = {name: name for name in model.model_fields}
    names.update({f.alias: name for name, f in model.model_fields.items() if f.alias})
    return names


def _field_list(model: type[BaseModel], under: str = "") -> list[str]:
    shown = []
    for name, info in model.model_fields.items():
        inner = _unwrap(info.annotation)
        if _is_model(inner):
            shown += _field_list(inner, f"{under}{name}.")
        elif name == "fields" and _lead_fields(model):
            shown.append(f"{under}fields.NAME")
        else:
            shown.append(f"{under}{name}" + (f" ({info.alias})" if info.alias else ""))
    return shown


def _resolve(model: type[BaseModel], target: str) -> tuple[FieldPath, Convert]:
    """The field path (Python names) ``target`` names in ``model``, and its cell converter; a
    ``KeyError`` when it names none."""
    head, dot, rest = target.partition(".")
    names = _names(model)
    if head in names:
        name = names[head]
        inner = _unwrap(model.model_fields[name].annotation)
        if _is_model(inner):
            if not rest:
                raise KeyError(
                    f"{head} is an object: name its fields, e.g. "
                    f"{_field_list(inner, f'{head}.')[0].split()[0]}"
                )
            path, convert = _resolve(inner, rest)
            return (name, *path), convert
        if name == "fields" and _lead_fields(model):
            if not rest or "." in rest:
                raise KeyError("name one lead field, e.g. fields.FirstPhone")
            return (name, rest), None
        if dot:
            raise KeyError(f"{head} has no fields of its own")
        return (name,), _converter(model.model_fields[name].annotation)
    if not dot and _lead_fields(model):
        return ("fields", target), None
    raise KeyError("")


def _target(model: type[BaseModel], kind: str, target: str, what: str) -> tuple[FieldPath, Convert]:
    try:
        return _resolve(model, target)
    except KeyError as exc:
        reason = exc.args[0]
        fields = _field_list(model)
        if reason:
            raise BackfillError(f"{what}: {reason}") from None
        plain = [f.split()[0] for f in fields] + [a for a in _names(model) if a not in fields]
        close = difflib.get_close_matches(target, plain, n=1, cutoff=0.7)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise BackfillError(
            f"{what} is not a field of {kind}{hint}. The fields are: {', '.join(fields)}. "
            "Rename it with --mapping FILE.json, or map it to null to ignore it"
        ) from None


def _put(data: dict[str, Any], path: FieldPath, value: Any) -> None:
    for name in path[:-1]:
        inner = data.get(name)
        if not isinstance(inner, dict):
            inner = data[name] = {}
        data = inner
    data[path[-1]] = value


# -- the run ------------------------------------------------------------------------------------
Row = tuple[int, JobModel | None, list[tuple[str, str]], str | int | None]
#: Where a row's version travels beside its fields until it is taken out (no field has this
#: name: field names are identifiers).
VERSION = " version"


class _Rejects:
    """``FILE.rejects.csv``: ``row,field,reason``, one line per problem, never the value. Made
    on the first reject, so a clean run leaves none."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: IO[str] | None = None
        self._writer: Any = None

    def start(self, keep_bytes: int) -> bool:
        """Keep the first ``keep_bytes`` of an earlier run's file (a resume), else none; False
        when those lines are gone."""
        size = self.path.stat().st_size if self.path.exists() else 0
        if keep_bytes and size >= keep_bytes:
            self._file = self.path.open("r+", encoding="utf-8", newline="")
            self._file.truncate(keep_bytes)
            self._file.seek(keep_bytes)
            self._writer = csv.writer(self._file)
            return True
        self.path.unlink(missing_ok=True)
        return not keep_bytes

    def add(self, row: int, problems: list[tuple[str, str]]) -> None:
        if self._writer is None:
            self._file = self.path.open("w", encoding="utf-8", newline="")
            self._writer = csv.writer(self._file)
            self._writer.writerow(("row", "field", "reason"))
        self._writer.writerows((row, path, reason) for path, reason in problems)

    def flush(self) -> int:
        """Bytes written so far (what a resume keeps)."""
        if self._file is None:
            return 0
        self._file.flush()
        return self._file.tell()

    def close(self) -> Path | None:
        if self._file is None:
            return None
        self._file.close()
        return self.path


class _Run:
    """One backfill in progress: the plan made from the header, then the rows."""

    def __init__(
        self, spec: Backfill, progress: ProgressCallback | None, note: NoteCallback | None
    ) -> None:
        self.spec = spec
        self.kind = resolve_kind(spec.kind)
        self.model = kinds()[self.kind]
        self.format = file_format(spec.path, spec.format)
        self.report = progress or (lambda _: None)
        self.note = note or (lambda _: None)
        self.state = BackfillProgress()
        if not spec.path.is_file():
            raise BackfillError(f"no file {spec.path}")
        self.state.bytes_total = spec.path.stat().st_size
        self.mapping = {
            k: (self._target(v, f"--mapping {k!r} → {v!r}") if v else None)
            for k, v in spec.mapping.items()
        }
        self.constants: list[tuple[FieldPath, Any]] = []
        for name, text in spec.constants.items():
            path, convert = self._target(name, f"--set {name}")
            self.constants.append((path, convert(text) if convert else text))
        self.columns: list[tuple[int, FieldPath, Convert]] = []
        self.width = 0
        if self.format == "csv":
            self._plan_columns()
        self.rejects = _Rejects(rejects_path(spec.path))
        self.names = _names(self.model)

    def _target(self, target: str, what: str) -> tuple[FieldPath, Convert]:
        return _target(self.model, self.kind, target, what)

    # -- the header -----------------------------------------------------------------------------
    def _plan_columns(self) -> None:
        """Every column's field, checked before any row is read."""
        names = self._header()
        self.width = len(names)
        given = {path: f"--set {'.'.join(path)}" for path, _ in self.constants}
        for index, name in enumerate(names):
            planned = self._plan_column(index, name)
            if planned is None:
                continue
            path = planned[1]
            if path in given:
                raise BackfillError(
                    f"column {name!r} and {given[path]} both give {'.'.join(path)}: keep one"
                )
            given[path] = f"column {name!r}"
            self.columns.append(planned)
        self._check_required({path[0] for path in given})

    def _header(self) -> list[str]:
        """The header's column names, checked against the mapping and the version column."""
        with self._open() as text:
            try:
                header = next(csv.reader(text), None)
            except (csv.Error, UnicodeDecodeError) as exc:
                raise BackfillError(
                    f"cannot read the header of {self.spec.path.name}: {exc}"
                ) from None
        if not header:
            raise BackfillError(
                f"{self.spec.path.name} has no header: a CSV backfill starts with "
                "a row of column names"
            )
        names = [name.strip() for name in header]
        missing = [k for k in self.mapping if k not in names]
        if missing:
            raise BackfillError(
                f"the mapping names column(s) {', '.join(missing)} that the "
                f"header does not have; it has {', '.join(names)}"
            )
        column = self.spec.version_column
        if column and column not in names:
            raise BackfillError(
                f"--version-column {column}: the header has no such column; it "
                f"has {', '.join(names)}"
            )
        return names

    def _plan_column(self, index: int, name: str) -> tuple[int, FieldPath, Convert] | None:
        """The field column ``index`` gives, or None for a column that is ignored."""
        if name == self.spec.version_column:
            return index, (VERSION,), None
        if name in self.mapping:
            target = self.mapping[name]
            if target is None:
                return None
        elif not name:
            self.note(f"column {index + 1} has no name in the header: ignored")
            return None
        else:
            target = self._target(name, f"column {name!r}")
        path, convert = target
        return index, path, convert

    def _check_required(self, given: set[str]) -> None:
        """Every field a job needs has a column or a constant."""
        absent = [
            f"{n} ({f.alias})" if f.alias else n
            for n, f in self.model.model_fields.items()
            if f.is_required() and n not in given
        ]
        if absent:
            raise BackfillError(
                f"no column gives {', '.join(absent)}, which every {self.kind} "
                "job needs: add a column, map one with --mapping, or give a "
                "constant with --set FIELD=VALUE"
            )

    def _open(self) -> io.TextIOWrapper:
        # utf-8-sig: spreadsheets write a byte-order mark before the header.
        return io.TextIOWrapper(self.spec.path.open("rb"), encoding="utf-8-sig", newline="")

    # -- the rows -------------------------------------------------------------------------------
    def rows(self, text: io.TextIOWrapper, after: int) -> Iterator[Row]:
        """(row number, job or None, problems, version or None) for each row after row
        ``after``."""
        source = (
            self._csv_rows(text, after) if self.format == "csv" else self._jsonl_rows(text, after)
        )
        kind, column = self.kind, self.spec.version_column
        for number, data, problems in source:
            if data is None:
                yield number, None, problems, None
                continue
            version = data.pop(VERSION, None) if column else None
            if version in ("", None):
                version = None
            else:
                try:
                    version_key(version)
                except ValueError as exc:
                    yield number, None, [(f"{column} (version)", str(exc))], None
                    continue
            try:
                yield number, validate_job(kind, data), [], version
            except JobValidationError as exc:
                yield number, None, [(self._named(path), why) for path, why in exc.problems], None

    def _named(self, path: str) -> str:
        """A problem's field as ``--set`` and the mapping name it: pydantic names a missing
        field by its alias (njDisposition), a given one as it was given (disposition)."""
        head, dot, rest = path.partition(".")
        return f"{self.names.get(head, head)}{dot}{rest}"

    def _csv_rows(
        self, text: io.TextIOWrapper, after: int
    ) -> Iterator[tuple[int, dict[str, Any] | None, list[tuple[str, str]]]]:
        reader = csv.reader(text)
        next(reader, None)
        # The spreadsheet's row numbers: the header is row 1 (a quoted cell may span lines).
        number = 1
        width, columns = self.width, self.columns
        flat = {path[0]: value for path, value in self.constants if len(path) == 1}
        nested = [(path, value) for path, value in self.constants if len(path) > 1]
        try:
            for cells in reader:
                number += 1
                if number <= after or not cells:
                    continue
                if len(cells) > width:
                    yield (
                        number,
                        None,
                        [("(row)", f"{len(cells)} cells, but the header names {width} columns")],
                    )
                    continue
                if len(cells) < width:
                    cells += [""] * (width - len(cells))
                data = dict(flat)
                for path, value in nested:
                    _put(data, path, value)
                for index, path, convert in columns:
                    value = cells[index]
                    if value:
                        if convert is not None:
                            value = convert(value)
                        if len(path) == 1:
                            data[path[0]] = value
                        elif len(path) == 2:  # lead fields, contact.X: most nested columns
                            inner = data.get(path[0])
                            if inner is None:
                                inner = data[path[0]] = {}
                            inner[path[1]] = value
                        else:
                            _put(data, path, value)
                yield number, data, []
        except csv.Error as exc:
            raise BackfillError(
                f"{self.spec.path.name}, row {number + 1}: {exc}; fix the file and run it again"
            ) from None

    def _jsonl_rows(
        self, text: io.TextIOWrapper, after: int
    ) -> Iterator[tuple[int, dict[str, Any] | None, list[tuple[str, str]]]]:
        renames = [(key, target[0] if target else None) for key, target in self.mapping.items()]
        constants = self.constants
        for number, line in enumerate(text, start=1):
            if number <= after or not line.strip():
                continue
            try:
                data = json.loads(line)
            except json.JSONDecodeError as exc:
                yield number, None, [("(line)", f"not valid JSON: {exc.msg} (column {exc.colno})")]
                continue
            if not isinstance(data, dict):
                yield (
                    number,
                    None,
                    [
                        (
                            "(line)",
                            "not a JSON object: each line is one job's data, "
                            '{"field": value, ...}',
                        )
                    ],
                )
                continue
            column = self.spec.version_column
            if column and column in data:
                data[VERSION] = data.pop(column)
            for key, path in renames:
                if key in data:
                    value = data.pop(key)
                    if path is not None:
                        _put(data, path, value)
            for path, value in constants:
                _put(data, path, value)
            yield number, data, []

    # -- running --------------------------------------------------------------------------------
    def execute(self) -> BackfillResult:
        state, spec = self.state, self.spec
        self.report(state)

        def hashed(done: int) -> None:
            state.bytes_read = done
            self.report(state)

        constants = dict(spec.constants)
        if spec.version_column:  # which column is the version changes what is sent
            constants[" version column"] = spec.version_column
        run_id = run_id_of(spec.path, self.kind, spec.mapping, constants, self.format, hashed)
        state.run_id = run_id
        live = None if spec.dry_run else _Live(self, run_id)
        after, keep_bytes = live.begin() if live is not None else (0, 0)
        if spec.dry_run and spec.resume:
            self.note("--dry-run validates every row: --resume is ignored")
        if not self.rejects.start(keep_bytes):
            self.note(
                f"the rejects of rows up to {after} were in {self.rejects.path}, which is "
                "gone: it lists only the rows from here on"
            )
        state.rows_at_start, state.bytes_read = state.rows_read, 0
        state.phase, state.started = "reading", time.monotonic()
        with self._open() as text:
            try:
                self._stream(text, run_id, after, live)
            except BaseException:
                if live is not None:
                    live.stop()
                raise
        state.ended = time.monotonic()
        rejects = self.rejects.close()
        if live is not None:
            live.finish()
        state.phase, state.bytes_read = "done", state.bytes_total
        self.report(state)
        return BackfillResult(
            run_id=run_id,
            kind=self.kind,
            dry_run=spec.dry_run,
            rows_read=state.rows_read,
            enqueued=state.enqueued,
            already_queued=state.already_queued,
            rejected=state.rejected,
            skipped=state.skipped,
            resumed_after=after,
            rejects_path=rejects if state.rejected else None,
            seconds=state.ended - state.started,
            rows_per_s=state.rows_per_s,
            pauses=state.pauses,
            paused_s=state.paused_s,
            jobs=dict(state.jobs),
        )

    def _stream(self, text: io.TextIOWrapper, run_id: str, after: int, live: _Live | None) -> None:
        """Chunks of at most ``chunk_rows`` rows, and of at most as many jobs as the queue has
        room for, asked only once a chunk has a job to send (the end of the file never waits)."""
        state, chunk_rows = self.state, self.spec.chunk_rows
        jobs: list[JobModel] = []
        keys: list[str] = []
        versions: list[str | int | None] = []
        room = read = number = 0

        def flush(row: int) -> None:
            state.bytes_read = cast(io.BufferedReader, text.buffer).tell()
            if live is not None:
                live.send(jobs, keys, versions, row)
            self.report(state)
            jobs.clear()
            keys.clear()
            versions.clear()

        for number, job, problems, version in self.rows(text, after):
            state.rows_read += 1
            read += 1
            if job is None:
                state.rejected += 1
                self.rejects.add(number, problems)
            else:
                if not room:
                    room = live.room() if live is not None else chunk_rows
                jobs.append(job)
                keys.append(f"backfill:{run_id}:{number}")
                versions.append(version)
            if len(jobs) >= room > 0 or read >= chunk_rows:
                flush(number)
                room = read = 0
        if read:
            flush(number)


class Sent(NamedTuple):
    """A chunk handed to the sender thread, with the figures its checkpoint records."""

    jobs: list[JobModel]
    keys: list[str]
    versions: list[str | int | None]
    last: int
    rejects_bytes: int
    rows_read: int
    rejected: int


class _Live:
    """The Redis side of a run that sends: the checkpoint, the queue's depth, ``enqueue``."""

    def __init__(self, run: _Run, run_id: str) -> None:
        from producers.submit import enqueue
        from worker.app import app
        from worker.dispatch import queue_key
        from worker.runtime import ledger
        from worker.settings import get_settings

        settings = get_settings()
        self.run, self.run_id, self.enqueue = run, run_id, enqueue
        self.ledger = ledger()
        self.r = self.ledger.r
        self.key = checkpoint_key(settings.key_prefix, run_id)
        self.ttl_s = int(settings.retention_days * 86_400)
        cap = run.spec.max_queue_depth
        self.cap = settings.backfill.max_queue_depth if cap is None else cap
        run.state.queue_cap = self.cap
        destination = run.model.destination
        self.queues = [queue_key(app, destination, p) for p in ("realtime", "bulk")]
        self.counted_at = 0.0
        self.in_flight: tuple[Sent, Future[list[tuple[str, bool]]]] | None = None
        self.sender = ThreadPoolExecutor(max_workers=1, thread_name_prefix="backfill-send")

    def begin(self) -> tuple[int, int]:
        """From the checkpoint: the row to resume after (0: from the start) and the bytes of
        the rejects file that cover the rows up to it."""
        state, spec, note = self.run.state, self.run.spec, self.run.note
        found = cast(dict[str, str], self.r.hgetall(self.key))
        done = int(found.get("row", 0))
        if spec.resume and not found:
            note(
                "nothing to resume (no checkpoint of this file with this kind, mapping and "
                "--set values): starting from the first row"
            )
        elif spec.resume and done:
            for name in ("rows_read", "enqueued", "already_queued", "rejected"):
                setattr(state, name, int(found.get(name, 0)))
            state.skipped, state.last_row = state.rows_read, done
            note(f"resuming after row {done}: the rows up to it are not read again")
            self.r.hset(self.key, "state", "running")
            return done, int(found.get("rejects_bytes", 0))
        elif found and found.get("state") != "finished":
            note(
                f"an earlier run of this file stopped after row {done}: --resume skips to it. "
                "Running from the first row instead (rows already queued are not sent again)"
            )
        self.r.delete(self.key)
        self.r.hset(
            self.key,
            mapping={
                "file": str(spec.path.resolve()),
                "kind": self.run.kind,
                "state": "running",
                "started_at_ms": now_ms(),
            },
        )
        self.checkpoint(0)
        return 0, 0

    def room(self) -> int:
        """Rows the next chunk may hold: while the queue is at its cap, wait."""
        spec, state = self.run.spec, self.run.state
        if not self.cap:
            return spec.chunk_rows
        self.settle()  # the queue's depth must count the chunk in flight
        paused_at = None
        while (depth := self.depth()) >= self.cap:
            if paused_at is None:
                paused_at = time.monotonic()
                state.pauses += 1
            state.phase = "paused"
            self.count_jobs()
            self.run.report(state)
            time.sleep(POLL_S)
        if paused_at is not None:
            state.paused_s += time.monotonic() - paused_at
        state.phase = "reading"
        return min(spec.chunk_rows, self.cap - depth)

    def depth(self) -> int:
        """The destination queue's messages, or this run's jobs still on their way if more:
        jobs held behind earlier jobs of their record have no message yet, but hold memory."""
        pipe = self.r.pipeline(transaction=False)
        for key in self.queues:
            pipe.llen(key)
        pipe.hgetall(self.ledger.batch_key(self.run_id))
        *lengths, batch = pipe.execute()
        pending = int(batch.get("jobs", 0)) - sum(int(batch.get(s, 0)) for s in TERMINAL)
        depth = max(sum(int(n) for n in lengths), pending)
        self.run.state.queue_depth = depth
        return depth

    def send(
        self, jobs: list[JobModel], keys: list[str], versions: list[str | int | None], last: int
    ) -> None:
        """Queue a chunk from the sender thread, so Redis's share of the work overlaps the
        reading and validating of the next chunk; at most one chunk is in flight, and its
        checkpoint is written once it is queued."""
        state = self.run.state
        sent = Sent(
            list(jobs),
            list(keys),
            list(versions),
            last,
            self.run.rejects.flush(),
            state.rows_read,
            state.rejected,
        )
        self.settle()
        self.in_flight = (sent, self.sender.submit(self._enqueue, sent))

    def _enqueue(self, sent: Sent) -> list[tuple[str, bool]]:
        if not sent.jobs:
            return []
        versions = sent.versions if any(v is not None for v in sent.versions) else None
        return self.enqueue(
            sent.jobs,
            priority="bulk",
            idempotency_keys=sent.keys,
            client="backfill",
            batch=self.run_id,
            versions=versions,
        )

    def settle(self) -> None:
        """Wait for the chunk in flight (its error raises here), count it, checkpoint it."""
        if self.in_flight is None:
            return
        sent, future = self.in_flight
        self.in_flight = None
        made = future.result()
        state = self.run.state
        fresh = sum(created for _, created in made)
        state.enqueued += fresh
        state.already_queued += len(made) - fresh
        self.checkpoint(sent.last, sent.rejects_bytes, sent.rows_read, sent.rejected)
        state.last_row = sent.last
        self.count_jobs()

    def checkpoint(
        self, row: int, rejects_bytes: int = 0, rows_read: int = 0, rejected: int = 0
    ) -> None:
        """The last row fully submitted and the counters up to it, with the size of the rejects
        file covering it; the checkpoint and the run's batch counts expire with the ledger's
        records."""
        state = self.run.state
        pipe = self.r.pipeline(transaction=False)
        pipe.hset(
            self.key,
            mapping={
                "row": row,
                "rows_read": rows_read,
                "enqueued": state.enqueued,
                "already_queued": state.already_queued,
                "rejected": rejected,
                "rejects_bytes": rejects_bytes,
                "updated_at_ms": now_ms(),
            },
        )
        pipe.expire(self.key, self.ttl_s)
        pipe.expire(self.ledger.batch_key(self.run_id), self.ttl_s)
        pipe.execute()

    def count_jobs(self, now: bool = False) -> None:
        if now or time.monotonic() - self.counted_at >= COUNTS_EVERY_S:
            self.run.state.jobs = self.ledger.batch_counts(self.run_id)
            self.counted_at = time.monotonic()

    def stop(self) -> None:
        """The run is interrupted: the chunk in flight is queued anyway, so checkpoint it (a
        second error here would hide the first: the next run sends that chunk again instead,
        which its idempotency keys make harmless)."""
        with contextlib.suppress(Exception):
            self.settle()
        self.sender.shutdown(wait=False)

    def finish(self) -> None:
        self.settle()
        self.sender.shutdown()
        state = self.run.state
        self.r.hset(self.key, mapping={"state": "finished", "finished_at_ms": now_ms()})
        self.count_jobs(now=True)
        if self.run.spec.wait:
            state.phase = "waiting"
            while state.jobs.get("pending", 0) > 0:
                self.run.report(state)
                time.sleep(POLL_S)
                self.count_jobs(now=True)


def run(
    backfill: Backfill,
    progress: ProgressCallback | None = None,
    note: NoteCallback | None = None,
) -> BackfillResult:
    """Validate every row of ``backfill.path`` and (unless ``dry_run``) queue each valid one as
    a bulk job; rows that fail go to ``FILE.rejects.csv``.

    progress: called with the run's figures after each chunk, while paused and while waiting.
    note: called with what a person should know before the rows are read (an unfinished earlier
    run, a resume). Raises ``BackfillError`` before reading any row if the backfill cannot start.
    A dry run touches no Redis.

    While it runs, the process's thread switch interval is 0.2 ms (Python's default is 5 ms):
    the sender thread then takes the interpreter back as soon as Redis answers, instead of
    waiting for the reading thread to yield it (measured here: about a tenth more rows/s).
    """
    previous = sys.getswitchinterval()
    if not backfill.dry_run:
        sys.setswitchinterval(SWITCH_INTERVAL_S)
    try:
        return _Run(backfill, progress, note).execute()
    finally:
        sys.setswitchinterval(previous)


__all__ = [
    "CHUNK_ROWS",
    "Backfill",
    "BackfillError",
    "BackfillProgress",
    "BackfillResult",
    "checkpoint_key",
    "file_format",
    "load_mapping",
    "rejects_path",
    "resolve_kind",
    "run",
    "run_id_of",
]
