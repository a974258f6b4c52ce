"""`make bench`: the ways in (enqueue rates, Redis memory per job, the intake, a million-row
dry-run backfill), the framework's own cost per job against plain Celery and Dramatiq, the
gate's scenarios A-J and L (plain Celery and the gate side by side), order per record
(coalescing, the hand-off), chaos (workers and the Redis server SIGKILLed), the reconciler's
rounds with 1,000,000 jobs queued, a Sentinel failover, the fairness of the other destinations
beside a Noojee backfill, the operator's console with 100,000 jobs in review, and what payload
encryption at rest costs.

``python -m bench`` runs them all; ``python -m bench enqueue`` the ways in alone; ``python -m
bench cost`` the cost per job of contactsync (gate on and off), plain Celery and Dramatiq
(``python -m bench cost contactsync [celery ...] [JOBS]``: those systems, with JOBS jobs instead
of 10,000; the targets then compare with plain Celery's figures of the last full run);
``python -m bench C D`` some gate scenarios (``python -m bench A L``: L's target compares with
A's figure); ``python -m bench order`` / ``chaos`` / ``durability`` / ``reconcile`` /
``failover`` / ``fairness`` / ``console`` / ``codec`` / ``commands`` (a delivered job's Redis
commands, by script) that benchmark. Results are printed and written under ``bench/results/``.
"""

from __future__ import annotations

import json
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import (
    chaos,
    codec,
    commands,
    console,
    cost,
    durability,
    enqueue,
    failover,
    fairness,
    gate,
    order,
    reconcile,
)

RESULTS = Path(__file__).parent / "results"

#: The figures shown for each scenario: (key in the results, label).
CPU = ("worker_cpu_ms_per_job", "worker CPU per delivered job (ms)")
# fmt: off
SHOWN: dict[str, list[tuple[str, str]]] = {
    "A": [("utilisation", "utilisation"),
          ("utilisation_from_first_submit", "utilisation from the first submit"),
          ("answers_109", "109 answers"),
          ("peak_our_in_flight", "peak of our calls in the PBX"),
          ("peak_queued_in_pbx", "peak of our calls queued in the PBX"),
          ("elapsed_s", "seconds for 2,000 jobs"), CPU],
    "B": [("utilisation", "utilisation"),
          ("utilisation_from_first_submit", "utilisation from the first submit"),
          ("answers_109", "109 answers"), ("calls", "calls"),
          ("queued_in_pbx_time_avg", "time-avg queue in the PBX"), CPU],
    "C": [("limit_settled_after_s", "limit within ±1 after (s)"), ("answers_109", "109 answers"),
          ("utilisation", "utilisation"), ("queued_in_pbx_time_avg", "time-avg queue in the PBX"),
          ("limit_by_second", "limit, second by second"), CPU],
    "D": [("our_max_in_flight_10_to_20_s", "our max in flight, 10-20 s"),
          ("our_max_in_flight_12_to_20_s", "our max in flight, 12-20 s"),
          ("our_back_to_6_after_s", "back to 6 in flight after (s)"),
          ("foreign_client_waited_s", "foreign client waited for its slots (s)"),
          ("queued_in_pbx_time_avg", "time-avg queue in the PBX"), ("answers_109", "109 answers"),
          ("limit_by_second", "limit, second by second"), CPU],
    "E": [("realtime_p50_s", "realtime p50 (s)"), ("realtime_p99_s", "realtime p99 (s)"),
          ("realtime_max_s", "realtime max (s)"),
          ("realtime_gate_wait_p50_max_s", "of which waiting for a permit, p50 max (s)"),
          ("realtime_call_p50_max_s", "of which the call, p50 max (s)"),
          ("realtime_delivered", "realtime delivered"),
          ("bulk_delivered_meanwhile", "bulk delivered meanwhile")],
    "F": [("permits_it_held", "permits the killed worker held"),
          ("leases_ended_after_s", "its leases' expiry, after the kill (s)"),
          ("permits_back_after_s", "its permits back after (s)"),
          ("delivered", "jobs delivered (of 600)"), ("leads_called_twice", "leads called twice"),
          ("elapsed_s", "seconds until all delivered")],
    "G": [("utilisation_by_phase", "utilisation by phase"), ("utilisation", "utilisation"),
          ("answers_109", "109 answers"), ("queued_in_pbx_time_avg", "time-avg queue in the PBX"),
          ("limit_by_second", "limit, second by second"), CPU],
    "H": [("utilisation", "utilisation"), ("answers_109", "109 answers"),
          ("queued_in_pbx_time_avg", "time-avg queue in the PBX"),
          ("peak_queued_in_pbx", "peak of our calls queued in the PBX"), ("calls", "calls"),
          ("limit_by_second", "limit, second by second"), CPU],
    "J": [("limit_settled_after_s", "limit at 2 ± 1 after (s)"), ("answers_109", "109 answers"),
          ("utilisation_15_to_25_s", "utilisation 15-25 s"), ("utilisation", "utilisation"),
          ("queued_in_pbx_time_avg", "time-avg queue in the PBX"),
          ("limit_by_second", "limit, second by second"), CPU],
    "L": [CPU, ("delivered", "jobs delivered in 60 s"), ("requeues", "requeues (approx.)"),
          ("log_lines", "log lines besides per-message ones"),
          ("log_lines_per_message", "Celery's per-message INFO lines"),
          ("warnings", "warning and traceback lines"), ("utilisation", "utilisation")],
}
# fmt: on


def show(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, dict):
        return "; ".join(f"{k}: {show(v)}" for k, v in value.items())
    if isinstance(value, list):
        return " ".join(str(v) for v in value)
    return str(value)


def table(results: dict[str, Any]) -> str:
    lines = [f"{'':3}{'figure':42}{'plain Celery':>16}  {'gate':>16}"]
    for key, entry in results.items():
        verdict = "MET" if entry["met"] else "NOT MET"
        lines += ["", f"{key}. {entry['title']}", f"   target: {entry['target']} → {verdict}"]
        lines += [
            f"   {mode} did not finish: {entry[mode]['error']}"
            for mode in ("celery", "gate")
            if "error" in entry[mode]
        ]
        for field, label in SHOWN[key]:
            celery, gated = show(entry["celery"].get(field)), show(entry["gate"].get(field))
            if len(celery) > 16 or len(gated) > 16:
                lines += [f"   {label}", f"      plain Celery: {celery}", f"      gate: {gated}"]
            else:
                lines.append(f"   {label:42}{celery:>16}  {gated:>16}")
    return "\n".join(lines)


def fairness_table(entry: dict[str, Any]) -> str:
    verdict = "MET" if entry["met"] else "NOT MET"
    lines = [
        "",
        f"Fairness. {entry['title']}",
        f"   setup: {entry['setup']}",
        f"   target: {entry['target']} → {verdict}",
        f"   {'destination':24}{'alone /s':>10}{'with /s':>10}{'ratio':>8}"
        f"{'p50 alone':>11}{'p50 with':>10}{'p99 alone':>11}{'p99 with':>10}",
    ]
    for priority, ratios in entry["rate_ratio"].items():
        for name, ratio in ratios.items():
            alone, with_ = entry["alone"][priority][name], entry["with_backfill"][priority][name]
            lines.append(
                f"   {name + ' (' + priority + ')':24}{alone['rate_per_s']:>10}"
                f"{with_['rate_per_s']:>10}{show(ratio):>8}"
                f"{show(alone['latency_p50_s']):>11}{show(with_['latency_p50_s']):>10}"
                f"{show(alone['latency_p99_s']):>11}{show(with_['latency_p99_s']):>10}"
            )
    lines.append(
        f"   Noojee meanwhile: {entry['noojee_calls_per_s_during_stream']} calls/s; gate "
        f"at the stream's start {show(entry['noojee_gate_at_start_of_stream'])}, at its "
        f"end {show(entry['noojee_gate_at_end_of_stream'])}"
    )
    return "\n".join(lines)


ENQUEUE_TARGETS = {
    "enqueue": "submit_many and backfill >= 20,000 jobs/s and >= 10 x a loop of apply_async",
    "memory": "<= 256 bytes per delivered job",
    "intake": "batches of 100 >= 5,000 jobs/s; single jobs >= 500 req/s with p99 <= 25 ms",
    "backfill_dry_run": "1,000,000 rows in <= 200 MB",
}


def enqueue_table(results: dict[str, Any]) -> str:
    lines = []
    for key, target in ENQUEUE_TARGETS.items():
        entry = results[key]
        lines += ["", f"{key}: target {target} → {'MET' if entry['met'] else 'NOT MET'}"]
        lines += [
            f"   {name:40}{show(value):>16}" for name, value in entry.items() if name != "met"
        ]
    return "\n".join(lines)


def order_table(results: dict[str, Any]) -> str:
    lines = []
    for key, target in ORDER_TARGETS.items():
        entry = results[key]
        lines += ["", f"{key}: {target} → {'MET' if entry['met'] else 'NOT MET'}"]
        lines += [
            f"   {name:40}{show(value):>16}" for name, value in entry.items() if name != "met"
        ]
    return "\n".join(lines)


def chaos_table(results: dict[str, Any]) -> str:
    columns = [
        "worker_kills",
        "redis_kills",
        "delivered_at_simulator",
        "duplicates",
        "duplicates_explained_by_a_kill",
        "lost",
        "stuck_after_bound",
        "seconds",
        "jobs_per_s",
    ]
    verdict = "MET" if results["met"] else "NOT MET"
    lines = [
        "",
        f"chaos: 0 lost and 0 stuck in {chaos.RUNS} runs; throughput with kills >= "
        f"{chaos.TARGET_THROUGHPUT:.0%} of without → {verdict}",
        "   " + "  ".join(f"{c.replace('_', ' ')}" for c in ["run", *columns]),
    ]
    rows = [("without kills", results["without_kills"])]
    rows += [(f"run {n}", r) for n, r in enumerate(results["with_kills"], start=1)]
    for label, r in rows:
        lines.append(f"   {label:14}" + "  ".join(f"{show(r[c]):>{len(c)}}" for c in columns))
    lines.append(f"   worst throughput with kills / without: {results['worst_throughput_ratio']}")
    return "\n".join(lines)


ORDER_TARGETS = {
    "coalescing": f"{order.LEADS} leads x {order.UPDATES} updates as one backfill into a 4-slot "
    f"PBX: at most {order.MAX_CALLS_PER_LEAD} calls per lead, every lead newest",
    "hand_off": "settle of one job to the call of the next job of its lead (coalescing off); "
    "figures only",
    "unique": "scenario A (unique leads): utilisation and worker CPU per job, to compare with "
    "the run before order per record",
}


def _write(name: str, report: dict[str, Any]) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / name
    path.write_text(json.dumps(report, indent=2) + "\n")
    return path


def _run(
    name: str,
    benchmark: str,
    machine: dict[str, Any],
    work: Callable[[], dict[str, Any]],
    render: Callable[[dict[str, Any]], str],
    nest: str = "",
) -> dict[str, Any]:
    """Run one benchmark, write its results (under ``nest`` if given) to ``results/NAME``
    with when and where it ran, print them with ``render``; returns the results."""
    started = time.time()
    results = work()
    path = _write(
        name,
        {
            "benchmark": benchmark,
            "machine": machine,
            "ran_at": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)),
            "duration_s": round(time.time() - started),
            **({nest: results} if nest else results),
        },
    )
    print(render(results))
    print(f"\nwritten to {path}")
    return results


def main(argv: list[str]) -> int:
    """``python -m bench``: everything; ``python -m bench A C``: those gate scenarios;
    ``python -m bench enqueue`` / ``fairness``: that benchmark alone; ``python -m bench cost
    [SYSTEM ...] [JOBS]``: the cost per job (all four systems, or those named)."""
    wanted = [a.upper() for a in argv if not a.isdigit()]
    named = {
        "FAIRNESS",
        "ENQUEUE",
        "ORDER",
        "CHAOS",
        "DURABILITY",
        "RECONCILE",
        "FAILOVER",
        "CONSOLE",
        "CODEC",
        "COST",
        "COMMANDS",
    }
    systems = [a.lower() for a in wanted if a.lower() in cost.LABELS]
    wanted = [a for a in wanted if a.lower() not in cost.LABELS] + (["COST"] if systems else [])
    unknown = [a for a in wanted if a not in {*SHOWN, *named}]
    if unknown:
        print(__doc__)
        return 0 if {"-H", "--HELP"} & set(unknown) else 2
    fairness_wanted = not wanted or "FAIRNESS" in wanted
    enqueue_wanted = not wanted or "ENQUEUE" in wanted
    order_wanted = not wanted or "ORDER" in wanted
    chaos_wanted = not wanted or "CHAOS" in wanted
    durability_wanted = not wanted or "DURABILITY" in wanted
    reconcile_wanted = not wanted or "RECONCILE" in wanted
    failover_wanted = not wanted or "FAILOVER" in wanted
    console_wanted = not wanted or "CONSOLE" in wanted
    codec_wanted = not wanted or "CODEC" in wanted
    cost_wanted = not wanted or "COST" in wanted
    commands_wanted = not wanted or "COMMANDS" in wanted
    cost_jobs = next((int(a) for a in argv if a.isdigit()), cost.JOBS)
    keys = [k for k in wanted if k not in named] or (None if not wanted else [])
    machine = {"cpus": __import__("os").cpu_count(), "python": platform.python_version()}
    met = True
    if enqueue_wanted:
        print(
            "ways-in benchmark: enqueue rates, Redis memory per job, the intake, a "
            f"{enqueue.DRY_ROWS:,}-row dry-run backfill",
            flush=True,
        )
        ways_in = _run("enqueue.json", "ways in", machine, enqueue.run, enqueue_table)
        met = met and ways_in["met"]
    if codec_wanted:
        print(
            f"\ncodec benchmark: payload encryption off and on, {codec.RUNS} runs each", flush=True
        )
        entry = _run("codec.json", "payload encryption", machine, codec.run, codec.table)
        met = met and entry["met"]
    if cost_wanted:
        print(
            f"\ncost benchmark: {cost_jobs:,} jobs each, {gate.WORKERS} worker processes x "
            f"{gate.THREADS} threads, a simulator that answers at once",
            flush=True,
        )
        whole = not systems and cost_jobs == cost.JOBS
        entry = _run(
            "cost.json" if whole else f"cost-{'-'.join(systems or ['all'])}.json",
            "framework cost per job",
            machine,
            lambda: cost.run(systems or None, cost_jobs),
            cost.table,
        )
        met = met and entry["met"]
    if commands_wanted:
        print(
            f"\ncommands benchmark: where a delivered job's Redis commands go, by script, "
            f"{commands.JOBS} jobs with MONITOR attached",
            flush=True,
        )
        entry = _run("commands.json", "commands per job", machine, commands.run, commands.table)
    if keys != []:
        print(
            f"gate benchmark: {gate.WORKERS} workers x {gate.THREADS} threads, simulator "
            f"{gate.SERVICE_S * 1000:.0f} ms ± 20 ms (unless the scenario changes it), 109 after "
            "2 s queued",
            flush=True,
        )
        results = _run(
            "gate.json" if keys is None else f"gate-{''.join(keys)}.json",
            "noojee gate vs plain celery",
            machine,
            lambda: gate.run(keys),
            table,
            nest="scenarios",
        )
        met = met and all(entry["met"] for entry in results.values())
    if order_wanted:
        print(
            "\norder benchmark: coalescing a backfill's updates of the same leads, and the "
            "hand-off between two jobs of one lead",
            flush=True,
        )
        entry = _run("order.json", "order per record", machine, order.run, order_table)
        met = met and entry["met"]
    if durability_wanted:
        print(
            "\ndurability benchmark: the embedded server's appendfsync always against everysec",
            flush=True,
        )
        entry = _run(
            "durability.json",
            "durability",
            machine,
            durability.run,
            lambda r: "\n".join(f"   {k:30}{show(v):>40}" for k, v in r.items()),
        )
        met = met and entry["met"]
    if reconcile_wanted:
        print(
            f"\nreconcile benchmark: the rounds that keep 'queued' a promise, with "
            f"{reconcile.BACKLOG:,} jobs queued",
            flush=True,
        )
        entry = _run("reconcile.json", "reconcile", machine, reconcile.run, reconcile.table)
        met = met and entry["met"]
    if failover_wanted:
        print("\nfailover benchmark: the Sentinel primary SIGKILLed while jobs deliver", flush=True)
        entry = _run("failover.json", "failover", machine, failover.run, failover.table)
        met = met and entry["met"]
    if chaos_wanted:
        print(
            f"\nchaos benchmark: {chaos.JOBS:,} jobs while workers and the Redis server are "
            f"SIGKILLed, {chaos.RUNS} runs and one without kills",
            flush=True,
        )
        entry = _run("chaos.json", "chaos", machine, chaos.run, chaos_table)
        met = met and entry["met"]
    if console_wanted:
        print(
            f"\nconsole benchmark: the review list with {console.JOBS:,} jobs in review", flush=True
        )
        entry = _run("console.json", "console", machine, console.run, console.table)
        met = met and entry["met"]
    if fairness_wanted:
        print(
            "\nfairness benchmark: the other destinations, alone and beside a Noojee backfill",
            flush=True,
        )
        entry = _run("fairness.json", "fairness", machine, fairness.run, fairness_table)
        met = met and entry["met"]
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
