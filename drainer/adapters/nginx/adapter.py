"""The ``nginx`` load balancer (open source): one ``server`` line in a file drainer owns.

nginx has no runtime API, so draining is an edit of its configuration. drainer owns one
included file (or the region of it between ``# drainer:begin <region>`` and
``# drainer:end <region>``) and, in it, touches only the line ``server <address> ...;``
of its node inside ``upstream <name> { ... }``: it adds or removes the ``down``
parameter and keeps every other byte. ``down`` (not deleting the line) keeps the
``hash``/``ip_hash`` mapping of the other servers stable.

A ``file`` that is a symlink (``sites-enabled/x -> ../sites-available/x``) is resolved
on every call: drainer reads and replaces the file the link points to, keeps its lock
and temporary file next to that one, and leaves the link a link.

Every edit is a transaction, serialized by an exclusive ``flock`` on
``.<file>.drainer.lock`` next to the file (so the daemon, the CLI and ``drainer serve``
acting for several nodes never interleave):

    write a temporary file, fsync, rename  ->  nginx -t  ->  reload (SIGHUP the master)
    ->  confirm: a worker that was not there before runs, and every worker of before is
        gone or "shutting down" (a reload can be accepted and still fail, e.g. a bind)

On any failure (and on KeyboardInterrupt/SystemExit) the previous bytes are renamed back
and the error says why (``nginx -t``'s output, or the error log lines of the reload).

What nginx runs now is kept in a small record under the state directory, shared by every
instance that edits the same file: for each ``(upstream, address)`` the server line as
the last confirmed reload applied it, the workers (pid and start time, so a reused pid
is never mistaken for one) that reload started, for each drained server the workers
that may still hold its connections (those alive just before its drain reload), and
``pending`` while an edit has begun and its reload is not confirmed.
``state()`` reads the record, the file and /proc, so any process sees the same thing:

- an edit is pending, or nginx's serving workers are still the recorded generation:
  nginx runs the recorded line; otherwise someone reloaded or restarted it since, and
  it runs the file's line;
- that line without ``down``: IN_SERVICE;
- with ``down`` and old workers still alive: DRAINING, ``sessions`` = how many;
- with ``down`` and the old workers gone: OUT (drained).

So a file reverted and reloaded by someone else reads IN_SERVICE and the core drains
again, and an edit whose reload never happened reads as what nginx really runs.

Crash behaviour: the record is saved with ``pending`` set before the rename, and
``pending`` is cleared only with the confirmed reload (a rollback restores the record of
before). Killed before the rename, the file is unchanged. Killed after it, the file has
the new line nginx may not have read, and ``state()`` reports the recorded line ("not
yet applied" in the detail) for as long as ``pending`` is set, even once the workers
change: a worker that dies is respawned by the master with the configuration it had, and
from /proc that looks like a reload. So an interrupted drain reads IN_SERVICE and an
interrupted put-back DRAINING or OUT, as nginx still runs them, and while ``pending`` is
set every ``drain``/``take_out``/``put_back`` runs the whole transaction again, whatever
the file says: an extra reload is the only cost. The price: until drainer's next edit,
a reload by someone else goes unnoticed (``state()`` keeps the recorded line).
A stale temporary file is overwritten by the next edit (both dot-files: an
``include dir/*.conf`` never reads them). ``take_out(kill=True)`` sends SIGTERM to the old
workers that are still "shutting down": that closes *every* connection they still hold,
to all upstreams; prefer ``worker_shutdown_timeout`` in nginx.

Needs Linux (/proc) and nginx running with a master process and its pid file: without
them every call raises TransientAdapterError ("nginx is not running").
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import field_validator

from drainer._files import FileLock, LockTimeout, write_atomically
from drainer._types import Duration
from drainer.adapters._state import load_json, save_json
from drainer.adapters.base import AdapterConfig, AdapterContext, AdapterPlugin, LoadBalancer
from drainer.adapters.checks import Check, attempt
from drainer.adapters.nginx.process import NginxProgram, alive, master, workers
from drainer.adapters.nginx.upstream import ServerLine, find_server, find_servers, is_down, set_down
from drainer.errors import PermanentAdapterError, TransientAdapterError
from drainer.model import LBStatus, LBView

__all__ = ["PLUGIN", "NginxConfig", "NginxLoadBalancer", "create"]

_NAME = re.compile(r"^[A-Za-z0-9_.:-]+$")
_ADDRESS = re.compile(r"^[^\s;#{}'\"]+$")


class NginxConfig(AdapterConfig):
    type: Literal["nginx"] = "nginx"
    file: Path  # the included file drainer owns (or holds the region below)
    region: str | None = None  # only edit between '# drainer:begin <region>' and '# drainer:end'
    upstream: str  # the upstream block's name
    server: str  # this node's address exactly as the server line writes it (host:port)
    nginx: Path = Path("/usr/sbin/nginx")  # for nginx -t
    conf: Path | None = None  # -c: nginx's main configuration file
    prefix: Path | None = None  # -p
    error_log: Path | None = None  # -e for nginx -t; its new lines explain a failed reload
    pid_file: Path = Path("/run/nginx.pid")  # the master's pid
    reload_command: list[str] | None = None  # default: SIGHUP to the master (nginx -s reload)
    test_timeout: Duration = 30.0
    reload_timeout: Duration = 10.0  # wait this long for the new workers
    lock_timeout: Duration = 30.0

    @field_validator("upstream", "region")
    @classmethod
    def _name(cls, value: str | None) -> str | None:
        if value is not None and not _NAME.match(value):
            raise ValueError(f"{value!r} is not a plain nginx name")
        return value

    @field_validator("server")
    @classmethod
    def _address(cls, value: str) -> str:
        if not _ADDRESS.match(value):
            raise ValueError(f"{value!r} is not an address as a server line writes it")
        return value


# -- the load balancer ------------------------------------------------------------------


@dataclass
class _Record:
    """What nginx runs, as far as drainer confirmed it (see the module docstring)."""

    applied: dict[str, str]  # "upstream address" -> server line
    old_workers: dict[str, list[tuple[int, int]]]  # "upstream address" -> (pid, start)
    workers: list[tuple[int, int]]  # the workers serving once that reload was confirmed
    # An edit began (set before its rename) and its reload is not confirmed yet: the file
    # may say what nginx has not read, and no change of workers proves that it has.
    pending: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "applied": self.applied,
            "old_workers": self.old_workers,
            "workers": self.workers,
            "pending": self.pending,
        }


@dataclass(frozen=True)
class _Files:
    """The configured file with its symlinks resolved, and what drainer keeps beside it."""

    real: Path  # what drainer reads and replaces: a symlink to it stays a symlink
    tmp: Path
    lock: Path
    record: Path


class NginxLoadBalancer(LoadBalancer):
    def __init__(
        self,
        config: NginxConfig,
        *,
        name: str,
        state_dir: Path,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self._config = config
        self._key = f"{config.upstream} {config.server}"
        self._state_dir = state_dir
        self._sleep = sleep
        self._clock = clock
        self._nginx = NginxProgram(config, sleep=sleep, clock=clock)

    # -- files --------------------------------------------------------------------------

    def _files(self) -> _Files:
        # Resolved on every call, not once for the instance: an operator may point a
        # sites-enabled link at another file while the daemon runs. The record is keyed
        # by the real file, so a link and its target configured apart share it (and the lock).
        real = Path(os.path.realpath(self._config.file))
        digest = hashlib.sha256(str(real).encode()).hexdigest()[:12]
        return _Files(
            real=real,
            tmp=real.parent / f".{real.name}.drainer.tmp",
            lock=real.parent / f".{real.name}.drainer.lock",
            record=self._state_dir / f"nginx-{real.name}-{digest}.json",
        )

    def _read(self, files: _Files) -> str:
        try:
            return files.real.read_text()
        except FileNotFoundError as exc:
            raise PermanentAdapterError(f"{self._config.file} does not exist") from exc
        except OSError as exc:
            raise TransientAdapterError(f"cannot read {files.real}: {exc.strerror}") from exc

    def _line(self, text: str) -> ServerLine:
        try:
            return find_server(
                text,
                upstream=self._config.upstream,
                address=self._config.server,
                region=self._config.region,
            )
        except ValueError as exc:
            raise PermanentAdapterError(f"{self._config.file}: {exc}") from exc

    def _servers(self, text: str) -> dict[str, str]:
        try:
            lines = find_servers(text, self._config.region)
        except ValueError as exc:
            raise PermanentAdapterError(f"{self._config.file}: {exc}") from exc
        return {f"{s.upstream} {s.address}": s.text.strip() for s in lines}

    def _write(self, files: _Files, text: str) -> None:
        try:  # nginx's file: it keeps its owner and mode
            write_atomically(files.real, text, keep_mode=True, tmp=files.tmp)
        except OSError as exc:
            raise TransientAdapterError(f"cannot write {files.real}: {exc.strerror}") from exc

    def _load_record(self, files: _Files) -> _Record | None:
        path = files.record
        data = load_json(path)
        if data is None:
            return None
        try:
            old = {k: [(int(p), int(s)) for p, s in v] for k, v in data["old_workers"].items()}
            workers = [(int(p), int(s)) for p, s in data["workers"]]
            pending = data.get("pending", False)  # absent from records of before it existed
            if not isinstance(pending, bool):
                raise TypeError(f"pending is {pending!r}")
            return _Record(dict(data["applied"]), old, workers, pending)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise PermanentAdapterError(f"{path} is damaged ({exc!r}); delete it") from exc

    def _save_record(self, files: _Files, record: _Record) -> None:
        save_json(files.record, record.to_json(), indent=1)

    @contextmanager
    def _locked(self, files: _Files) -> Iterator[None]:
        try:
            lock = FileLock(files.lock, mode=0o644)
        except OSError as exc:
            raise PermanentAdapterError(f"cannot open {files.lock}: {exc.strerror}") from exc
        with closing(lock):
            try:
                lock.acquire(
                    timeout=self._config.lock_timeout,
                    poll=0.02,
                    clock=self._clock,
                    sleep=self._sleep,
                )
            except LockTimeout:
                raise TransientAdapterError(
                    f"another edit of {self._config.file} has held its lock for "
                    f"{self._config.lock_timeout:.0f}s"
                ) from None
            yield

    # -- nginx --------------------------------------------------------------------------

    def _master(self) -> int:
        return master(self._config.pid_file)

    # -- the transaction ----------------------------------------------------------------

    def _running(self, record: _Record | None, master: int, line: str) -> str:
        """The node's server line as nginx runs it now, the file having ``line``.

        Until someone else reloads or restarts nginx, its workers are the generation of
        drainer's last confirmed reload and nginx runs the recorded line; once they are
        another generation, nginx has read the file since. Not while an edit is pending:
        the master respawning a dead worker also changes the workers, with the old
        configuration, so the recorded line is the only one known to run until the next
        ``_apply`` reloads.
        """
        if record is None:
            return line
        if record.pending:
            return record.applied.get(self._key, line)
        serving = {(w.pid, w.start) for w in workers(master) if not w.shutting_down}
        if serving != set(record.workers):
            return line
        return record.applied.get(self._key, line)

    def _apply(self, down: bool) -> None:
        files = self._files()
        with self._locked(files):
            if self._files() != files:
                raise TransientAdapterError(
                    f"{self._config.file} now links to another file; try again"
                )
            text = self._read(files)
            line = self._line(text)
            master = self._master()
            record = self._load_record(files)
            running = self._running(record, master, line.text.strip())
            if record is None:  # never edited by drainer: nginx runs what the file says
                serving = [(w.pid, w.start) for w in workers(master) if not w.shutting_down]
                record = _Record(self._servers(text), {}, serving)
                self._save_record(files, record)
            new_text = set_down(
                text,
                upstream=self._config.upstream,
                address=self._config.server,
                down=down,
                region=self._config.region,
            )
            if new_text == text and running == line.text.strip() and not record.pending:
                return  # already so, and applied: nothing to do
            before = _Record(
                dict(record.applied), dict(record.old_workers), record.workers, record.pending
            )
            if down:  # every worker alive now may still hold connections to the node
                kept = [w for w in record.old_workers.get(self._key, []) if alive(w)]
                kept += [(w.pid, w.start) for w in workers(master) if (w.pid, w.start) not in kept]
                record.old_workers[self._key] = kept
            else:
                record.old_workers.pop(self._key, None)
            record.pending = True
            self._save_record(files, record)  # the intent, before nginx is touched
            reloaded = False
            try:
                if new_text != text:
                    self._write(files, new_text)
                self._nginx.test()
                reloaded = True
                generation = self._nginx.reload(master)
            except BaseException as exc:
                self._rollback(files, text=text, record=before, reloaded=reloaded, master=master)
                if isinstance(exc, TransientAdapterError | PermanentAdapterError):
                    kind = type(exc)
                    raise kind(f"{exc}; {self._config.file} rolled back") from exc
                raise
            record.applied = self._servers(new_text)
            record.workers = generation
            record.pending = False
            self._save_record(files, record)

    def _rollback(
        self, files: _Files, *, text: str, record: _Record, reloaded: bool, master: int
    ) -> None:
        # The record of before (pending or not, as it was) only once the file is back:
        # if the write fails, the intent stays pending and the next edit runs again.
        with suppress(TransientAdapterError):
            self._write(files, text)
            self._save_record(files, record)
        if reloaded:  # the reload may still land later: make nginx converge on the file
            with suppress(TransientAdapterError, PermanentAdapterError):
                self._nginx.signal_reload(master)

    # -- LoadBalancer -------------------------------------------------------------------

    def state(self) -> LBView:
        files = self._files()
        line = self._line(self._read(files)).text.strip()
        master = self._master()
        record = self._load_record(files)
        applied = self._running(record, master, line)
        where = f"upstream {self._config.upstream} in {self._config.file}"
        pending = "" if applied == line else f"; the file has '{line}', not yet applied"
        if not is_down(applied):
            return LBView(LBStatus.IN_SERVICE, 0, f"{applied} ({where}){pending}")
        old = [] if record is None else record.old_workers.get(self._key, [])
        left = sum(1 for w in old if alive(w))
        if left:
            detail = f"{applied} ({where}); {left} old workers still finishing{pending}"
            return LBView(LBStatus.DRAINING, left, detail)
        return LBView(LBStatus.OUT, 0, f"{applied} ({where}); old workers gone{pending}")

    def drain(self) -> None:
        self._apply(down=True)

    def take_out(self, *, kill: bool) -> None:
        self._apply(down=True)
        if not kill:
            return
        record = self._load_record(self._files())
        master = self._master()
        old = set(record.old_workers.get(self._key, [])) if record else set()
        for worker in workers(master):
            if (worker.pid, worker.start) in old and worker.shutting_down:
                with suppress(OSError):
                    os.kill(worker.pid, signal.SIGTERM)

    def put_back(self) -> bool:
        self._apply(down=False)
        return True

    def preflight(self) -> list[Check]:
        """nginx is installed, the owned file holds the node's server line and can be
        replaced, ``nginx -t`` passes and the pid file names a running nginx master.
        Changes nothing."""

        def binary() -> str:
            path = self._config.nginx
            if not (path.is_file() and os.access(path, os.X_OK)):
                raise PermanentAdapterError(f"{path} not found or not executable: set `nginx`")
            return str(path)

        def owned_file() -> str:
            files = self._files()
            line = self._line(self._read(files)).text.strip()
            for path, what in ((files.real, "write"), (files.real.parent, "create files in")):
                if not os.access(path, os.W_OK):
                    raise PermanentAdapterError(f"drainer may not {what} {path}")
            return f"'{line}' in upstream {self._config.upstream} of {files.real}"

        def test() -> str:
            self._nginx.test()
            return "the configuration is valid"

        def running() -> str:
            return f"master pid {self._master()} from {self._config.pid_file}"

        return [
            attempt(f"{self.name}: nginx binary", binary),
            attempt(f"{self.name}: owned file", owned_file),
            attempt(f"{self.name}: nginx -t", test),
            attempt(f"{self.name}: nginx running", running),
        ]


def create(config: NginxConfig, context: AdapterContext) -> list[LoadBalancer]:
    name = config.name or f"nginx-{config.upstream}"
    return [NginxLoadBalancer(config, name=name, state_dir=context.state_dir)]


PLUGIN = AdapterPlugin(config_model=NginxConfig, create=create, node_keys=("server",))
