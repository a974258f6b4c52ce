"""Personal data at rest: the embedded server's folder is 0700 and its files 0600, it refuses
clients without its generated password (which is never on its command line), and the fleet asks
it to rewrite its append-only file after many deliveries, so a delivered phone number leaves
the disk."""

from __future__ import annotations

import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from worker.aof import AofRewriter
from worker.embedded import EmbeddedRedis, running_url

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

PHONE = "0412345678"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    with EmbeddedRedis.under(tmp_path / "data") as embedded:
        yield embedded


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def aof_bytes(folder: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted((folder / "appendonlydir").iterdir()))


def wait_until(check: object, timeout_s: float = 20) -> None:
    assert callable(check)
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "condition not met before the deadline"
        time.sleep(0.05)


def test_the_servers_folder_is_0700_and_every_file_in_it_0600(server: EmbeddedRedis) -> None:
    client = redis.Redis.from_url(server.url)
    client.hset("cs:job:1", mapping={"payload": PHONE})
    client.bgrewriteaof()  # a base file as well
    wait_until(lambda: not int(client.info("persistence")["aof_rewrite_in_progress"]))

    folders = [server.data_dir, *(p for p in server.data_dir.rglob("*") if p.is_dir())]
    files = [p for p in server.data_dir.rglob("*") if p.is_file()]
    assert {p.name for p in files} >= {"embedded.json", "password", "valkey.conf", "valkey.log"}
    assert any(p.suffix == ".aof" for p in files)
    assert {str(p): oct(mode(p)) for p in folders if mode(p) != 0o700} == {}
    assert {str(p): oct(mode(p)) for p in files if mode(p) != 0o600} == {}


def test_a_client_without_the_password_is_refused(server: EmbeddedRedis) -> None:
    assert redis.Redis.from_url(server.url).ping()
    for url in (f"redis://127.0.0.1:{server.port}/0", f"redis://:wrong@127.0.0.1:{server.port}/0"):
        with pytest.raises(redis.AuthenticationError):
            redis.Redis.from_url(url, protocol=2).ping()
        with pytest.raises((redis.AuthenticationError, redis.ResponseError)):
            redis.Redis.from_url(url, protocol=2).get("anything")


def test_local_processes_find_the_url_with_its_password(server: EmbeddedRedis) -> None:
    url = running_url(server.data_dir.parent)
    assert url == server.url and f":{server.password}@" in url
    assert redis.Redis.from_url(url).ping()


def test_the_password_is_kept_across_restarts_and_never_on_the_command_line(
    server: EmbeddedRedis,
) -> None:
    assert server._process is not None
    cmdline = Path(f"/proc/{server._process.pid}/cmdline").read_bytes()
    assert server.password.encode() not in cmdline
    first = server.password
    server.restart()
    assert server.password == first and redis.Redis.from_url(server.url).ping()


def test_files_an_older_version_left_readable_are_locked_down_on_start(tmp_path: Path) -> None:
    folder = tmp_path / "data" / "redis"
    folder.mkdir(parents=True)
    folder.chmod(0o755)
    old = folder / "appendonlydir"
    old.mkdir(mode=0o755)
    (old / "stale.aof").write_text("")
    (old / "stale.aof").chmod(0o644)
    with EmbeddedRedis.under(tmp_path / "data"):
        assert (mode(folder), mode(old), mode(old / "stale.aof")) == (0o700, 0o700, 0o600)


def test_a_rewrite_after_many_deliveries_takes_delivered_data_off_the_disk(
    server: EmbeddedRedis,
) -> None:
    client = redis.Redis.from_url(server.url, decode_responses=True)
    rewriter = AofRewriter(client, "cs:", after_deliveries=100, min_growth_bytes=1)
    for n in range(150):  # delivered: the payload written, then dropped
        client.hset(f"cs:job:{n}", mapping={"payload": f'{{"MobilePhone": "{PHONE}"}}'})
        client.hdel(f"cs:job:{n}", "payload")
    wait_until(lambda: PHONE.encode() in aof_bytes(server.data_dir))  # fsync'd every second

    client.hset("cs:counts", "delivered", 99)
    assert rewriter.check() is False  # not enough delivered yet
    client.delete("cs:aof-rewrite:turn")  # the next period
    client.hset("cs:counts", "delivered", 150)
    assert rewriter.check() is True
    wait_until(lambda: not int(client.info("persistence")["aof_rewrite_in_progress"]))
    wait_until(lambda: PHONE.encode() not in aof_bytes(server.data_dir))

    assert client.hget("cs:aof-rewrite", "delivered") == "150"
    client.delete("cs:aof-rewrite:turn")
    assert rewriter.check() is False  # nothing delivered since


def test_one_check_a_period_for_the_whole_fleet(server: EmbeddedRedis) -> None:
    client = redis.Redis.from_url(server.url, decode_responses=True)
    client.hset("cs:counts", "delivered", 10_000)
    first = AofRewriter(client, "cs:", after_deliveries=1, min_growth_bytes=0)
    second = AofRewriter(client, "cs:", after_deliveries=1, min_growth_bytes=0)
    assert first.check(every_s=30) is True
    assert second.check(every_s=30) is False  # not its turn
    client.delete("cs:aof-rewrite:turn")
    assert AofRewriter(client, "cs:", after_deliveries=0).check() is False  # turned off
