"""A bad setting stops every entry point with the same one line naming the variable: the
`contactsync` CLI, `celery -A worker worker` and `celery -A worker flower` (which import the
app while loading ``-A``, where a pydantic error used to surface as a 33-line traceback)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
ENTRY_POINTS = {
    "contactsync": [str(BIN / "contactsync"), "config"],
    "celery worker": [
        str(BIN / "celery"),
        "-A",
        "worker",
        "worker",
        "--without-gossip",
        "--without-mingle",
    ],
    "celery flower": [str(BIN / "celery"), "-A", "worker", "flower", "--port=0"],
}


def run(command: list[str], tmp_path: Path, **variables: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CONTACTSYNC_", "FLOWER_"))}
    env.update(variables, PYTHONPATH=str(ROOT), COLUMNS="80")
    return subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=90
    )


@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
def test_a_bad_value_stops_every_entry_point_with_one_line_naming_the_variable(
    entry: str, tmp_path: Path
) -> None:
    done = run(
        ENTRY_POINTS[entry],
        tmp_path,
        CONTACTSYNC_NOOJEE__MAX_CONCURRENCY="0",
        CONTACTSYNC_DATA_DIR=str(tmp_path / "data"),
    )

    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert lines == [
        "error: invalid configuration (CONTACTSYNC_* variables or .env): "
        "CONTACTSYNC_NOOJEE__MAX_CONCURRENCY: Input should be greater than or equal to 1"
    ], done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    assert "noojee.max_concurrency" not in done.stdout + done.stderr


@pytest.mark.parametrize("entry", ["celery worker", "contactsync"])
def test_malformed_json_in_a_nested_variable_is_one_line_too(entry: str, tmp_path: Path) -> None:
    done = run(ENTRY_POINTS[entry], tmp_path, CONTACTSYNC_INTAKE__TOKENS="{not json")

    assert done.returncode == 2
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("error: invalid configuration") and "intake" in line
    assert "Traceback" not in done.stderr


def test_the_message_never_repeats_the_value_given(tmp_path: Path) -> None:
    secret = "k7Qx9-Zp2Lw4-Rt8Vy"
    done = run(
        ENTRY_POINTS["celery worker"],
        tmp_path,
        CONTACTSYNC_REDIS_URL=f"http://:{secret}@cache.internal:6379",
    )

    assert done.returncode == 2
    assert "CONTACTSYNC_REDIS_URL" in done.stderr
    assert secret not in done.stdout + done.stderr
