"""The ``drainer`` command. Exit codes: 0 success, 1 the operation failed, 2 bad usage or
configuration. A DrainerError prints its message; a traceback only with ``--debug``."""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from drainer import logs
from drainer.config import Config, dump_config, load_config
from drainer.core import (
    OUT_PHASES,
    ManualDrain,
    ManualUndrain,
    Phase,
    Record,
    names_this_vm,
    reaction,
    relevant,
    salvage,
)
from drainer.daemon import Node, assemble
from drainer.daemon import run as run_daemon
from drainer.errors import ConfigError, DrainerError
from drainer.model import LBStatus, LBView

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Take this node out of its load balancers before cloud maintenance, "
    "and put it back once it is healthy.",
)
config_app = typer.Typer(no_args_is_help=True, help="Check or show a configuration.")
app.add_typer(config_app, name="config")

DEFAULT_CONFIG = Path("/etc/drainer/drainer.yaml")
ConfigOpt = Annotated[
    Path, typer.Option("--config", "-c", envvar="DRAINER_CONFIG", help="Configuration file.")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]
log = logging.getLogger("drainer")


@dataclass
class _Options:
    """The global options, set once by the callback before any command runs."""

    debug: bool = False
    log_format: str | None = None  # from the command line; None: from the configuration


_options_seen = _Options()


@app.callback()
def _options(
    debug: Annotated[bool, typer.Option("--debug", help="Tracebacks and debug logs.")] = False,
    log_format: Annotated[
        str | None, typer.Option("--log-format", help="text or json (default: from config).")
    ] = None,
) -> None:
    if log_format not in (None, "text", "json"):
        raise typer.BadParameter("must be text or json", param_hint="--log-format")
    _options_seen.debug = debug
    _options_seen.log_format = log_format
    logs.setup(log_format or "text", debug=debug)


@contextmanager
def _errors() -> Iterator[None]:
    try:
        yield
    except ConfigError as exc:
        _fail(exc, 2)
    except DrainerError as exc:
        _fail(exc, 1)


def _fail(exc: Exception, code: int) -> None:
    if _options_seen.debug:
        raise exc
    typer.echo(f"drainer: {exc}", err=True)
    raise typer.Exit(code)


def _load(path: Path) -> Config:
    config = load_config(path)
    if _options_seen.log_format is None:
        logs.setup(config.log_format, debug=_options_seen.debug)
    return config


@contextmanager
def _node(path: Path) -> Iterator[Node]:
    node = assemble(_load(path), threading.Event())
    try:
        yield node
    finally:
        node.close()


# -- run -----------------------------------------------------------------------------------


@app.command()
def run(config: ConfigOpt = DEFAULT_CONFIG) -> None:
    """Run the sidecar: watch for maintenance events and handle them."""
    with _errors():
        code = run_daemon(_load(config))
    raise typer.Exit(code)


# -- drain / undrain -----------------------------------------------------------------------


def _progress(record: Record, views: dict[str, LBView | None], deadline: float) -> str:
    parts = []
    for name, view in views.items():
        parts.append(f"{name}: " + (f"{view.sessions} left" if view else "unreachable"))
    left = max(0, int(deadline - time.time()))
    return f"{record.phase.value}: {', '.join(parts) or 'no load balancer read'}; {left}s left"


def _wait_for(node: Node, done: Callable[[Record], bool], timeout: float, what: str) -> Record:
    deadline = time.time() + timeout
    last = ""
    while True:
        record, views = node.engine.turn(None)
        if done(record):
            return record
        line = _progress(record, views, deadline)
        if line != last:
            typer.echo(line, err=True)
            last = line
        if time.time() >= deadline:
            raise DrainerError(f"{what} not finished after {timeout:.0f}s ({line})")
        time.sleep(0.5)


@app.command()
def drain(
    config: ConfigOpt = DEFAULT_CONFIG,
    wait: Annotated[bool, typer.Option("--wait", help="Wait until drained.")] = False,
    timeout: Annotated[
        float | None,
        typer.Option("--timeout", min=0, help="Seconds to wait (default: drain.timeout)."),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Drain even below min_in_service.")
    ] = False,
) -> None:
    """Take this node out of every load balancer and keep it out until `undrain`."""
    with _errors(), _node(config) as node:
        if not force:
            for lb in node.lbs.values():
                refuse = getattr(lb, "check_manual_drain", None)
                reason = refuse() if callable(refuse) else None
                if reason:
                    raise DrainerError(f"{lb.name}: {reason} (use --force to drain anyway)")
        node.engine.turn(None, ManualDrain())
        record, _ = node.engine.turn(None)  # act at once on what the request decided
        typer.echo(f"drain requested: {record.phase.value}")
        if wait:
            limit = node.config.drain.timeout if timeout is None else timeout
            record = _wait_for(node, lambda r: r.phase is not Phase.DRAINING, limit + 5, "drain")
            typer.echo(f"{record.phase.value}: {record.note}")


@app.command()
def undrain(
    config: ConfigOpt = DEFAULT_CONFIG,
    force: Annotated[bool, typer.Option("--force", help="Skip the health check.")] = False,
    timeout: Annotated[float, typer.Option("--timeout", min=0, help="Seconds to wait.")] = 60.0,
) -> None:
    """Put this node back into every load balancer (health-checked first unless --force)."""
    with _errors(), _node(config) as node:
        if not force:
            ok, detail = node.engine.check(node.config.health)
            if not ok:
                raise DrainerError(f"health check failed ({detail}); not putting the node back")
        node.engine.turn(None, ManualUndrain())
        record = _wait_for(node, lambda r: r.phase is Phase.IN_SERVICE, timeout, "undrain")
        typer.echo(f"{record.phase.value}: {record.note}")


# -- status / events -----------------------------------------------------------------------


def _status_data(node: Node) -> dict[str, Any]:
    record = node.engine.store.load()
    views = node.engine.views()
    lbs: dict[str, Any] = {}
    for name, view in views.items():
        if view is None:
            lbs[name] = {"error": node.engine.read_error(name)}
        else:
            lbs[name] = {
                "status": view.status.value,
                "sessions": view.sessions,
                "detail": view.detail,
                "owned": name in record.owned,
            }
    return {
        "node": sorted(node.engine.policy.node_names),
        "phase": record.phase.value,
        "since": record.since,
        "manual": record.manual,
        "event": record.event.to_json() if record.event else None,
        "owned": sorted(record.owned),
        "load_balancers": lbs,
        "health": {"consecutive_ok": record.health_ok, "last": record.health_detail},
        "alert": record.alert,
        "note": record.note,
        "needs_attention": _needs_attention(record, views),
    }


def _needs_attention(record: Record, views: dict[str, LBView | None]) -> bool:
    """Held as unhealthy, a load balancer unreachable, or one where the node is meant
    to be out and is not."""
    unhealthy_hold = record.phase is Phase.HELD and not record.manual
    unreachable = any(v is None for v in views.values())
    meant_out = record.phase in (Phase.DRAINED, Phase.IN_MAINTENANCE, Phase.HELD, Phase.REMOVED)
    not_out = meant_out and any(
        (v := views.get(name)) is not None and v.status is not LBStatus.OUT for name in record.owned
    )
    return unhealthy_hold or unreachable or not_out


@app.command()
def status(config: ConfigOpt = DEFAULT_CONFIG, as_json: JsonOpt = False) -> None:
    """Show the node's phase, its event and each load balancer's view (exit 1: needs a person)."""
    with _errors(), _node(config) as node:
        data = _status_data(node)
    if as_json:
        typer.echo(json.dumps(data, indent=2))
    else:
        typer.echo(f"node:   {', '.join(data['node'])}")
        held = " (manual)" if data["manual"] else ""
        if data["since"]:
            since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(data["since"]))
            typer.echo(f"phase:  {data['phase']}{held} since {since}: {data['note']}")
        else:
            typer.echo(f"phase:  {data['phase']} (nothing has happened yet)")
        if data["event"]:
            e = data["event"]
            typer.echo(f"event:  {e['event_type']} {e['event_id']} {e['status']}")
        for name, lb in data["load_balancers"].items():
            mine = " (drained by drainer)" if lb.get("owned") else ""
            text = lb.get("error") or f"{lb['status']}, {lb['sessions']} sessions: {lb['detail']}"
            typer.echo(f"lb:     {name}: {text}{mine}")
        if data["phase"] in {p.value for p in OUT_PHASES}:
            typer.echo(
                f"health: {data['health']['consecutive_ok']} ok in a row; "
                f"last: {data['health']['last'] or '-'}"
            )
        if data["alert"]:
            typer.echo(f"ALERT:  {data['alert']}")
    raise typer.Exit(1 if data["needs_attention"] else 0)


@app.command()
def events(config: ConfigOpt = DEFAULT_CONFIG, as_json: JsonOpt = False) -> None:
    """List the maintenance events the metadata service shows now."""
    with _errors(), _node(config) as node:
        listing = node.source.events()
        policy = node.engine.policy
        # an entry the source could not read is listed only when it may be this VM's
        found = listing.events + salvage(listing.damaged, policy)
        mine = {e.event_id for e in relevant(found, policy)}
        rows: list[dict[str, Any]] = [
            {
                **e.to_json(),
                "for_this_node": names_this_vm(e, policy),
                "reaction": reaction(e, policy).value if e.event_id in mine else "ignore",
            }
            for e in found
        ]
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        typer.echo("no scheduled events")
    for row in rows:
        when = (
            time.strftime("%H:%M:%S", time.localtime(row["not_before"]))
            if row["not_before"]
            else "now"
        )
        typer.echo(
            f"{row['raw_type'] or row['event_type']:<9} {row['raw_status'] or row['status']:<9} "
            f"not before {when}  {row['event_id']}  {','.join(row['resources'])}  "
            f"-> {row['reaction']}"
        )
        for problem in row["problems"]:
            typer.echo(f"          ! {problem}")


# -- config --------------------------------------------------------------------------------


@config_app.command("check")
def config_check(config: ConfigOpt = DEFAULT_CONFIG) -> None:
    """Validate a configuration file (exit 2 naming every problem)."""
    with _errors():
        load_config(config)
    typer.echo(f"{config}: ok")


@config_app.command("show")
def config_show(config: ConfigOpt = DEFAULT_CONFIG) -> None:
    """Print the effective configuration, defaults included."""
    with _errors():
        typer.echo(dump_config(load_config(config)), nl=False)


# -- demo and the fake metadata service ------------------------------------------------------


@app.command()
def demo(
    haproxy: Annotated[
        bool, typer.Option("--haproxy/--mock", help="Use a real HAProxy when installed.")
    ] = True,
) -> None:
    """Run a whole maintenance on a simulated VM, in under a minute."""
    from drainer.demo import run_demo

    with _errors():
        raise typer.Exit(run_demo(use_haproxy=haproxy))


@app.command()
def serve(
    config: Annotated[
        Path,
        typer.Option(
            "--config",
            "-c",
            envvar="DRAINER_SERVE_CONFIG",
            help="drainer serve's configuration file.",
        ),
    ] = Path("/etc/drainer/serve.yaml"),
) -> None:
    """Let the web VMs' sidecars drain their own server in this host's load balancers."""
    from drainer.remote import serve as run_serve

    with _errors():
        code = run_serve(config)
    raise typer.Exit(code)


@app.command("fake-imds")
def fake_imds(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8169,
    name: Annotated[str, typer.Option(help="The VM name the compute endpoint reports.")] = "web-1",
) -> None:
    """Serve a fake Azure metadata service (Scheduled Events + control API) for tests."""
    from drainer.fake_imds import FakeIMDS

    fake = FakeIMDS(host=host, port=port)
    fake.set_compute(name=name)
    fake.start()
    typer.echo(f"fake metadata service on {fake.url} (control API under /fake/)", err=True)
    try:
        fake.serve_forever()
    finally:
        fake.stop()


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
