"""The ``drainer`` command. Exit codes: 0 success, 1 the operation failed, 2 bad usage or
configuration (``status`` adds its own, see its help). A DrainerError prints its message;
no traceback for anything a user typed, and for anything else only with ``--debug``.

The global options (``--debug``, ``--log-format``, ``--lock-timeout``, ``-c/--config``)
may stand before or after the command: ``main`` puts them where typer expects them.
"""

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
from typing import TYPE_CHECKING, Annotated

import typer

from drainer import logs
from drainer._files import LOCK_TIMEOUT
from drainer.errors import ConfigError, DrainerError, SourceError
from drainer.model import StrEnum

# Each command imports what it uses, so that `drainer --help` and `config check` load
# neither the core, the adapters nor the HTTP client they do not need.
if TYPE_CHECKING:
    from drainer.config import Config
    from drainer.core import Record
    from drainer.model import LBView, MaintenanceEvent
    from drainer.node import Node
    from drainer.testing.fake_aws import FakeAWS
    from drainer.testing.fake_gcp import FakeGCP
    from drainer.testing.fake_imds import FakeIMDS

app = typer.Typer(
    add_completion=True,
    rich_markup_mode=None,  # plain help: rich's import alone took longer than the rest
    pretty_exceptions_enable=False,
    no_args_is_help=True,
    help="Take this node out of its load balancers before cloud maintenance, "
    "and put it back once it is healthy.",
)
config_app = typer.Typer(
    no_args_is_help=True, rich_markup_mode=None, help="Check or show a configuration."
)
app.add_typer(config_app, name="config")
budget_app = typer.Typer(
    no_args_is_help=True, rich_markup_mode=None, help="The fleet budget: holders, release."
)
app.add_typer(budget_app, name="budget")

DEFAULT_CONFIG = Path("/etc/drainer/drainer.yaml")
MAX_WAIT = 86400.0  # seconds: a day; longer (or inf) is a typo, and overflowed the countdown
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
    lock_timeout: float = LOCK_TIMEOUT


_options_seen = _Options()


def _version(shown: bool) -> None:
    if shown:
        from importlib.metadata import PackageNotFoundError, version

        try:
            number = version("drainer")
        except PackageNotFoundError:
            number = "unknown"
        typer.echo(f"drainer {number}")
        raise typer.Exit()


@app.callback()
def _options(
    debug: Annotated[bool, typer.Option("--debug", help="Tracebacks and debug logs.")] = False,
    log_format: Annotated[
        str | None, typer.Option("--log-format", help="text or json (default: from config).")
    ] = None,
    lock_timeout: Annotated[
        float,
        typer.Option(
            "--lock-timeout",
            min=0,
            max=MAX_WAIT,
            help="Seconds to wait for the state lock another drainer holds.",
        ),
    ] = LOCK_TIMEOUT,
    _: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Global options may come before or after the command."""
    if log_format not in (None, "text", "json"):
        raise typer.BadParameter("must be text or json", param_hint="--log-format")
    _options_seen.debug = debug
    _options_seen.log_format = log_format
    _options_seen.lock_timeout = lock_timeout
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
    from drainer.config import load_config

    config = load_config(path)
    if _options_seen.log_format is None:
        logs.setup(config.log_format, debug=_options_seen.debug)
    return config


def _say(message: str) -> None:
    typer.echo(f"drainer: {message}", err=True)


@contextmanager
def _node(path: Path) -> Iterator[Node]:
    from drainer.node import assemble

    node = assemble(_load(path), threading.Event())
    node.engine.store.lock_timeout = _options_seen.lock_timeout
    node.engine.store.on_wait = _say
    try:
        yield node
    finally:
        node.close()


# -- run -----------------------------------------------------------------------------------


@app.command()
def run(config: ConfigOpt = DEFAULT_CONFIG) -> None:
    """Run the sidecar: watch for maintenance events and handle them."""
    from drainer.daemon import run as run_daemon

    with _errors():
        code = run_daemon(_load(config), config_path=config)
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
        typer.Option(
            "--timeout",
            min=0,
            max=MAX_WAIT,
            help="With --wait: seconds to wait at most (default: drain.timeout + 5); with a"
            " budget also: seconds to wait for a slot (default 60).",
        ),
    ] = None,
    force: Annotated[
        bool,
        typer.Option("--force", help="Drain even below min_in_service or without a budget slot."),
    ] = False,
) -> None:
    """Take this node out of every load balancer and keep it out until `undrain`."""
    from drainer.core import ManualDrain, Phase

    with _errors(), _node(config) as node:
        if timeout is not None and not wait and node.engine.slots is None:
            raise typer.BadParameter(
                "only means something with --wait or a budget (drain --wait --timeout SECONDS)",
                param_hint="--timeout",
            )
        if not force:
            for lb in node.lbs.values():
                reason = lb.check_manual_drain()
                if reason:
                    raise DrainerError(f"{lb.name}: {reason} (use --force to drain anyway)")
        slot, over = "", False
        if node.engine.slots is not None and node.engine.store.load().phase is Phase.IN_SERVICE:
            from drainer.budget.operate import slot_for_manual_drain

            limit = 60.0 if timeout is None else timeout
            slot, over = slot_for_manual_drain(
                node.engine.slots, timeout=limit, force=force, say=_say
            )
        node.engine.turn(None, ManualDrain(slot=slot, over_budget=over))
        record, _ = node.engine.turn(None)  # act at once on what the request decided
        _truthful(node, "the drain is recorded and the daemon keeps trying")
        typer.echo(f"drain requested: {record.phase.value}")
        if wait:
            # by default a little longer than the drain's own deadline, to see it end
            limit = node.config.drain.timeout + 5 if timeout is None else timeout
            record = _wait_for(node, lambda r: r.phase is not Phase.DRAINING, limit, "drain")
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


def _maintenance(node: Node) -> tuple[list[MaintenanceEvent], str]:
    """The events for this node that are pending or under way, from the record and from
    the metadata service; the second item is why the service could not say ("" if it did)."""
    from drainer.core import relevant, salvage

    record = node.engine.store.load()
    found: dict[str, MaintenanceEvent] = {}
    if record.event is not None:
        found[record.event.event_id] = record.event
    try:
        listing = node.source.events()
    except SourceError as exc:
        return list(found.values()), str(exc)
    policy = node.engine.policy
    # a damaged entry whose text names this VM counts too (salvage: due now)
    for event in relevant(listing.events + salvage(listing.damaged, policy), policy):
        found.setdefault(event.event_id, event)
    if listing.partial:  # a notice may be on the part not read: no answer to "none?"
        return list(found.values()), "part of its notices could not be read (logged above)"
    return list(found.values()), ""


def _refuse_during_maintenance(node: Node) -> None:
    events, unanswered = _maintenance(node)
    if events:
        named = "; ".join(f"{e.event_type} {e.event_id} ({e.status})" for e in events)
        raise DrainerError(
            f"not putting the node back: maintenance for this node is pending or under way: "
            f"{named}. Wait until it is over, or use --force if you are sure"
        )
    if unanswered:
        raise DrainerError(
            f"not putting the node back: cannot ask the metadata service whether a "
            f"maintenance is pending ({unanswered}). Use --force if you know none is"
        )


@app.command()
def undrain(
    config: ConfigOpt = DEFAULT_CONFIG,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Skip the health check, and put the node back even while a maintenance "
            "is pending or under way (or the metadata service cannot say).",
        ),
    ] = False,
    timeout: Annotated[
        float, typer.Option("--timeout", min=0, max=MAX_WAIT, help="Seconds to wait.")
    ] = 60.0,
) -> None:
    """Put this node back into every load balancer (health-checked first unless --force).

    Refused while a maintenance event for this node is pending or started."""
    from drainer.core import ManualUndrain, Phase

    with _errors(), _node(config) as node:
        if not force:
            _refuse_during_maintenance(node)
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


STATUS_NEEDS_A_PERSON = 1
STATUS_NO_SIDECAR = 3


@app.command()
def status(config: ConfigOpt = DEFAULT_CONFIG, as_json: JsonOpt = False) -> None:
    """Show the node's phase, its event, each load balancer's view and the sidecar.

    Exit codes: 0 all well; 3 the sidecar (drainer run) is not running or has not
    finished a turn lately, so nothing watches for maintenance (checked first);
    1 needs a person: held as unhealthy, a load balancer unreachable, or meant to be out
    and not out (also: the status could not be read); 2 bad usage or configuration."""
    from drainer.status import status_data, status_lines

    with _errors(), _node(config) as node:
        data = status_data(node)
    if as_json:
        typer.echo(json.dumps(data, indent=2))
    else:
        for line in status_lines(data):
            typer.echo(line)
    if data["sidecar"]["stale"]:
        raise typer.Exit(STATUS_NO_SIDECAR)
    raise typer.Exit(STATUS_NEEDS_A_PERSON if data["needs_attention"] else 0)


@app.command()
def events(config: ConfigOpt = DEFAULT_CONFIG, as_json: JsonOpt = False) -> None:
    """List the maintenance events the metadata service shows now (exit 1 when it could
    not be read, or only in part: then the events read are listed all the same)."""
    from drainer.status import event_lines, event_rows

    with _errors(), _node(config) as node:
        rows, partial = event_rows(node)
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
    else:
        for line in event_lines(rows):
            typer.echo(line)
    if partial:
        _say(
            "the metadata service answered only in part (the warning above names what could"
            " not be read): an event there is not listed"
        )
        raise typer.Exit(1)


# -- check ---------------------------------------------------------------------------------


@app.command()
def check(config: ConfigOpt = DEFAULT_CONFIG) -> None:
    """Check the setup live: metadata service, load balancers, health check, state
    directory. One line per check; exit 1 if one fails, 2 on a bad configuration."""
    from drainer.preflight import check_setup

    with _errors():
        checks = check_setup(_load(config))
    for item in checks:
        typer.echo(f"{'ok' if item.ok else 'FAIL':<4}  {item.name}: {item.detail}")
    failed = sum(1 for item in checks if not item.ok)
    if failed:
        typer.echo(f"drainer: {failed} of {len(checks)} checks failed", err=True)
    raise typer.Exit(1 if failed else 0)


# -- config --------------------------------------------------------------------------------


@config_app.command("check")
def config_check(config: ConfigOpt = DEFAULT_CONFIG) -> None:
    """Validate a configuration file (exit 2 naming every problem)."""
    from drainer.config import load_config

    with _errors():
        load_config(config)
    typer.echo(f"{config}: ok")


@config_app.command("show")
def config_show(config: ConfigOpt = DEFAULT_CONFIG) -> None:
    """Print the effective configuration, defaults included."""
    from drainer.config import dump_config, load_config

    with _errors():
        typer.echo(dump_config(load_config(config)), nl=False)


@app.command("print")
def print_file(
    name: Annotated[
        str | None,
        typer.Argument(help="A path, a file name or an alias (systemd-unit, config...)."),
    ] = None,
) -> None:
    """Print a file shipped with drainer (unit, example configs, deploy files); list them
    when no NAME is given."""
    from drainer import share

    with _errors():
        if name is None:
            aliases = {path: alias for alias, path in share.ALIASES.items()}
            for path in share.names():
                typer.echo(f"{path}  ({aliases[path]})" if path in aliases else path)
            return
        typer.echo(share.find(name).read_text(), nl=False)


# -- notify ----------------------------------------------------------------------------------

notify_app = typer.Typer(
    no_args_is_help=True,
    rich_markup_mode=None,
    help="Webhook notifications (notify: in the config).",
)
app.add_typer(notify_app, name="notify")


@notify_app.command("test")
def notify_test(config: ConfigOpt = DEFAULT_CONFIG) -> None:
    """Send a test notice to every configured webhook, once, and say how each went
    (exit 1 if any failed)."""
    from drainer.notify.outbox import test_webhooks

    with _errors():
        results = test_webhooks(_load(config))
    for webhook, outcome in results:
        typer.echo(f"{webhook.label}: {'delivered' if outcome.ok else 'FAILED'} ({outcome.detail})")
    failed = sum(not outcome.ok for _, outcome in results)
    if failed:
        _say(f"{failed} of {len(results)} webhooks did not take the test notice")
        raise typer.Exit(1)


# -- budget --------------------------------------------------------------------------------


@budget_app.command("status")
def budget_status(config: ConfigOpt = DEFAULT_CONFIG, as_json: JsonOpt = False) -> None:
    """Holders of every pool: node, kind, age, over-budget marks (STALE without quorum)."""
    from drainer.budget.operate import status_data, status_lines

    with _errors():
        data = status_data(_load(config))
    if as_json:
        typer.echo(json.dumps(data, indent=2))
    else:
        for line in status_lines(data):
            typer.echo(line)
    raise typer.Exit(1 if data["stale"] else 0)


@budget_app.command("release")
def budget_release(
    node_name: Annotated[str, typer.Argument(metavar="NODE", help="The node to free.")],
    config: ConfigOpt = DEFAULT_CONFIG,
) -> None:
    """Free every slot NODE holds now (a node gone for good; its lease would free them)."""
    from drainer.budget.operate import release

    with _errors():
        freed = release(_load(config), node_name)
    typer.echo(f"{node_name}: {freed} slot(s) released")


# -- demo and the fake metadata service ------------------------------------------------------


class Cloud(StrEnum):
    """The clouds whose fake metadata service drainer ships (demo, fake-imds)."""

    AZURE = "azure"
    AWS = "aws"
    GCP = "gcp"


CloudOpt = Annotated[Cloud, typer.Option("--cloud", help="Whose metadata service.")]


@app.command()
def demo(
    haproxy: Annotated[
        bool, typer.Option("--haproxy/--mock", help="Use a real HAProxy when installed.")
    ] = True,
    cloud: CloudOpt = Cloud.AZURE,
) -> None:
    """Run a whole maintenance on a simulated VM, in under a minute."""
    from drainer.demo import run_demo

    with _errors():
        raise typer.Exit(run_demo(use_haproxy=haproxy, cloud=cloud.value))


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
    from drainer.serve.http import serve as run_serve

    with _errors():
        code = run_serve(config)
    raise typer.Exit(code)


def _fake_service(cloud: Cloud, host: str, port: int, name: str) -> FakeIMDS | FakeGCP | FakeAWS:
    if cloud is Cloud.GCP:
        from drainer.testing.fake_gcp import FakeGCP

        return FakeGCP(host=host, port=port, instance={"instance/name": name})
    if cloud is Cloud.AWS:
        from drainer.testing.fake_aws import FakeAWS

        return FakeAWS(host=host, port=port, local_hostname=name)
    from drainer.testing.fake_imds import FakeIMDS

    fake = FakeIMDS(host=host, port=port)
    fake.set_compute(name=name)
    return fake


@app.command("fake-imds")
def fake_imds(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port to listen on.")] = 8169,
    name: Annotated[str, typer.Option(help="The VM name the metadata service reports.")] = "web-1",
    cloud: CloudOpt = Cloud.AZURE,
) -> None:
    """Serve a fake cloud metadata service (maintenance notices + a control API under
    /fake/) for tests: Azure's Scheduled Events, AWS's IMDS or Google Cloud's metadata
    server (--name: the VM name, AWS's local-hostname, GCE's instance name)."""
    with _errors():
        try:
            fake = _fake_service(cloud, host, port, name)
        except ValueError as exc:
            raise ConfigError(f"fake-imds: {exc}") from exc
        try:
            fake.start()
        except OSError as exc:
            raise DrainerError(
                f"fake-imds: cannot listen on {host}:{port}: {exc.strerror or exc}"
                " (choose another --port or --host)"
            ) from exc
    typer.echo(f"fake metadata service on {fake.url} (control API under /fake/)", err=True)
    try:
        fake.serve_forever()
    finally:
        fake.stop()


# -- the command line ------------------------------------------------------------------------

_GLOBAL_FLAGS = frozenset({"--debug"})
_GLOBAL_VALUED = frozenset({"--log-format", "--lock-timeout"})
_CONFIG = frozenset({"-c", "--config"})


def _reorder(argv: list[str]) -> list[str]:
    """Global options anywhere, as typer wants them: ``--debug``, ``--log-format`` and
    ``--lock-timeout`` before the command, ``-c/--config`` at the end (after the command
    and a subcommand such as ``config check``)."""
    front: list[str] = []
    rest: list[str] = []
    config: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        name, eq, _ = arg.partition("=")
        if arg == "--":
            rest += argv[i:]
            break
        taken = argv[i : i + (1 if eq else 2)]
        if arg in _GLOBAL_FLAGS:
            front.append(arg)
        elif name in _GLOBAL_VALUED:
            front += taken
            i += len(taken) - 1
        elif name in _CONFIG:
            config += taken
            i += len(taken) - 1
        elif arg.startswith("-c") and not arg.startswith("--"):  # -cFILE
            config.append(arg)
        else:
            rest.append(arg)
        i += 1
    return front + rest + config


def _command(args: list[str]) -> str:
    """The command in ``_reorder``'s output: the first word after the global options."""
    i = 0
    while i < len(args):
        name, eq, _ = args[i].partition("=")
        if args[i] in _GLOBAL_FLAGS:
            i += 1
        elif name in _GLOBAL_VALUED:
            i += 1 if eq else 2
        else:
            return args[i]
    return ""


def main() -> None:
    from drainer import early

    args = _reorder(sys.argv[1:])
    if _command(args) == "run":  # before anything heavy loads (see drainer.early)
        early.hold()
    else:
        early.release()
    try:
        app(args=args, prog_name="drainer")
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:  # a bug of ours: say so in one line unless --debug
        if _options_seen.debug:
            raise
        typer.echo(
            f"drainer: unexpected error: {type(exc).__name__}: {exc} "
            "(run again with --debug for the details, and please report it)",
            err=True,
        )
        sys.exit(1)
