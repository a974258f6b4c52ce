"""Log lines as text or as JSON (``CONTACTSYNC_LOG_FORMAT=json``): one object per line, for the
worker (Celery's logger setup signals, ``worker/app.py``) and the intake.

A JSON line carries the time, level, logger and message, and the fields a log call attaches
with ``extra=`` (``job_id``, ``destination``, ``outcome``, ``code``, ``latency_ms``): a log
collector can count outcomes and latencies per destination without parsing sentences.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime

#: The ``extra=`` fields a JSON line carries when a log call gives them.
JOB_FIELDS = (
    "job_id",
    "destination",
    "kind",
    "outcome",
    "code",
    "latency_ms",
    "gate_wait_ms",
    "attempts",
    "client",
    "by",
    "path",
    "status",
)
TEXT_FORMAT = "[%(asctime)s: %(levelname)s/%(processName)s] %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ``ts`` (UTC, ISO 8601), ``level``, ``logger``, ``message``,
    the ``JOB_FIELDS`` given with ``extra=``, Celery's task id and name where its task logger
    set them, and ``exc_type`` + ``traceback`` for an exception (on one line, escaped)."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in (*JOB_FIELDS, "task_id", "task_name"):
            value = record.__dict__.get(name)
            if value not in (None, "", "???"):
                line[name] = value
        if record.exc_info and record.exc_info[0] is not None:
            line["exc_type"] = record.exc_info[0].__name__
            line["traceback"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str, ensure_ascii=False)


def formatter(log_format: str) -> logging.Formatter:
    """The formatter of ``CONTACTSYNC_LOG_FORMAT``: ``json`` or ``text``."""
    return JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)


def use_format(logger: logging.Logger, log_format: str) -> None:
    """Give every handler of ``logger`` the formatter of ``log_format`` (Celery has just set up
    its own; text keeps Celery's)."""
    if log_format != "json":
        return
    for handler in logger.handlers:
        handler.setFormatter(JsonFormatter())


def configure(log_format: str, level: int = logging.INFO) -> None:
    """Log to stderr at ``level`` in ``log_format``, for a process Celery does not set up (the
    intake)."""
    handler = logging.StreamHandler()
    handler.setFormatter(formatter(log_format))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
