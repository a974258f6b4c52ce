"""The one HTTP call the plain Celery task and the plain Dramatiq actor of the cost benchmark
(``bench/cost.py``) make: what contactsync's ``NoojeeClient`` sends for a ``NoojeeLeadUpdate``
(POST updateLeadFast, the same query parameters plus the apiKey, the lead as the JSON body, the
same Accept header), through one pooled ``httpx.Client`` per process, so the three systems do
the same work per job and only the framework around the call differs.

The simulator's URL and apiKey come from ``BENCH_NOOJEE_URL`` and ``BENCH_NOOJEE_API_KEY``,
which the benchmark sets for the worker processes it starts.
"""

from __future__ import annotations

import os
import threading
from typing import Any

import httpx

#: ``tasks.noojee.UPDATE_PATH`` (checked equal by the benchmark): importing ``tasks`` here would
#: load contactsync's Celery app, and its worker signals, into the plain workers.
UPDATE_PATH = "/servicemanager/rest/CampaignAPI/updateLeadFast"
URL_VARIABLE = "BENCH_NOOJEE_URL"
API_KEY_VARIABLE = "BENCH_NOOJEE_API_KEY"
#: As ``NoojeeClient``'s: a pool as large as a worker process could ever use.
MAX_CONNECTIONS = 64

_client: httpx.Client | None = None
_client_lock = threading.Lock()


def client() -> httpx.Client:
    """This process's pooled client, made on first use (after a fork: never shared with the
    parent's connections)."""
    global _client
    with _client_lock:
        if _client is None:
            _client = httpx.Client(
                base_url=os.environ[URL_VARIABLE].rstrip("/"),
                timeout=httpx.Timeout(75.0, connect=5.0),
                headers={"Accept": "application/json"},
                limits=httpx.Limits(max_connections=MAX_CONNECTIONS),
            )
        return _client


def update_lead(params: dict[str, Any], body: dict[str, Any]) -> int:
    """POST updateLeadFast with ``params`` (from ``NoojeeLeadUpdate.request()``) and the apiKey;
    returns Noojee's code, raising unless it is 0 (a plain task's idea of failure)."""
    response = client().post(
        UPDATE_PATH, params={**params, "apiKey": os.environ[API_KEY_VARIABLE]}, json=body
    )
    code = response.json().get("code")
    if code != 0:
        raise RuntimeError(f"updateLeadFast answered HTTP {response.status_code}, code {code}")
    return int(code)
