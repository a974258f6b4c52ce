"""`contactsync up` as a user runs it: everything starts from the embedded default, plain Celery
commands find it with the settings alone, and Ctrl-C stops all of it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.conftest import wait_for

pytestmark = pytest.mark.integration


def _env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CONTACTSYNC_", "FLOWER_"))}
    env.update({"CONTACTSYNC_FLOWER__PORT": "0", "CONTACTSYNC_FLOWER__PASSWORD": "pw-e2e",
                "PYTHONUNBUFFERED": "1", "COLUMNS": "200"})  # fmt: skip
    return env


def test_up_runs_everything_and_ctrl_c_stops_it_all(tmp_path: Path) -> None:
    env = _env(tmp_path)
    up = subprocess.Popen(
        [sys.executable, "-m", "worker.cli", "up"], cwd=tmp_path, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip
    lines: list[str] = []
    try:
        assert up.stdout is not None
        for line in up.stdout:
            lines.append(line)
            if "Ctrl-C stops everything" in line:
                break
        output = "".join(lines)
        assert "flower" in output, output
        flower_line = next(line for line in lines if line.startswith("flower"))
        flower_url = flower_line.split()[1]
        state = json.loads((tmp_path / ".contactsync" / "redis" / "embedded.json").read_text())
        assert (tmp_path / ".contactsync" / "redis" / "appendonlydir").is_dir()  # AOF is on

        # Plain Celery finds the embedded server through the settings alone.
        ping = subprocess.run(
            [sys.executable, "-m", "celery", "-A", "worker", "inspect", "ping", "--timeout", "5"],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert ping.returncode == 0, ping.stdout + ping.stderr
        assert "pong" in ping.stdout
        assert httpx.get(f"{flower_url}/api/workers", auth=("operator", "pw-e2e")).status_code \
            == 200
    finally:
        os.killpg(up.pid, signal.SIGINT)
        rest, _ = up.communicate(timeout=60)
    assert up.returncode == 0, "".join(lines) + rest
    assert "stopping" in rest
    assert not (tmp_path / ".contactsync" / "redis" / "embedded.json").exists()
    with pytest.raises(ProcessLookupError):
        os.kill(int(state["pid"]), 0)  # the embedded server is gone
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{flower_url}/healthcheck", timeout=2)


def test_demo_prints_its_table_and_exits(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "worker.cli", "demo", "--jobs", "60", "--no-linger"],
        cwd=tmp_path, env=_env(tmp_path), capture_output=True, text=True, timeout=170,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    for row in ("delivered", "retried (109)", "in review", "rejected", "refused at submit",
                "elapsed", "Flower: http://127.0.0.1:"):  # fmt: skip
        assert row in out, out
    assert "LEAD_NOT_UPDATED_DUE_TO_CONFLICT" in out and "DNC" in out
    wait_for(lambda: not (tmp_path / ".contactsync" / "redis" / "embedded.json").exists(), 5,
             "the embedded server to be stopped")  # fmt: skip
