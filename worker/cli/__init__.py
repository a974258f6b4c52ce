"""The `contactsync` command: run the system, submit jobs, read the ledger, resolve reviews.

The front door: it may import anything, lazily, so `celery -A worker` stays light; nothing in
the runtime imports it. One module per part of the command (``common`` holds the group they
all add to); `up` and `demo` run the system through ``stack`` and ``demo`` beside them.
"""

from worker.cli import backfills, gates, jobs, running, submitting
from worker.cli.common import main

__all__ = ["backfills", "gates", "jobs", "main", "running", "submitting"]
