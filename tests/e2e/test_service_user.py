"""The install's user model, for real: ``drainer run`` as an unprivileged user (``nobody``
here, ``drainer`` on a VM) with the configuration readable only by its group and the
state in its own owner-only directory, as the unit and install.sh lay them out; and the
command line run by root through deploy/systemd/drainer-cli, which becomes that user,
so the state stays the service's. Without the wrapper, root's ``drainer drain`` leaves a
root-owned state.json that locks the service out (the last test shows it).

Needs root and setpriv (util-linux); every process is stopped by PID."""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from drainer.testing import FakeIMDS, wait_until

ROOT = Path(__file__).parents[2]
WRAPPER = ROOT / "deploy" / "systemd" / "drainer-cli"
DRAINER = Path(sys.executable).parent / "drainer"
USER, GROUP = "nobody", "nogroup"


def _usable() -> bool:
    try:
        pwd.getpwnam(USER)
        grp.getgrnam(GROUP)
    except KeyError:
        return False
    return os.geteuid() == 0 and shutil.which("setpriv") is not None and DRAINER.exists()


def _open_to_others(*paths: Path) -> bool:
    """Whether an unprivileged user can reach ``paths`` (the checkout and its venv): every
    directory above them searchable by others. A clone under a private directory (e.g.
    one made by ``mktemp -d``, mode 0700) is not, and nobody could run drainer from it."""
    for path in paths:
        for directory in (path.resolve(), *path.resolve().parents):
            if directory.is_dir() and not directory.stat().st_mode & stat.S_IXOTH:
                return False
    return True


pytestmark = [
    pytest.mark.skipif(not _usable(), reason="needs root, setpriv, nobody/nogroup"),
    pytest.mark.skipif(
        not _open_to_others(ROOT, Path(sys.executable).parent),
        reason="the checkout or its venv is under a directory other users cannot enter",
    ),
]


@dataclass
class Service:
    dir: Path
    config: Path
    state: Path
    log: Path
    wrapper: Path
    proc: subprocess.Popen[bytes]
    fake: FakeIMDS

    def owners(self) -> set[str]:
        return {pwd.getpwuid(p.stat().st_uid).pw_name for p in self.state.iterdir()}

    def phase(self) -> str:
        return str(yaml.safe_load((self.state / "state.json").read_text())["phase"])


@pytest.fixture
def service() -> Iterator[Service]:
    # a world-traversable directory: pytest's own tmp_path is root's alone
    top = Path(tempfile.mkdtemp(prefix="drainer-user-"))
    top.chmod(0o755)
    fake = FakeIMDS(rate_limit=None).start()
    proc: subprocess.Popen[bytes] | None = None
    try:
        state = top / "state"
        state.mkdir(mode=0o700)
        shutil.chown(state, USER, GROUP)  # what StateDirectory= does for User=
        boot_id = top / "boot_id"
        boot_id.write_text("boot-1\n")
        config = top / "drainer.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "node": {"boot_id_path": str(boot_id)},
                    "state_dir": str(state),
                    "source": {"endpoint": fake.url, "poll_interval": "200ms"},
                    "drain": {"timeout": "5s"},
                    "health": {"http": {"url": f"{fake.url}/metadata/instance/compute"}},
                    "load_balancers": [
                        {
                            "type": "mock",
                            "path": str(state / "mock.json"),
                            "sessions": 1,
                            "drain_seconds": "200ms",
                        }
                    ],
                    "metrics": {"listen": None},
                }
            )
        )
        config.chmod(0o640)  # root:drainer 0640, as install.sh writes it
        shutil.chown(config, "root", GROUP)
        text = WRAPPER.read_text()
        adapted = text.replace("--reuid=drainer --regid=drainer", f"--reuid={USER} --regid={GROUP}")
        adapted = adapted.replace("/opt/drainer/bin/drainer", str(DRAINER))
        assert adapted.count(str(DRAINER)) == 2 and USER in adapted, "the wrapper changed"
        wrapper = top / "drainer"
        wrapper.write_text(adapted)
        wrapper.chmod(0o755)
        log = top / "run.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [
                    "setpriv",
                    f"--reuid={USER}",
                    f"--regid={GROUP}",
                    "--init-groups",
                    "--",
                    str(DRAINER),
                    "run",
                    "-c",
                    str(config),
                ],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=top,
            )
        svc = Service(top, config, state, log, wrapper, proc, fake)
        wait_until(
            lambda: (state / "heartbeat.json").exists(),
            timeout=30,
            what="drainer run as nobody turns",
            describe=log.read_text,
        )
        yield svc
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        fake.stop()
        shutil.rmtree(top, ignore_errors=True)


def cli(*command: str, service: Service) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*command, "-c", str(service.config)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=service.dir,
    )


def test_drainer_runs_as_an_unprivileged_user(service: Service) -> None:
    assert service.proc.poll() is None, service.log.read_text()
    assert service.owners() == {USER}
    assert "Permission denied" not in service.log.read_text()


def test_root_through_the_wrapper_leaves_the_state_to_the_service(service: Service) -> None:
    done = cli(str(service.wrapper), "drain", "--wait", "--timeout", "20", service=service)
    assert done.returncode == 0, done.stdout + done.stderr
    assert service.owners() == {USER}
    wait_until(
        lambda: "by another process" in service.log.read_text(),
        timeout=20,
        what="the service sees the drain",
        describe=service.log.read_text,
    )
    status = cli(str(service.wrapper), "status", "--json", service=service)
    assert status.returncode in (0, 1), status.stderr
    assert "Permission denied" not in service.log.read_text()
    assert service.phase() == "held"  # a manual drain: out until `drainer undrain`


def test_root_without_the_wrapper_locks_the_service_out(service: Service) -> None:
    """Why the wrapper exists: the same command as root leaves root's files behind."""
    done = cli(str(DRAINER), "drain", service=service)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "root" in service.owners()
    wait_until(
        lambda: "Permission denied" in service.log.read_text(),
        timeout=20,
        what="the service cannot read root's state.json",
        describe=service.log.read_text,
    )
