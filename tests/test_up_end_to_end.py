"""`contactsync up` as a user runs it: everything starts from the embedded default, plain Celery
commands find it with the settings alone, and Ctrl-C stops all of it."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
import redis

from tests.conftest import run_cli, wait_for
from worker.settings import mask_url_password

pytestmark = pytest.mark.integration


def _env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CONTACTSYNC_", "FLOWER_"))}
    env.update(
        {
            "CONTACTSYNC_FLOWER__PORT": "0",
            "CONTACTSYNC_FLOWER__PASSWORD": "pw-e2e",
            "CONTACTSYNC_INTAKE__PORT": "0",
            "PYTHONUNBUFFERED": "1",
            "COLUMNS": "200",
        }
    )
    return env


def _as_a_background_script_starts_it() -> None:
    # A non-interactive shell starts background jobs with SIGINT ignored.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def test_up_runs_everything_and_ctrl_c_stops_it_all(tmp_path: Path) -> None:
    env = _env(tmp_path)
    up = subprocess.Popen(
        [sys.executable, "-m", "worker.cli", "up"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        preexec_fn=_as_a_background_script_starts_it,
    )
    lines: list[str] = []
    try:
        assert up.stdout is not None
        for line in up.stdout:
            lines.append(line)
            if "Ctrl-C stops everything" in line:
                break
        output = "".join(lines)
        assert "flower" in output, output
        assert "pw-e2e" not in output  # a configured password is not printed
        flower_line = next(line for line in lines if line.startswith("flower"))
        flower_url = flower_line.split()[1]
        state = json.loads((tmp_path / ".contactsync" / "redis" / "embedded.json").read_text())
        assert (tmp_path / ".contactsync" / "redis" / "appendonlydir").is_dir()  # AOF is on

        # Plain Celery finds the embedded server through the settings alone.
        ping = subprocess.run(
            [sys.executable, "-m", "celery", "-A", "worker", "inspect", "ping", "--timeout", "5"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert ping.returncode == 0, ping.stdout + ping.stderr
        assert "pong" in ping.stdout
        assert (
            httpx.get(f"{flower_url}/api/workers", auth=("operator", "pw-e2e")).status_code == 200
        )

        # The intake, with the token `up` generated and printed (client "local", an operator).
        intake_line = next(line for line in lines if line.startswith("intake"))
        intake_url, token = intake_line.split()[1], intake_line.split()[4]
        assert httpx.get(f"{intake_url}/healthz").json() == {"status": "ok"}
        job = {
            "kind": "missioncapital.contact_user",
            "job": {"application_id": "00QEa00000ItVf8MAF"},
        }
        auth = {"Authorization": f"Bearer {token}"}
        answer = httpx.post(f"{intake_url}/v1/jobs", json=job, headers=auth)
        assert answer.status_code == 202, answer.text
        shown = httpx.get(f"{intake_url}/v1/jobs/{answer.json()['job_id']}", headers=auth).json()
        assert shown["client"] == "local"
    finally:
        os.killpg(up.pid, signal.SIGINT)
        os.killpg(up.pid, signal.SIGINT)  # an impatient second Ctrl-C must not orphan anything
        rest, _ = up.communicate(timeout=60)
    assert up.returncode == 0, "".join(lines) + rest
    assert "stopping" in rest
    assert not (tmp_path / ".contactsync" / "redis" / "embedded.json").exists()
    with pytest.raises(ProcessLookupError):
        os.kill(int(state["pid"]), 0)  # the embedded server is gone
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{flower_url}/healthcheck", timeout=2)
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{intake_url}/healthz", timeout=2)


def test_up_killed_with_sigkill_leaves_no_orphans(tmp_path: Path) -> None:
    up = subprocess.Popen(
        [sys.executable, "-m", "worker.cli", "up"],
        cwd=tmp_path,
        env=_env(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    assert up.stdout is not None
    for line in up.stdout:
        if "Ctrl-C stops everything" in line:
            break
    children = subprocess.run(["pgrep", "-P", str(up.pid)], capture_output=True, text=True)
    pids = [int(p) for p in children.stdout.split()]
    assert len(pids) >= 5  # embedded server, simulators, worker, Flower, intake
    up.kill()
    up.wait()

    def all_gone() -> bool:
        alive = []
        for pid in pids:
            try:
                os.kill(pid, 0)
                alive.append(pid)
            except ProcessLookupError:
                pass
        return not alive

    wait_for(all_gone, 30, "the children of a killed `up` to exit")


def test_demo_prints_what_it_saw_every_time_and_never_touches_configured_endpoints(
    tmp_path: Path,
) -> None:
    env = _env(tmp_path)
    # Were the demo to use these, it would fail: nothing listens on port 1.
    env["CONTACTSYNC_REDIS_URL"] = "redis://127.0.0.1:1/0"
    env["CONTACTSYNC_NOOJEE__BASE_URL"] = "http://127.0.0.1:1"
    for run in ("first", "second"):  # the second run in the same checkout tells its own story
        result = subprocess.run(
            [sys.executable, "-m", "worker.cli", "demo", "--jobs", "80", "--no-linger"],
            cwd=tmp_path,
            env={**env, "COLUMNS": "400"},
            capture_output=True,
            text=True,
            timeout=170,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        out = result.stdout
        for row in (
            "noojee",
            "missioncapital",
            "trendsic",
            "expandable",
            "answered busy (109)",
            "review",
            "rejected",
            "refused by the intake (422",
            "80 jobs settled in",
            "Flower: http://127.0.0.1:",
            "Intake: http://127.0.0.1:",
        ):
            assert row in out, (run, out)
        assert "LEAD_NOT_UPDATED_DUE_TO_CONFLICT" in out and "DNC" in out
        assert "Application not found" in out  # Mission Capital's scripted unknown application
        assert "not settled in time" not in out
        busy = re.search(r"answered busy \(109\) (\d+) times \(the PBX counted (\d+) in", out)
        assert busy is not None, out
        assert busy.group(1) == busy.group(2) != "0", (run, busy.group(0))
        assert not (tmp_path / ".contactsync" / "demo" / "redis" / "embedded.json").exists()


def test_cli_explains_an_unreachable_redis_and_bad_settings(tmp_path: Path) -> None:
    env = _env(tmp_path)
    env["CONTACTSYNC_REDIS_URL"] = "redis://127.0.0.1:1/0"
    down = run_cli("jobs", cwd=tmp_path, env=env)
    assert down.returncode == 2
    assert "cannot reach Redis at redis://127.0.0.1:1/0" in down.stdout
    assert "Traceback" not in down.stdout + down.stderr

    env["CONTACTSYNC_FLOWER__PORT"] = "70000"
    port = run_cli("config", cwd=tmp_path, env=env)
    assert port.returncode == 2
    # On stderr, as one line: the same as `celery -A worker worker` prints for it.
    assert "CONTACTSYNC_FLOWER__PORT: Input should be less than or equal to 65535" in port.stderr
    env["CONTACTSYNC_FLOWER__PORT"] = "0"

    env["CONTACTSYNC_NOOJEE__API_KEY"] = "k-very-secret"
    env["CONTACTSYNC_NOOJEE__READ_TIMEOUT_S"] = "30"
    bad = run_cli("config", cwd=tmp_path, env=env)
    assert bad.returncode == 2
    assert "CONTACTSYNC_NOOJEE__READ_TIMEOUT_S=30.0 must be greater than" in bad.stderr
    assert "k-very-secret" not in bad.stdout + bad.stderr


def test_second_embedded_server_on_the_same_data_is_refused(tmp_path: Path) -> None:
    from worker.embedded import EmbeddedRedis

    with EmbeddedRedis.under(tmp_path) as first:
        with pytest.raises(RuntimeError, match="already runs on"):
            EmbeddedRedis.under(tmp_path).start()
        assert first.url.startswith(f"redis://:{first.password}@127.0.0.1:")


@pytest.mark.parametrize(
    ("name", "option"),
    [
        ("noojee", "--queue-timeout"),
        ("missioncapital", "--client-secret"),
        ("trendsic", "--api-key"),
        ("expandable", "--data-source"),
    ],
)
def test_sandbox_help_is_the_simulators_own(tmp_path: Path, name: str, option: str) -> None:
    shown = run_cli("sandbox", name, "--help", cwd=tmp_path)
    assert shown.returncode == 0
    assert f"sandbox.{name}" in shown.stdout and option in shown.stdout


def test_nothing_configured_means_a_clear_refusal_not_a_stranger_redis(tmp_path: Path) -> None:
    env = _env(tmp_path)  # no CONTACTSYNC_REDIS_URL, and no `up` running in this directory
    jobs = run_cli("jobs", cwd=tmp_path, env=env)
    assert jobs.returncode == 2
    assert "no Redis to use: set CONTACTSYNC_REDIS_URL" in jobs.stdout

    worker = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "worker", "worker", "--loglevel", "INFO"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert worker.returncode != 0
    assert "no Redis to use: set CONTACTSYNC_REDIS_URL" in worker.stdout + worker.stderr


class Output:
    """A child's output lines, read on a thread, waited for by content."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        import queue
        import threading

        self.lines: list[str] = []
        self._queue: queue.Queue[str] = queue.Queue()
        assert proc.stdout is not None
        stream = proc.stdout
        threading.Thread(
            target=lambda: [self._queue.put(line) for line in stream], daemon=True
        ).start()

    def wait_for(self, text: str, timeout_s: float = 90) -> str:
        import queue
        import time

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                line = self._queue.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                break
            self.lines.append(line)
            if text in line:
                return line
        raise AssertionError(f"no line with {text!r} within {timeout_s} s:\n" + "".join(self.lines))


def _start_up(tmp_path: Path, env: dict[str, str]) -> tuple[subprocess.Popen[str], Output]:
    up = subprocess.Popen(
        [sys.executable, "-m", "worker.cli", "up"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    output = Output(up)
    output.wait_for("Ctrl-C stops everything")
    return up, output


def _stop_up(up: subprocess.Popen[str]) -> None:
    os.killpg(up.pid, signal.SIGINT)
    up.wait(timeout=60)


def _child(up: subprocess.Popen[str], *words: str) -> int:
    """The pid of the child of ``up`` whose command line has every one of ``words``."""
    children = subprocess.run(["pgrep", "-P", str(up.pid)], capture_output=True, text=True)
    for pid in (int(p) for p in children.stdout.split()):
        with contextlib.suppress(FileNotFoundError):
            command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            if all(word in command for word in words):
                return pid
    raise AssertionError(f"no child of `up` runs {words}")


def test_up_starts_a_killed_worker_and_server_again(tmp_path: Path) -> None:
    env = _env(tmp_path)
    up, output = _start_up(tmp_path, env)
    try:
        intake_line = next(line for line in output.lines if line.startswith("intake"))
        intake_url, token = intake_line.split()[1], intake_line.split()[4]
        os.kill(_child(up, "celery", "w1@"), signal.SIGKILL)
        output.wait_for("worker-w1 started again")
        server = json.loads((tmp_path / ".contactsync" / "redis" / "embedded.json").read_text())
        os.kill(int(server["pid"]), signal.SIGKILL)
        output.wait_for("the embedded server is back on " + mask_url_password(server["url"]))
        assert urlsplit(server["url"]).password not in "".join(output.lines)  # never shown
        supervisor_log = (tmp_path / ".contactsync" / "logs" / "supervisor.log").read_text()
        assert "worker-w1 (exit code -9) died" in supervisor_log

        auth = {"Authorization": f"Bearer {token}"}
        job = {
            "kind": "missioncapital.contact_user",
            "job": {"application_id": "00QEa00000ItVf8MAF"},
        }

        def delivered() -> bool:
            with contextlib.suppress(httpx.HTTPError):
                sent = httpx.post(
                    f"{intake_url}/v1/jobs",
                    json=job,
                    headers={**auth, "Idempotency-Key": "after-the-crashes"},
                    timeout=5,
                )
                if sent.status_code == 202:
                    shown = httpx.get(
                        f"{intake_url}/v1/jobs/{sent.json()['job_id']}", headers=auth, timeout=5
                    ).json()
                    return bool(shown["state"] == "delivered")
            return False

        wait_for(delivered, 60, "a job submitted after the crashes to be delivered")
    finally:
        _stop_up(up)


def test_a_backfill_through_a_redis_crash_finishes_with_resume_and_loses_nothing(
    tmp_path: Path,
) -> None:
    env = _env(tmp_path)
    up, output = _start_up(tmp_path, env)
    try:
        leads = [f"R-{n}" for n in range(600)]
        path = tmp_path / "leads.csv"
        path.write_text(
            "external_lead_id,FirstPhone\n"
            + "".join(f"{lead},0383{n:06d}\n" for n, lead in enumerate(leads))
        )
        args = [
            sys.executable,
            "-m",
            "worker.cli",
            "backfill",
            str(path),
            "-d",
            "noojee",
            "--kind",
            "update",
            "--set",
            "template_id=41",
            "--set",
            "campaign_id=41",
            "--set",
            "allocation_id=38",
            "--set",
            "disposition=Sale",
            "--max-queue-depth",
            "50",
            "--wait",
        ]
        first = subprocess.Popen(
            args, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        state = tmp_path / ".contactsync" / "redis" / "embedded.json"
        server = json.loads(state.read_text())
        client = redis.Redis.from_url(server["url"], decode_responses=True)
        wait_for(lambda: any(client.scan_iter("cs:backfill:*")), 30, "the backfill to start")
        wait_for(
            lambda: int(client.hget("cs:counts", "delivered") or 0) >= 60, 60, "some deliveries"
        )
        os.kill(int(server["pid"]), signal.SIGKILL)  # mid-run: the queue is at its cap
        output.wait_for("the embedded server is back")
        first.communicate(timeout=120)  # it rides out the outage, or stops with an error

        again = subprocess.run(
            [*args, "--resume"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180
        )
        assert again.returncode == 0, again.stdout + again.stderr
        assert "600 delivered" in again.stdout.replace(",", ""), again.stdout
        noojee = next(line for line in output.lines if line.startswith("noojee"))
        calls = httpx.get(f"{noojee.split()[1]}/_stats", timeout=10).json()["calls_by_lead"]
        assert [lead for lead in leads if not calls.get(lead)] == []  # every row reached it
    finally:
        _stop_up(up)
