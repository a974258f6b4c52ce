"""The operator's console: server-rendered pages on the intake, under ``/console/``, to see why a
job needs a person and act on it: the overview (counts, gates, pauses), the review queue and
the other lists by state, a job's page (history, masked payload, reveal, edit and requeue,
discard, retry now), bulk actions and search; and ``/docs``, the API's reference.

Templates and assets ship in the package (``templates/``, ``static/``): no CDN, no build step.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from producers.console import handlers, queries
from producers.console.session import cookie_secret

HERE = Path(__file__).parent
TEMPLATES = HERE / "templates"
STATIC = HERE / "static"
LIST_NAMES = "|".join(queries.LISTS)


def routes(service: Any) -> list[tuple[Any, ...]]:
    """The console's URL rules for the intake's application (``service``: the intake's tokens,
    settings, body budget and Redis threads, shared with its API)."""
    common = {"service": service}
    job = r"/console/jobs/([0-9a-f]{32})"
    return [
        (r"/console/?", handlers.OverviewHandler, common),
        (r"/console/login", handlers.LoginHandler, common),
        (r"/console/logout", handlers.LogoutHandler, common),
        (rf"/console/({LIST_NAMES})", handlers.ListHandler, common),
        (r"/console/search", handlers.SearchHandler, common),
        (r"/console/bulk", handlers.BulkHandler, common),
        (job, handlers.JobHandler, common),
        (rf"{job}/(reveal|requeue|discard|retry-now)", handlers.JobActionHandler, common),
        (r"/docs", handlers.DocsHandler),
    ]


def app_settings(tokens: dict[str, str]) -> dict[str, Any]:
    """What the intake's tornado application needs for the console: templates, static files
    under ``/console/static/``, and the session cookies' signing key."""
    return {
        "template_path": str(TEMPLATES),
        "static_path": str(STATIC),
        "static_url_prefix": "/console/static/",
        "cookie_secret": cookie_secret(tokens),
        "compiled_template_cache": True,
    }


__all__ = ["app_settings", "routes"]
