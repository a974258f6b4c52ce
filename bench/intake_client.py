"""The intake benchmark's clients, in a process of their own (``bench/enqueue.py`` runs it):
batches of jobs, then single jobs from several keep-alive connections; prints JSON figures."""

from __future__ import annotations

import json
import sys
import threading
import time

import httpx


def job(n: int) -> dict[str, object]:
    return {
        "kind": "noojee.update",
        "job": {
            "template_id": 41,
            "campaign_id": 41,
            "allocation_id": 38,
            "external_lead_id": f"I-{n:09d}",
            "disposition": "Callback",
            "priority": 10,
            "callback_date": "2026/12/01 09:30",
            "fields": {
                "FirstPhone": "03 9123 4567",
                "Name": "Jane Smith",
                "Email": "jane.smith@example.com",
            },
        },
    }


def in_threads(count: int, work: object) -> float:
    threads = [threading.Thread(target=work, args=(i,)) for i in range(count)]  # type: ignore[arg-type]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - started


def main(url: str, token: str, batches: int, size: int, singles: int, connections: int) -> None:
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    bodies = [
        json.dumps({"jobs": [job(b * size + i) for i in range(size)]}).encode()
        for b in range(batches)
    ]
    base = batches * size
    single_bodies = [json.dumps(job(base + n)).encode() for n in range(singles)]
    failures: list[int] = []
    latencies: list[float] = []

    def post_batches(worker: int) -> None:
        with httpx.Client(base_url=url, headers=headers, timeout=30) as client:
            for body in bodies[worker::2]:
                answer = client.post("/v1/jobs", content=body)
                if answer.status_code != 202:
                    failures.append(answer.status_code)

    def post_singles(worker: int) -> None:
        mine: list[float] = []
        with httpx.Client(base_url=url, headers=headers, timeout=30) as client:
            for body in single_bodies[worker::connections]:
                started = time.perf_counter()
                answer = client.post("/v1/jobs", content=body)
                mine.append(time.perf_counter() - started)
                if answer.status_code != 202:
                    failures.append(answer.status_code)
        latencies.extend(mine)

    batch_s = in_threads(2, post_batches)
    single_s = in_threads(connections, post_singles)
    latencies.sort()
    print(
        json.dumps(
            {
                "batches": batches,
                "batch_size": size,
                "batch_jobs_per_s": round(batches * size / batch_s),
                "single_requests": singles,
                "connections": connections,
                "single_requests_per_s": round(singles / single_s),
                "single_p50_ms": round(latencies[len(latencies) // 2] * 1000, 2),
                "single_p99_ms": round(latencies[int(len(latencies) * 0.99)] * 1000, 2),
                "failed_requests": len(failures),
            }
        )
    )


if __name__ == "__main__":
    url, token, *numbers = sys.argv[1:]
    main(url, token, *(int(n) for n in numbers))
