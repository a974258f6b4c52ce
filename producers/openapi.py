"""The intake's OpenAPI 3.1 document, built from the job models themselves, so the schema a
client reads is the one each job is validated against."""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model
from pydantic.json_schema import models_json_schema

from tasks.models import kinds
from worker.ledger import STATES

REF = "#/components/schemas/{model}"


def _entry_models() -> list[type[BaseModel]]:
    """One request model per job kind: ``{"kind": KIND, "job": {...}, ...}``."""
    from producers.intake import IDEMPOTENCY_KEY

    models: list[type[BaseModel]] = []
    priority: Any = Literal["realtime", "bulk"] | None
    for kind, model in sorted(kinds().items()):
        tag: Any = Literal[kind]
        name = "".join(part.title().replace("_", "") for part in kind.split("."))
        models.append(
            create_model(
                f"{name}Request",
                __config__=ConfigDict(extra="forbid"),
                __doc__=f"One {kind} job.",
                kind=(tag, ...),
                job=(model, ...),
                idempotency_key=(
                    str | None,
                    Field(
                        None,
                        pattern=IDEMPOTENCY_KEY,
                        description=(
                            "the same key from the same client returns the first job's id and "
                            "queues nothing; overrides the Idempotency-Key header"
                        ),
                    ),
                ),
                priority=(
                    priority,
                    Field(None, description=("realtime (default) is always delivered before bulk")),
                ),
                version=(
                    int | str | None,
                    Field(
                        None,
                        description=(
                            "your own version of this data: an integer from 0 to 10^19-1, or an "
                            "RFC 3339 timestamp with its offset (2026-11-30T09:30:00Z); a job "
                            "older than one already delivered for the same record is not sent "
                            "and ends superseded. Without versions, submission order decides"
                        ),
                    ),
                ),
            )
        )
    return models


def _error(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


def _ok(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


JOB_ID = {"type": "string", "pattern": "^[0-9a-f]{32}$"}
UNAUTHORIZED = _error("no valid bearer token")
FORBIDDEN = _error("the client is not an operator")
#: What every review action may answer besides its own outcomes.
UNSUPPORTED = _error("the body is not declared as JSON (Content-Type: application/json)")
UNAVAILABLE = _error(
    "Redis unavailable or too slow to answer (the intake waits at most "
    "CONTACTSYNC_INTAKE__REDIS_DEADLINE_S), or the intake holds as many "
    "request bodies as it may (Retry-After); send again"
)
REVIEW_ACTION = {
    "400": _error("the body is not JSON"),
    "401": UNAUTHORIZED,
    "403": FORBIDDEN,
    "404": _error("no such job"),
    "413": _error("the body is larger than 64 KiB"),
    "415": UNSUPPORTED,
    "503": UNAVAILABLE,
}


@lru_cache(maxsize=1)
def document() -> dict[str, Any]:
    """The OpenAPI document served at ``/openapi.json``."""
    from producers.intake import MAX_BATCH, MAX_PAGE

    entries = _entry_models()
    _, defs = models_json_schema([(m, "validation") for m in entries], ref_template=REF)
    schemas: dict[str, Any] = dict(defs.get("$defs", {}))
    one_job = {
        "oneOf": [{"$ref": REF.format(model=m.__name__)} for m in entries],
        "discriminator": {"propertyName": "kind"},
    }
    schemas["JobRequest"] = one_job
    schemas["BatchRequest"] = {
        "type": "object",
        "additionalProperties": False,
        "required": ["jobs"],
        "properties": {
            "jobs": {
                "type": "array",
                "minItems": 1,
                "maxItems": MAX_BATCH,
                "items": {"$ref": REF.format(model="JobRequest")},
            },
            "priority": {
                "enum": ["realtime", "bulk"],
                "description": "of every job that does not say its own",
            },
        },
    }
    schemas["Error"] = {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {"type": "string"},
            "errors": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["path", "reason"],
                    "properties": {
                        "path": {
                            "type": "string",
                            "description": "JSON path, e.g. $.jobs[3].job.njCallBackDate",
                        },
                        "reason": {"type": "string"},
                    },
                },
            },
        },
    }
    schemas["Job"] = {
        "type": "object",
        "required": ["id", "kind", "state", "attempts"],
        "properties": {
            "id": JOB_ID,
            "kind": {"type": "string"},
            "destination": {"type": "string"},
            "state": {"enum": list(STATES)},
            "entity": {
                "type": ["string", "null"],
                "description": "the destination record "
                "the job writes; jobs of one record are delivered one at a time, in "
                "submission order",
            },
            "version": {"type": ["string", "null"]},
            "merged_into": {
                "type": ["object", "null"],
                "description": "the job whose call carries this one's changes (job_id, state)",
            },
            "superseded_by": {
                "type": ["string", "null"],
                "description": "the job that delivered a newer version of the same record",
            },
            "waits_behind": {
                "type": ["object", "null"],
                "description": "held: how many jobs of the same record go first (jobs, head)",
            },
            "newer_delivered": {
                "type": ["object", "null"],
                "description": "in review or "
                "rejected: a job of the same record submitted after this one "
                "was delivered (job_id, at); requeueing needs force",
            },
            "priority": {"type": ["string", "null"]},
            "client": {"type": ["string", "null"]},
            "attempts": {"type": "integer"},
            "submitted_at": {"type": ["string", "null"]},
            "updated_at": {"type": ["string", "null"]},
            "next_attempt_at": {"type": ["string", "null"]},
            "last_answer": {"type": ["object", "null"]},
            "payload": {
                "type": ["object", "null"],
                "description": "personal data masked; dropped once delivered",
            },
            "history": {"type": "array", "items": {"type": "object"}},
        },
    }
    idempotency_header = {
        "name": "Idempotency-Key",
        "in": "header",
        "required": False,
        "schema": {"type": "string", "pattern": "^[\\x21-\\x7e]{1,128}$"},
        "description": "sending the same request again with the same key returns the same job "
        "ids and queues nothing (a batch's jobs get KEY:0, KEY:1, ...)",
    }
    job_path_id = {"name": "job_id", "in": "path", "required": True, "schema": JOB_ID}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "contactsync intake",
            "version": "1",
            "description": "Submit contact updates for delivery to Noojee, Mission Capital, "
            "Trendsic and Expandable; read their state; resolve the jobs in review. A request "
            "is validated whole: one invalid job refuses its batch, and nothing is queued.",
        },
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
        "paths": {
            "/v1/jobs": {
                "post": {
                    "summary": "Submit one job or a batch",
                    "parameters": [idempotency_header],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {
                                    "oneOf": [
                                        {"$ref": REF.format(model="JobRequest")},
                                        {"$ref": REF.format(model="BatchRequest")},
                                    ]
                                }
                            }
                        },
                    },
                    "responses": {
                        "202": _ok(
                            "queued",
                            {
                                "type": "object",
                                "properties": {
                                    "job_id": JOB_ID,
                                    "job_ids": {"type": "array", "items": JOB_ID},
                                },
                            },
                        ),
                        "400": _error("the body is not JSON"),
                        "401": UNAUTHORIZED,
                        "413": _error(
                            "the body is larger than the intake accepts "
                            "(CONTACTSYNC_INTAKE__MAX_BODY_BYTES)"
                        ),
                        "415": UNSUPPORTED,
                        "422": _error(
                            "invalid: every bad field's JSON path and reason; nothing was queued"
                        ),
                        "503": _error(
                            "Redis unavailable or too slow to answer, or the intake "
                            "holds as many request bodies as it may (Retry-After); send "
                            "again with the same Idempotency-Key"
                        ),
                    },
                }
            },
            "/v1/jobs/{job_id}": {
                "get": {
                    "summary": "A job's state, attempts, last answer and masked payload",
                    "parameters": [job_path_id],
                    "responses": {
                        "200": _ok("the job", {"$ref": REF.format(model="Job")}),
                        "401": UNAUTHORIZED,
                        "404": _error("no such job, or not this client's"),
                        "503": UNAVAILABLE,
                    },
                }
            },
            "/v1/review": {
                "get": {
                    "summary": "Jobs waiting for a person, oldest first (operators)",
                    "parameters": [
                        {
                            "name": "offset",
                            "in": "query",
                            "required": False,
                            "schema": {"type": "integer", "minimum": 0, "maximum": 10**9},
                        },
                        {
                            "name": "limit",
                            "in": "query",
                            "required": False,
                            "schema": {"type": "integer", "minimum": 1, "maximum": MAX_PAGE},
                        },
                    ],
                    "responses": {
                        "200": _ok(
                            "a page",
                            {
                                "type": "object",
                                "properties": {
                                    "total": {"type": "integer"},
                                    "offset": {"type": "integer"},
                                    "jobs": {"type": "array", "items": {"type": "object"}},
                                },
                            },
                        ),
                        "401": UNAUTHORIZED,
                        "403": FORBIDDEN,
                        "422": _error("bad offset or limit"),
                        "503": UNAVAILABLE,
                    },
                }
            },
            "/v1/review/{job_id}/requeue": {
                "post": {
                    "summary": "Send a job in review (or rejected) again, optionally edited",
                    "parameters": [job_path_id],
                    "requestBody": {
                        "required": False,
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "additionalProperties": False,
                                    "properties": {
                                        "changes": {
                                            "type": "object",
                                            "additionalProperties": {"type": "string"},
                                            "description": (
                                                "a job field or a lead field → new value"
                                            ),
                                        },
                                        "force": {
                                            "type": "boolean",
                                            "description": "send it even though a "
                                            "newer job of the same record was delivered since (it "
                                            "overwrites that newer data)",
                                        },
                                    },
                                }
                            }
                        },
                    },
                    "responses": {
                        "202": _ok(
                            "queued again (state queued, or held behind earlier "
                            "jobs of the same record)",
                            {"type": "object"},
                        ),
                        **REVIEW_ACTION,
                        "409": _error(
                            "the job is not in review or rejected, or a newer "
                            "job of the same record was delivered since (the "
                            "error names it; send force to override)"
                        ),
                        "422": _error("the edited job is invalid; nothing changed"),
                    },
                }
            },
            "/v1/review/{job_id}/discard": {
                "post": {
                    "summary": "Give up on a job in review: it ends rejected, with the reason",
                    "parameters": [job_path_id],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "additionalProperties": False,
                                    "required": ["reason"],
                                    "properties": {
                                        "reason": {
                                            "type": "string",
                                            "minLength": 1,
                                            "maxLength": 1000,
                                            "pattern": "\\S",
                                        }
                                    },
                                }
                            }
                        },
                    },
                    "responses": {
                        "200": _ok("discarded", {"type": "object"}),
                        **REVIEW_ACTION,
                        "409": _error("the job is not in review"),
                        "422": _error("no reason given"),
                    },
                }
            },
            "/healthz": {
                "get": {
                    "summary": "Whether the intake can reach Redis",
                    "security": [],
                    "responses": {
                        "200": _ok("ready", {"type": "object"}),
                        "503": _ok(
                            "Redis unreachable, or no answer within 0.8 s", {"type": "object"}
                        ),
                    },
                }
            },
            "/openapi.json": {
                "get": {
                    "summary": "This document",
                    "security": [],
                    "responses": {"200": _ok("the OpenAPI document", {"type": "object"})},
                }
            },
        },
    }


__all__ = ["document"]
