"""What payload encryption at rest costs (``worker/codec.py``, ``CONTACTSYNC_PAYLOAD_KEYS``):
submit and delivery throughput with it off and on, on the embedded Valkey.

1. **submit**: ``submit_many`` of ``SUBMIT_JOBS`` Noojee updates (the producer seals each
   payload).
2. **delivery**: the worker's own path for ``DELIVERY_JOBS`` queued jobs, one at a time as a
   worker thread takes them, without the HTTP call: claim, read the record, open and validate
   the payload, record the answer, settle it delivered. The call a real delivery makes (100 ms
   at a PBX) is left out, so the codec's share here is the largest it can be.
3. **codec**: microseconds to seal and to open one such payload.

Off and on alternate, ``RUNS`` times each, and each rate is the best of its runs (this
machine's speed varies by a third from run to run; every run is reported). Target: with
encryption on, each rate is at least 90 % of the rate with it off.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from bench.enqueue import sample, server

SUBMIT_JOBS = 20_000
DELIVERY_JOBS = 4_000
RUNS = 5
CODEC_ROUNDS = 20_000
TARGET = 0.90


def _use_key(key: str | None) -> None:
    """Point this process's codec at ``key`` (None: encryption off)."""
    from worker.cli.stack import refresh_settings

    if key is None:
        os.environ.pop("CONTACTSYNC_PAYLOAD_KEYS", None)
    else:
        os.environ["CONTACTSYNC_PAYLOAD_KEYS"] = json.dumps({"bench": key})
    refresh_settings()


def _deliver_all(ids: list[str]) -> None:
    """A worker's path for each job answered 0 at its first attempt (no HTTP)."""
    from tasks.models import model_for
    from worker.codec import unseal
    from worker.ledger import DELIVERED
    from worker.runtime import ledger

    book = ledger()
    for job_id in ids:
        book.claim(job_id, "bench", 60_000)
        record = book.get(job_id)
        assert record is not None
        model_for(record.kind).model_validate_json(unseal(record.payload))
        book.record_attempt(
            job_id, {"event": "attempt", "code": "0", "latency_ms": 120}, fault=False
        )
        book.transition(
            job_id,
            DELIVERED,
            {"event": "delivered", "code": "0", "reason": "delivered"},
            token="bench",
        )


def _codec_us(key: str) -> dict[str, float]:
    from worker.codec import PayloadCodec, decode_key

    codec = PayloadCodec({"bench": decode_key(key)})
    text = sample(0).model_dump_json()
    started = time.perf_counter()
    sealed = [codec.seal(text) for _ in range(CODEC_ROUNDS)]
    seal_us = (time.perf_counter() - started) / CODEC_ROUNDS * 1e6
    started = time.perf_counter()
    for item in sealed:
        codec.unseal(item)
    open_us = (time.perf_counter() - started) / CODEC_ROUNDS * 1e6
    return {
        "payload_bytes": len(text),
        "sealed_bytes": len(sealed[0]),
        "seal_us": round(seal_us, 1),
        "open_us": round(open_us, 1),
    }


def run() -> dict[str, Any]:
    from producers import submit_many
    from worker.codec import new_key
    from worker.runtime import ledger

    key = new_key()
    jobs = [sample(n) for n in range(SUBMIT_JOBS)]
    rates: dict[str, dict[str, list[float]]] = {
        "submit": {"off": [], "on": []},
        "delivery": {"off": [], "on": []},
    }
    with server():
        for _ in range(RUNS):
            for mode in ("off", "on"):
                _use_key(key if mode == "on" else None)
                client = ledger().r
                submit_many(jobs[:500])  # warm: scripts loaded, connections open
                client.execute_command("FLUSHALL", "SYNC")
                started = time.perf_counter()
                submit_many(jobs)
                rates["submit"][mode].append(SUBMIT_JOBS / (time.perf_counter() - started))
                client.execute_command("FLUSHALL", "SYNC")
                ids = submit_many(jobs[:DELIVERY_JOBS])
                client.delete("noojee:9")  # no worker consumes them: the path is run here
                started = time.perf_counter()
                _deliver_all(ids)
                rates["delivery"][mode].append(DELIVERY_JOBS / (time.perf_counter() - started))
                client.execute_command("FLUSHALL", "SYNC")
        _use_key(None)
    results: dict[str, Any] = {}
    for name, by_mode in rates.items():
        off, on = max(by_mode["off"]), max(by_mode["on"])
        results[name] = {
            "jobs_per_s_off": round(off),
            "jobs_per_s_on": round(on),
            "on_over_off": round(on / off, 3),
            "runs_off": [round(r) for r in by_mode["off"]],
            "runs_on": [round(r) for r in by_mode["on"]],
        }
    results["codec"] = _codec_us(key)
    results["met"] = all(results[n]["on_over_off"] >= TARGET for n in ("submit", "delivery"))
    return results


def table(results: dict[str, Any]) -> str:
    lines = [
        f"payload encryption: with it on, submit and delivery keep ≥ {TARGET:.0%} of their "
        f"rate → {'MET' if results['met'] else 'NOT MET'}"
    ]
    for name in ("submit", "delivery"):
        r = results[name]
        lines.append(
            f"   {name:10} off {r['jobs_per_s_off']:>7,} jobs/s   on "
            f"{r['jobs_per_s_on']:>7,} jobs/s   on/off {r['on_over_off']:.3f}"
        )
    c = results["codec"]
    lines.append(
        f"   one payload of {c['payload_bytes']} bytes ({c['sealed_bytes']} sealed): "
        f"seal {c['seal_us']} µs, open {c['open_us']} µs"
    )
    return "\n".join(lines)
