"""The installed package carries everything the editable checkout has (the Lua scripts are
package data: a miss shows only in a real install, as a worker failing every job)."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_carries_the_lua_scripts_and_every_package(tmp_path: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--quiet",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("contactsync-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for script in (ROOT / "worker" / "lua").glob("*.lua"):
        assert f"worker/lua/{script.name}" in names
    for package in ("worker", "tasks", "producers", "sandbox"):
        assert f"{package}/__init__.py" in names
    assert not any(name.startswith(("tests/", "bench/")) for name in names)
