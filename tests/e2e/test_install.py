"""The documented install, for real: a wheel built from this checkout, installed by
``deploy/install.sh`` into a staging root (``DESTDIR``: no user, no systemctl), then
``systemd-analyze verify`` on the unit in that root, where the binaries it runs exist,
and ``systemd-analyze security --offline=yes`` on the unit file. Neither needs a running
systemd: ``verify`` loads the unit into a test-mode manager that reads ``--root`` (which
must hold systemd's own units too, or it fails on ``sysinit.target not found``).

The staged venv gets drainer from the wheel (``--no-deps``); its dependencies come from
this project's venv through a ``.pth`` file, as nothing is downloaded in the tests.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
import yaml

from drainer import share
from drainer.config import Config, load_config
from drainer.polling import MAX_BACKOFF

ROOT = Path(__file__).parents[2]
UNIT = ROOT / "deploy" / "systemd" / "drainer.service"
INSTALL = ROOT / "deploy" / "install.sh"
ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze not installed")


def unit_settings(text: str) -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value)
    return settings


def seconds(value: str) -> float:
    match = re.fullmatch(r"(\d+)(s|min)", value)
    assert match, f"write {value!r} as Ns or Nmin"
    return int(match[1]) * (60 if match[2] == "min" else 1)


def shipped_in_repo() -> list[str]:
    found = []
    for top in share.DIRECTORIES:
        for path in (ROOT / top).rglob("*"):
            relative = path.relative_to(ROOT)
            if path.is_file() and not any(
                p.startswith(".") or p == "__pycache__" for p in relative.parts
            ):
                found.append(relative.as_posix())
    return sorted(found)


def install(destdir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DESTDIR": str(destdir), "PIP_OPTIONS": "--no-deps --no-index"}
    return subprocess.run(
        ["sh", str(INSTALL), *args], env=env, capture_output=True, text=True, timeout=300
    )


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert built.returncode == 0, built.stderr
    (found,) = out.glob("drainer-*.whl")
    return found


@pytest.fixture(scope="module")
def staged(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A root where install.sh put drainer, as on a VM, plus what verify needs of the
    system: systemd's own units (sysinit.target...) and /bin/kill (ExecReload)."""
    root = tmp_path_factory.mktemp("root")
    venv = root / "opt" / "drainer"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    (site,) = venv.glob("lib/python3*/site-packages")
    (site / "project-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    done = install(root, str(wheel))
    assert done.returncode == 0, done.stderr
    shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    (root / "bin").mkdir(exist_ok=True)
    shutil.copy2(shutil.which("kill") or "/bin/kill", root / "bin" / "kill")
    return root


def staged_drainer(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(root / "opt/drainer/bin/drainer"), *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=root,  # not the checkout: drainer must come from the wheel
    )


# -- the wheel -----------------------------------------------------------------------------------


def test_the_wheel_carries_every_file_of_configs_and_deploy(staged: Path) -> None:
    listed = staged_drainer(staged, "print")
    assert listed.returncode == 0, listed.stderr
    names = [line.split()[0] for line in listed.stdout.splitlines()]
    assert names == shipped_in_repo()
    (site,) = staged.glob("opt/drainer/lib/python3*/site-packages")
    for name in names:
        assert (site / "drainer" / "_share" / name).read_bytes() == (ROOT / name).read_bytes()


def test_the_wheel_declares_its_license_and_pythons(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as whl:
        (metadata,) = [n for n in whl.namelist() if n.endswith(".dist-info/METADATA")]
        text = whl.read(metadata).decode()
        (license_file,) = [n for n in whl.namelist() if n.endswith("/LICENSE")]
        assert whl.read(license_file) == (ROOT / "LICENSE").read_bytes()
    assert "License: Apache-2.0" in text
    assert "Classifier: License :: OSI Approved :: Apache Software License" in text
    assert "Classifier: Programming Language :: Python :: 3.10" in text
    assert "Requires-Python: >=3.10" in text
    assert "Project-URL" not in text  # no public address yet: none rather than a made-up one
    license_text = (ROOT / "LICENSE").read_text()
    assert "Apache License\n                           Version 2.0, January 2004" in license_text
    assert license_text.rstrip().endswith("limitations under the License.")


@pytest.mark.parametrize(
    ("name", "path"),
    [
        ("systemd-unit", "deploy/systemd/drainer.service"),
        ("config", "configs/drainer.yaml"),
        ("haproxy-agent.yaml", "configs/haproxy-agent.yaml"),
        ("deploy/cloud-init/user-data.yaml", "deploy/cloud-init/user-data.yaml"),
    ],
)
def test_drainer_print_from_the_wheel(staged: Path, name: str, path: str) -> None:
    printed = staged_drainer(staged, "print", name)
    assert printed.returncode == 0, printed.stderr
    assert printed.stdout == (ROOT / path).read_text()


def test_drainer_print_says_what_it_does_not_know(staged: Path) -> None:
    unknown = staged_drainer(staged, "print", "nothing-like-this")
    assert unknown.returncode == 2
    assert "no shipped file 'nothing-like-this'" in unknown.stderr
    ambiguous = staged_drainer(staged, "print", "README.md")
    assert ambiguous.returncode == 2
    assert "deploy/haproxy/README.md" in ambiguous.stderr
    assert "Traceback" not in unknown.stderr + ambiguous.stderr


# -- install.sh ------------------------------------------------------------------------------


def test_install_lays_out_what_the_unit_runs(staged: Path) -> None:
    unit = (staged / "etc/systemd/system/drainer.service").read_text()
    assert unit == UNIT.read_text()
    for command in unit_settings(unit)["ExecStart"] + unit_settings(unit)["ExecStartPre"]:
        binary = staged / command.split()[0].lstrip("/")
        assert os.access(binary, os.X_OK), f"{command}: not in the install"
    config = staged / "etc/drainer/drainer.yaml"
    assert stat.S_IMODE(config.stat().st_mode) == 0o640
    assert config.read_text() == (ROOT / "configs/drainer.yaml").read_text()
    checked = staged_drainer(staged, "config", "check", "-c", str(config))
    assert checked.returncode == 0, checked.stderr
    cli = staged / "usr/local/bin/drainer"
    assert os.access(cli, os.X_OK)
    assert cli.read_text() == (ROOT / "deploy/systemd/drainer-cli").read_text()


def test_install_again_keeps_the_configuration(staged: Path) -> None:
    config = staged / "etc/drainer/drainer.yaml"
    before = config.read_text()
    config.write_text(before + "# edited by the operator\n")
    try:
        again = install(staged)  # no package: the venv's drainer stays
        assert again.returncode == 0, again.stderr
        assert config.read_text().endswith("# edited by the operator\n")
    finally:
        config.write_text(before)


@pytest.mark.parametrize("script", ["deploy/install.sh", "deploy/systemd/drainer-cli"])
def test_the_shell_scripts_parse_with_a_posix_shell(script: str) -> None:
    """Ubuntu's /bin/sh is dash: no bashisms."""
    dash = shutil.which("dash") or "sh"
    parsed = subprocess.run([dash, "-n", str(ROOT / script)], capture_output=True, text=True)
    assert parsed.returncode == 0, parsed.stderr


def test_install_without_a_package_or_a_venv_says_what_to_give(tmp_path: Path) -> None:
    done = install(tmp_path)
    assert done.returncode == 2
    assert "give the package to install" in done.stderr


# -- systemd-analyze -----------------------------------------------------------------------------


def verify(root: Path, unit: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(ANALYZE), "verify", "--man=no", f"--root={root}", unit],
        capture_output=True,
        text=True,
        timeout=60,
    )


@needs_analyze
def test_systemd_analyze_verify_passes_on_the_installed_unit(staged: Path) -> None:
    verified = verify(staged, "drainer.service")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert verified.stdout + verified.stderr == ""


@needs_analyze
def test_the_serve_unit_runs_the_same_install(staged: Path) -> None:
    """drainer serve's unit (deploy/nginx/) runs drainer from /opt/drainer too."""
    text = (ROOT / "deploy/nginx/drainer-serve.service").read_text()
    # not the wrapper in /usr/local/bin, which would run it as the sidecar's user
    assert unit_settings(text)["ExecStart"][0].startswith("/opt/drainer/bin/drainer serve ")
    unit = staged / "etc/systemd/system/drainer-serve.service"
    unit.write_text(text)
    try:
        verified = verify(staged, unit.name)
    finally:
        unit.unlink()
    assert verified.returncode == 0, verified.stdout + verified.stderr


@needs_analyze
def test_systemd_analyze_verify_fails_on_a_binary_the_install_lacks(
    staged: Path, tmp_path: Path
) -> None:
    """The check above can fail: the same root with the unit pointing elsewhere."""
    unit = staged / "etc/systemd/system/drainer-elsewhere.service"
    unit.write_text(UNIT.read_text().replace("/opt/drainer/bin/", "/usr/local/bin/nothere/"))
    try:
        verified = verify(staged, unit.name)
    finally:
        unit.unlink()
    assert verified.returncode != 0
    assert "/usr/local/bin/nothere/drainer is not executable" in verified.stderr


def exposure(unit: Path) -> tuple[int, float]:
    done = subprocess.run(
        [str(ANALYZE), "security", "--offline=yes", "--threshold=30", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d)", done.stdout)
    assert match, done.stdout + done.stderr
    return done.returncode, float(match[1])


@needs_analyze
def test_systemd_analyze_security_rates_the_unit_3_or_better(tmp_path: Path) -> None:
    code, level = exposure(UNIT)
    assert code == 0
    assert level <= 3.0
    # and the measure sees the sandbox: the same unit without it is rated unsafe
    bare = tmp_path / "drainer.service"
    kept = ("[", "#", "Description", "Wants", "After", "Type", "Exec", "WantedBy")
    bare.write_text(
        "\n".join(line for line in UNIT.read_text().splitlines() if line.startswith(kept))
    )
    code, level = exposure(bare)
    assert code != 0
    assert level > 9.0


# -- the unit against the code ---------------------------------------------------------------


def defaults() -> Config:
    return load_config(ROOT / "configs" / "drainer.yaml")


def test_the_watchdog_outlasts_the_slowest_pace_of_turns() -> None:
    """drainer run sends WATCHDOG=1 after every turn; turns come one poll interval apart,
    MAX_BACKOFF intervals while the metadata service refuses, plus a poll's retries (3
    attempts of source.timeout) and a health check. Twice that, at the defaults."""
    config = defaults()
    settings = unit_settings(UNIT.read_text())
    assert settings["Type"] == ["notify"]
    assert settings["NotifyAccess"] == ["main"]
    slowest = (
        MAX_BACKOFF * config.source.poll_interval + 3 * config.source.timeout + 2.0
    ) + config.health.http.timeout  # type: ignore[union-attr]
    assert seconds(settings["WatchdogSec"][0]) >= 2 * slowest


def test_the_unit_reloads_with_sighup_and_runs_as_its_own_user() -> None:
    settings = unit_settings(UNIT.read_text())
    assert settings["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert settings["User"] == ["drainer"]
    assert settings["StateDirectory"] == ["drainer"]
    assert str(defaults().state_dir) == "/var/lib/drainer"


def test_the_unit_lets_drainer_bind_its_default_ports() -> None:
    """SocketBindDeny=any: the agent's port (configs/haproxy-agent.yaml) and the metrics
    port (the default) must be the ones allowed."""
    allowed = set(unit_settings(UNIT.read_text())["SocketBindAllow"])
    agent = yaml.safe_load((ROOT / "configs/haproxy-agent.yaml").read_text())
    agent_port = agent["load_balancers"][0]["listen"].rsplit(":", 1)[1]
    metrics_port = str(defaults().metrics.listen).rsplit(":", 1)[1]
    assert allowed == {f"tcp:{agent_port}", f"tcp:{metrics_port}"}
