"""`contactsync config`, `up`, `demo`, `intake` and `sandbox`: running the system."""

from __future__ import annotations

import json
import sys
from typing import Any

import click
from rich.markup import escape

from worker.cli.common import Registered, console, fail, fill_later, main, stop_on_signals


@main.command()
def config() -> None:
    """Show the effective settings, secrets masked."""
    from worker.broker import RedisNotConfigured, redis_url
    from worker.settings import get_settings, mask_url_password

    shown = get_settings().masked()
    try:
        shown["effective_redis_url"] = mask_url_password(redis_url())
    except RedisNotConfigured as exc:
        shown["effective_redis_url"] = None
        console.print(f"[yellow]note:[/yellow] {exc}")
    console.print_json(json.dumps(shown))


@main.command()
@click.option("--workers", default=1, show_default=True, help="Celery worker processes.")
def up(workers: int) -> None:
    """Run everything: embedded Redis (unless CONTACTSYNC_REDIS_URL is set), a simulator for
    each destination that is not configured (e.g. unless CONTACTSYNC_NOOJEE__BASE_URL is set),
    workers, Flower and the HTTP intake. Ctrl-C stops it all."""
    from worker.cli.stack import Stack
    from worker.settings import get_settings

    stop_on_signals()
    stack = Stack(get_settings().data_dir, workers=workers)
    try:
        with console.status("starting contactsync..."):
            stack.start()
        _print_stack(stack)
        console.print(
            "Ctrl-C stops everything. A server or worker that dies is started again "
            f"(and noted in {stack.log_dir / 'supervisor.log'})."
        )
        stack.keep_running(lambda event: console.print(f"[yellow]{escape(event)}[/yellow]"))
    except KeyboardInterrupt:
        console.print("stopping...")
    finally:
        stack.stop()


def _print_stack(stack: Any) -> None:
    from worker.broker import redis_url
    from worker.settings import mask_url_password

    user, password = stack.flower_credentials[0], stack.flower_password_shown
    console.print(f"redis      {mask_url_password(redis_url())}  (data under {stack.data_dir})")
    for name, url in stack.simulator_urls.items():
        console.print(f"{name:<10} {url}  (simulator)", highlight=False)
    console.print(f"workers    {stack.workers}, logs under {stack.log_dir}")
    if stack.flower_url:
        console.print(
            f"flower     {stack.flower_url}  user [bold]{user}[/bold] "
            f"password [bold]{password}[/bold]"
        )
    if stack.intake_url:
        token = (
            f"bearer token [bold]{stack.intake_token}[/bold] (client local, an operator)"
            if stack.intake_token
            else "tokens from CONTACTSYNC_INTAKE__TOKENS"
        )
        console.print(f"intake     {stack.intake_url}  {token}", highlight=False)


@main.command()
@click.option("--jobs", "count", default=300, show_default=True, help="Sample updates to send.")
@click.option(
    "--linger/--no-linger",
    default=None,
    help="Keep the system running after the table (default: only on a terminal).",
)
def demo(count: int, linger: bool | None) -> None:
    """Start the whole system, deliver a realistic sample through it, and print what happened."""
    from worker.cli.demo import run_demo

    stop_on_signals()
    run_demo(console, count, sys.stdout.isatty() if linger is None else linger)


@main.command()
@click.option("--host", help="Address to listen on (default: CONTACTSYNC_INTAKE__HOST).")
@click.option("--port", type=int, help="Port (default: CONTACTSYNC_INTAKE__PORT; 0: any free).")
@click.option(
    "--port-file",
    type=click.Path(dir_okay=False),
    hidden=True,
    help="Write the port listened on to this file (for `up`).",
)
def intake(host: str | None, port: int | None, port_file: str | None) -> None:
    """Serve the HTTP intake: POST /v1/jobs (one job or up to 1,000), GET /v1/jobs/ID,
    GET /v1/review, POST /v1/review/ID/requeue|discard, GET /healthz, GET /openapi.json.

    Clients authenticate with `Authorization: Bearer TOKEN`, the tokens named in
    CONTACTSYNC_INTAKE__TOKENS ('{"crm": "long-random-token"}'); the names in
    CONTACTSYNC_INTAKE__OPERATORS may read every job and resolve reviews. Jobs are realtime
    unless the request says "priority": "bulk". Ctrl-C stops it.
    """
    from producers.intake import serve
    from worker.serving import write_port_file
    from worker.settings import get_settings

    settings = get_settings().intake
    overrides = {k: v for k, v in (("host", host), ("port", port)) if v is not None}
    settings = settings.model_copy(update=overrides)

    def ready(bound: int) -> None:
        console.print(
            f"intake listening on http://{settings.host}:{bound} "
            f"({len(settings.tokens)} client token(s))",
            highlight=False,
        )
        if port_file:
            write_port_file(port_file, bound)

    try:
        serve(settings, ready=ready)
    except ValueError as exc:
        fail(str(exc))


@main.group(cls=Registered)
def sandbox() -> None:
    """Destination simulators, for trying contactsync without the real systems."""


def _simulator_command(name: str, module: str, summary: str) -> None:
    @sandbox.command(
        name,
        help=f"{summary} (`--help` lists its options)",
        add_help_option=False,
        context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
    )
    @click.pass_context
    def run(ctx: click.Context) -> None:
        import importlib

        simulator = importlib.import_module(module)
        sys.exit(simulator.main(list(ctx.args)))


def _simulator_commands() -> None:
    """`contactsync sandbox NAME [OPTIONS]`: the simulator of each registered destination."""
    from worker.destinations import registry

    for declared in registry():
        if declared.simulator is not None:
            _simulator_command(declared.name, declared.simulator, declared.simulator_summary)


fill_later(sandbox, _simulator_commands)
