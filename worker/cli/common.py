"""What every part of the `contactsync` command shares: the top-level group, the console it
prints to, and the helpers for errors, signals, KEY=VALUE options and groups filled from the
registry."""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable
from typing import Any

import click
from rich.console import Console

console = Console()


def stop_on_signals() -> None:
    """Let SIGTERM (docker stop, systemd) and SIGINT stop `up` and `demo` cleanly. SIGINT is set
    explicitly: a shell script that starts us in the background leaves it ignored.

    The first signal starts the shutdown and every later one is ignored: an impatient second
    Ctrl-C landing between the first and `Stack.stop()` would otherwise abort the shutdown
    half-way (exit 1, and children left behind)."""

    def interrupt(signum: int, frame: object) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGINT, interrupt)


def fail(message: str) -> None:
    console.print(f"[red]error:[/red] {message}")
    sys.exit(2)


class _Main(click.Group):
    """Turns the two errors a person can fix (configuration, an unreachable Redis) into a
    message that says what to do, instead of a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        from pydantic import ValidationError
        from pydantic_settings import SettingsError
        from redis.exceptions import ConnectionError as RedisConnectionError

        from worker.broker import RedisNotConfigured
        from worker.settings import exit_for_settings

        try:
            return super().invoke(ctx)
        except (ValidationError, SettingsError) as exc:
            exit_for_settings(exc)
        except RedisNotConfigured as exc:
            fail(str(exc))
        except RedisConnectionError:
            from worker.broker import redis_url
            from worker.settings import mask_url_password

            fail(
                f"cannot reach Redis at {mask_url_password(redis_url())}: start the system with "
                "`contactsync up`, or set CONTACTSYNC_REDIS_URL to a running server"
            )


@click.group(cls=_Main, context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """contactsync: deliver contact updates to CRMs and dialers through Celery and Redis.

    Configuration comes from CONTACTSYNC_* environment variables (or a .env file); see
    `contactsync config`. Without CONTACTSYNC_REDIS_URL, `up` and `demo` start an embedded
    Redis-compatible server under ./.contactsync/.
    """


class Registered(click.Group):
    """A group with a command per registered destination or job kind, added the first time its
    commands are listed or looked up: `contactsync --help` need not import every destination."""

    populate: Callable[[], None] | None = None

    def _load(self) -> None:
        populate, self.populate = self.populate, None
        if populate is not None:
            populate()

    def list_commands(self, ctx: click.Context) -> list[str]:
        self._load()
        return super().list_commands(ctx)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        self._load()
        return super().get_command(ctx, cmd_name)


def fill_later(group: click.Group, populate: Callable[[], None]) -> None:
    assert isinstance(group, Registered)
    group.populate = populate


def pairs(values: tuple[str, ...], option: str) -> dict[str, str]:
    pairs = {}
    for value in values:
        key, sep, val = value.partition("=")
        if not sep or not key:
            fail(f"{option} {value!r}: write it as NAME=VALUE")
        pairs[key] = val
    return pairs
