"""Where a delivered job's Redis commands go (issue 16's "measure each step"): a fleet of the
gate benchmark's shape delivers ``JOBS`` jobs of distinct leads to a Noojee simulator that answers
at once, with ``MONITOR`` attached. Each command a Lua script runs is charged to that script
(scripts are atomic, so the commands after an ``EVALSHA`` up to the next client command are its
own); each client command to its own name. Prints commands per delivered job, by script and by
command inside each script.

``python -m bench commands`` (a minute). MONITOR slows the server: the counts are exact, the
times are not measured here (``python -m bench cost``).
"""

from __future__ import annotations

import hashlib
import threading
from collections import Counter, defaultdict
from importlib import resources
from typing import Any

import redis

from bench.gate import NO_GATE, fresh_stack

JOBS = 500
#: The simulator answers at once and never queues: the framework's own cost shows.
INSTANT = ["--slots", "64", "--latency", "0", "--jitter", "0"]
GATE_ON = {"CONTACTSYNC_NOOJEE__ADAPTIVE": "true", "CONTACTSYNC_NOOJEE__MAX_CONCURRENCY": "32"}


def script_names() -> dict[str, str]:
    """SHA1 -> script name, for every way ``worker/scripts.py`` may load ``worker/lua/*.lua``."""
    from worker import scripts

    folder = resources.files("worker").joinpath("lua")
    names = [p.name.removesuffix(".lua") for p in folder.iterdir() if p.name.endswith(".lua")]
    shas: dict[str, str] = {}
    for name in names:
        for lib in (None, "ledger_lib", "gate_lib"):
            text = scripts.source(name, lib)
            shas[hashlib.sha1(text.encode()).hexdigest()] = name
    return shas


class Recorder:
    """MONITOR in a thread: commands charged to (caller, command)."""

    def __init__(self, url: str) -> None:
        self.client = redis.Redis.from_url(url)
        self.shas = script_names()
        self.counts: dict[str, Counter[str]] = defaultdict(Counter)
        self.calls: Counter[str] = Counter()
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.current = "?"

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stopped.set()
        self.client.ping()  # one more line wakes the reader up
        self.thread.join(10)

    def _run(self) -> None:
        with self.client.monitor() as monitor:
            for item in monitor.listen():
                if self.stopped.is_set():
                    return
                self._take(item)

    def _take(self, item: dict[str, Any]) -> None:
        words = item["command"].split(" ")
        name = words[0].strip('"').lower()
        if name in ("monitor", "ping", "info", "config", "memory"):
            return
        if item.get("client_type") == "lua":
            self.counts[self.current][name] += 1
            return
        if name in ("evalsha", "eval"):
            sha = words[1].strip('"') if len(words) > 1 else "?"
            self.current = "lua:" + self.shas.get(sha, sha[:8])
            self.calls[self.current] += 1
        else:
            self.current = "client"
            self.counts["client"][name] += 1


def run(gate: bool = True, jobs: int = JOBS) -> dict[str, Any]:
    with fresh_stack("gate", 64, GATE_ON if gate else NO_GATE, INSTANT) as fleet:
        fleet.submit(50, tag="warm")
        fleet.wait_delivered(50)
        recorder = Recorder(fleet.env.get("CONTACTSYNC_REDIS_URL") or _url())
        recorder.start()
        fleet.submit(jobs, tag="measured")
        fleet.wait_delivered(50 + jobs)
        recorder.stop()
    per_job = {
        caller: {name: round(n / jobs, 2) for name, n in counter.most_common()}
        for caller, counter in recorder.counts.items()
    }
    totals = {caller: round(sum(c.values()) / jobs, 2) for caller, c in recorder.counts.items()}
    calls = {caller: round(n / jobs, 2) for caller, n in recorder.calls.items()}
    return {
        "jobs": jobs,
        "gate": gate,
        "total_per_job": round(sum(totals.values()) + sum(calls.values()), 1),
        "script_calls_per_job": calls,
        "commands_inside_per_job": totals,
        "by_command": per_job,
    }


def _url() -> str:
    from worker.broker import redis_url

    return redis_url()


def table(result: dict[str, Any]) -> str:
    lines = [
        f"{result['jobs']} jobs, gate {'on' if result['gate'] else 'off'}: "
        f"{result['total_per_job']} Redis commands per delivered job"
    ]
    for caller, inside in sorted(result["commands_inside_per_job"].items(), key=lambda x: -x[1]):
        called = result["script_calls_per_job"].get(caller)
        head = f"  {caller:<22} {inside:6.2f} inside"
        if called is not None:
            head += f", called {called:.2f}x"
        detail = ", ".join(f"{n} {c}" for n, c in list(result["by_command"][caller].items())[:12])
        lines.append(f"{head}: {detail}")
    return "\n".join(lines)
