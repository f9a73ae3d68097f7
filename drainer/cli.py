"""The ``drainer`` command. Exit codes: 0 success, 1 the operation failed, 2 bad usage or
configuration. A DrainerError prints its message; a traceback only with ``--debug``."""

from __future__ import annotations

import json
import logging
import os
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
from drainer.adapters.base import Check, preflight
from drainer.config import Config, dump_config, load_config
from drainer.core import OUT_PHASES, ManualDrain, ManualUndrain, Phase, Record, reaction, relevant
from drainer.daemon import Node, assemble, build_source
from drainer.daemon import run as run_daemon
from drainer.engine import build_lbs, read_boot_id
from drainer.errors import ConfigError, DrainerError, SourceError
from drainer.health import check_health
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
        _truthful(node, "the drain is recorded and the daemon keeps trying")
        typer.echo(f"drain requested: {record.phase.value}")
        if wait:
            limit = node.config.drain.timeout if timeout is None else timeout
            record = _wait_for(node, lambda r: r.phase is not Phase.DRAINING, limit + 5, "drain")
            typer.echo(f"{record.phase.value}: {record.note}")


def _truthful(node: Node, recorded: str) -> None:
    """Fail when a load balancer refused the drain or its record could not be saved."""
    if node.engine.refused:
        refused = "; ".join(f"{n}: {why}" for n, why in sorted(node.engine.refused.items()))
        raise DrainerError(
            f"the load balancer refused the drain: {refused}. The node still takes traffic there;"
            f" {recorded} (fix it, or `drainer undrain` to cancel)"
        )
    if node.engine.unsaved:
        raise DrainerError(
            f"drained, but the state could not be saved ({node.engine.unsaved}); drainer"
            " will recognise this drain as its own once it can read it back: free the state"
            " directory"
        )


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
        if node.engine.unsaved:
            raise DrainerError(
                f"the undrain cannot be recorded ({node.engine.unsaved}); the node was not"
                " put back: free the state directory and run `drainer undrain` again"
            )
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
        found = node.source.events()
        policy = node.engine.policy
        mine = {e.event_id for e in relevant(found, policy)}
        rows: list[dict[str, Any]] = [
            {
                **e.to_json(),
                "for_this_node": bool(policy.node_names & set(e.resources)),
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
            f"{row['event_type']:<9} {row['status']:<9} not before {when}  "
            f"{row['event_id']}  {','.join(row['resources'])}  -> {row['reaction']}"
        )


# -- check ---------------------------------------------------------------------------------


@app.command()
def check(config: ConfigOpt = DEFAULT_CONFIG) -> None:
    """Check the setup live: metadata service, load balancers, health check, state
    directory. One line per check; exit 1 if one fails, 2 on a bad configuration."""
    with _errors():
        checks = _preflight(_load(config))
    for item in checks:
        typer.echo(f"{'ok' if item.ok else 'FAIL':<4}  {item.name}: {item.detail}")
    failed = sum(1 for item in checks if not item.ok)
    if failed:
        typer.echo(f"drainer: {failed} of {len(checks)} checks failed", err=True)
    raise typer.Exit(1 if failed else 0)


def _preflight(config: Config) -> list[Check]:
    """Every check ``drainer check`` prints; changes nothing anywhere."""
    source = build_source(config, threading.Event())
    checks: list[Check] = []
    try:
        names: frozenset[str] = frozenset()
        try:
            names = source.node_names()
        except SourceError as exc:
            checks.append(Check("metadata: this VM", False, str(exc)))
        else:
            wanted = config.node.name
            if wanted and wanted not in names:
                checks.append(
                    Check(
                        "metadata: this VM",
                        False,
                        f"the metadata service calls this VM {', '.join(sorted(names))}, not"
                        f" {wanted} (node.name): events for this VM would not be recognised",
                    )
                )
            else:
                checks.append(Check("metadata: this VM", True, ", ".join(sorted(names))))
        try:
            source.events()
            checks.append(Check("metadata: scheduled events", True, "readable"))
        except SourceError as exc:
            checks.append(Check("metadata: scheduled events", False, str(exc)))
        node = config.node.name or min(names, default="")
        if not node:
            checks.append(
                Check(
                    "load balancers",
                    False,
                    "not checked: this VM's name is unknown (set node.name)",
                )
            )
        else:
            lbs = build_lbs(config, node)
            try:
                for lb in lbs.values():
                    checks += preflight(lb)
            finally:
                for lb in lbs.values():
                    lb.close()
    finally:
        source.close()
    ok, detail = check_health(config.health)
    checks.append(Check("health check", ok, detail))
    checks.append(_check_state_dir(config.state_dir))
    try:
        checks.append(Check("boot id", True, read_boot_id(config.node.boot_id_path)))
    except ConfigError as exc:
        checks.append(Check("boot id", False, str(exc)))
    return checks


def _check_state_dir(state_dir: Path) -> Check:
    """The state directory takes a new file (as a save does: write, fsync, remove)."""
    probe = state_dir / f".check.{os.getpid()}.tmp"
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        with open(probe, "w") as out:
            out.write("drainer check\n")
            out.flush()
            os.fsync(out.fileno())
        probe.unlink()
        free = os.statvfs(state_dir)
    except OSError as exc:
        probe.unlink(missing_ok=True)
        return Check("state directory", False, f"cannot write in {state_dir}: {exc.strerror}")
    mib = free.f_bavail * free.f_frsize / 2**20
    return Check("state directory", True, f"{state_dir} writable, {mib:.0f} MiB free")


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
