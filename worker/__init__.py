"""contactsync's runtime: the Celery app, settings, ledger, embedded server and the CLI.

``celery -A worker ...`` finds ``app`` here.
"""

from worker.app import app

__all__ = ["app"]
