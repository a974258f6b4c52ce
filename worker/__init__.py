"""contactsync's runtime: the Celery app, settings, ledger, embedded server and the CLI.

``celery -A worker ...`` finds ``app`` here. It is built on first access, so importing the CLI
(or any other module of this package) neither builds the app nor reads the settings.
"""

from typing import Any


def __getattr__(name: str) -> Any:
    if name == "app":
        from worker.app import app

        return app
    raise AttributeError(f"module 'worker' has no attribute {name!r}")


__all__ = ["app"]
