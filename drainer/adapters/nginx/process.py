"""nginx, the running program: its processes read from Linux /proc, and the two things
drainer makes it do, ``nginx -t`` and a reload.

The master is the one its pid file names (and only if /proc says it is an nginx master:
a stale pid is never signalled). Workers are known by pid *and* start time (so a reused
pid is never mistaken for one), with whether they are "shutting down" (an old generation
finishing its connections). A reload is confirmed by its workers: see ``reload``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from drainer.errors import PermanentAdapterError, TransientAdapterError

if TYPE_CHECKING:
    from drainer.adapters.nginx.adapter import NginxConfig

__all__ = ["NginxProgram", "Worker", "alive", "master", "stat", "workers"]

_ERROR_LEVELS = ("[emerg]", "[alert]", "[crit]", "[error]")


@dataclass(frozen=True)
class Worker:
    pid: int
    start: int  # start time in clock ticks since boot: with pid, one process for ever
    shutting_down: bool


def stat(pid: int) -> tuple[int, int] | None:
    """(ppid, start time) of a live process, None if it is gone (or a zombie)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rfind(")") + 2 :].split()
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[1]), int(fields[19])


def title(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except (OSError, UnicodeDecodeError):
        return ""


def workers(master: int) -> list[Worker]:
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        found = stat(int(entry))
        if found is None or found[0] != master:
            continue
        name = title(int(entry))
        if name.startswith("nginx: worker process"):
            out.append(Worker(int(entry), found[1], name.endswith("is shutting down")))
    return out


def alive(worker: tuple[int, int]) -> bool:
    found = stat(worker[0])
    return found is not None and found[1] == worker[1]


def master(pid_file: Path) -> int:
    """The pid of the running nginx master named by ``pid_file``; TransientAdapterError
    ("nginx is not running") when there is none."""
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError) as exc:
        raise TransientAdapterError(f"nginx is not running (no pid in {pid_file})") from exc
    if stat(pid) is None:
        raise TransientAdapterError(f"nginx is not running (pid {pid} from {pid_file})")
    # A stale pid file whose PID now belongs to another process must never be
    # signalled: SIGHUP would kill it.
    try:
        name = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError as exc:
        raise TransientAdapterError(f"nginx is not running (pid {pid} has gone)") from exc
    if not name.startswith(b"nginx: master process"):
        other = name.split(b"\0")[0].decode(errors="replace")[:60]
        raise TransientAdapterError(
            f"nginx is not running: pid {pid} from {pid_file} is another process ({other!r})"
        )
    return pid


class NginxProgram:
    """``nginx -t`` and a reload, as ``config`` says to run them."""

    def __init__(
        self,
        config: NginxConfig,
        *,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._config = config
        self._sleep = sleep
        self._clock = clock

    def _nginx_args(self) -> list[str]:
        args = [str(self._config.nginx)]
        if self._config.prefix is not None:
            args += ["-p", str(self._config.prefix)]
        if self._config.conf is not None:
            args += ["-c", str(self._config.conf)]
        if self._config.error_log is not None:
            args += ["-e", str(self._config.error_log)]
        return args

    def _run(self, args: list[str], what: str) -> subprocess.CompletedProcess[str]:
        try:
            return subprocess.run(
                args, capture_output=True, text=True, timeout=self._config.test_timeout, check=False
            )
        except FileNotFoundError as exc:
            raise PermanentAdapterError(f"{what}: {args[0]} not found") from exc
        except subprocess.TimeoutExpired as exc:
            raise TransientAdapterError(
                f"{what} did not finish in {self._config.test_timeout:.0f}s"
            ) from exc
        except OSError as exc:
            raise TransientAdapterError(f"{what}: {exc.strerror}") from exc

    def test(self) -> None:
        done = self._run([*self._nginx_args(), "-t", "-q"], "nginx -t")
        if done.returncode != 0:
            output = " ".join((done.stderr or done.stdout).split())
            raise PermanentAdapterError(f"nginx -t rejected the configuration: {output}")

    def _log_size(self) -> int:
        if self._config.error_log is None:
            return 0
        try:
            return self._config.error_log.stat().st_size
        except OSError:
            return 0

    def _log_errors(self, since: int) -> str:
        if self._config.error_log is None:
            return "set error_log to see nginx's reason here"
        try:
            with open(self._config.error_log, "rb") as log:
                log.seek(since)
                new = log.read(64 * 1024).decode(errors="replace")
        except OSError:
            return f"{self._config.error_log} unreadable"
        errors = [line for line in new.splitlines() if any(lvl in line for lvl in _ERROR_LEVELS)]
        return "; ".join(errors[-3:]) or f"nothing new in {self._config.error_log}"

    def signal_reload(self, master: int) -> None:
        if self._config.reload_command is not None:
            done = self._run(self._config.reload_command, "reload")
            if done.returncode != 0:
                output = " ".join((done.stderr or done.stdout).split())
                raise TransientAdapterError(
                    f"{' '.join(self._config.reload_command)} failed: {output}"
                )
            return
        try:
            os.kill(master, signal.SIGHUP)
        except OSError as exc:
            raise TransientAdapterError(
                f"cannot signal the nginx master {master}: {exc.strerror}"
            ) from exc

    def reload(self, master: int) -> list[tuple[int, int]]:
        """Reload and wait until new workers serve (returned); raise if they never do."""
        before = workers(master)
        since = self._log_size()
        self.signal_reload(master)
        old = {(w.pid, w.start) for w in before}
        serving_before = {(w.pid, w.start) for w in before if not w.shutting_down}
        deadline = self._clock() + self._config.reload_timeout
        while True:
            now = workers(master)
            new = [w for w in now if (w.pid, w.start) not in old]
            still = [w for w in now if (w.pid, w.start) in serving_before and not w.shutting_down]
            if new and not still:
                settled = self._clock() + 1.0  # let the master fork the whole generation
                while len(new) < len(serving_before) and self._clock() < settled:
                    self._sleep(0.02)
                    new = [w for w in workers(master) if (w.pid, w.start) not in old]
                return [(w.pid, w.start) for w in new if not w.shutting_down]
            if self._clock() >= deadline:
                raise TransientAdapterError(
                    f"nginx accepted the reload but did not apply it within "
                    f"{self._config.reload_timeout:.0f}s (no new workers): "
                    f"{self._log_errors(since)}"
                )
            self._sleep(0.05)
