#!/bin/sh
# Installs drainer the way deploy/systemd/drainer.service expects it (README, "Install"):
#
#   sudo sh deploy/install.sh PACKAGE      PACKAGE: what pip installs, e.g. a wheel
#                                          (drainer-0.1.0-py3-none-any.whl) or a git URL
#   sudo sh install.sh                     keep the drainer already in /opt/drainer
#                                          (cloud-init: `drainer print install-script | sh`)
#
# 1. a venv in /opt/drainer (python3 >= 3.10; Debian/Ubuntu: apt-get install python3-venv)
#    with drainer in it;
# 2. a system user and group `drainer`, added to the group `haproxy` when it exists
#    (Debian's /run/haproxy is set-group-id haproxy: its admin.sock is the group's);
# 3. /usr/local/bin/drainer, which runs the command line as that user;
# 4. /etc/drainer/drainer.yaml (root:drainer 0640) from configs/drainer.yaml when there
#    is none: edit it, then `drainer check`;
# 5. /etc/systemd/system/drainer.service, and `systemctl daemon-reload`.
# It starts nothing: `systemctl enable --now drainer` once the configuration is right.
# Safe to run again (an upgrade: give the new PACKAGE); it never overwrites a
# configuration. DESTDIR=DIR stages every file under DIR instead (no user, no
# systemctl): for packaging, and for the tests.
set -eu

destdir=${DESTDIR:-}
venv=$destdir/opt/drainer
python=${PYTHON:-python3}

say() { echo "install.sh: $*" >&2; }

if [ $# -gt 0 ]; then
    if [ ! -x "$venv/bin/python" ]; then
        "$python" -c 'import sys; sys.exit(sys.version_info < (3, 10))' || {
            say "$python is older than 3.10; drainer needs 3.10 or newer"
            exit 2
        }
        "$python" -m venv "$venv" || {
            say "cannot make a venv with $python (Debian/Ubuntu: apt-get install python3-venv)"
            exit 1
        }
    fi
    # shellcheck disable=SC2086  # PIP_OPTIONS: several options, split on purpose
    "$venv/bin/python" -m pip install --upgrade --quiet --disable-pip-version-check \
        ${PIP_OPTIONS:-} "$1"
fi
drainer=$venv/bin/drainer
if [ ! -x "$drainer" ]; then
    say "no drainer in $venv: give the package to install (a wheel, or a pip requirement)"
    exit 2
fi

if [ -z "$destdir" ]; then
    getent group drainer >/dev/null || groupadd --system drainer
    getent passwd drainer >/dev/null || useradd --system --gid drainer \
        --home-dir /var/lib/drainer --no-create-home --shell /usr/sbin/nologin \
        --comment "drainer sidecar" drainer
    if getent group haproxy >/dev/null; then
        usermod --append --groups haproxy drainer
    fi
fi

install -d -m 0755 "$destdir/usr/local/bin" "$destdir/etc/drainer" "$destdir/etc/systemd/system"
"$drainer" print deploy/systemd/drainer-cli >"$destdir/usr/local/bin/drainer.new"
chmod 0755 "$destdir/usr/local/bin/drainer.new"
mv "$destdir/usr/local/bin/drainer.new" "$destdir/usr/local/bin/drainer"

config=$destdir/etc/drainer/drainer.yaml
if [ ! -e "$config" ]; then
    "$drainer" print config >"$config.new"
    chmod 0640 "$config.new"
    [ -n "$destdir" ] || chgrp drainer "$config.new"
    mv "$config.new" "$config"
    say "wrote $config (the defaults, a mock load balancer): edit it, then run drainer check"
fi

"$drainer" print systemd-unit >"$destdir/etc/systemd/system/drainer.service"
if [ -z "$destdir" ] && [ -d /run/systemd/system ]; then
    systemctl daemon-reload
fi
say "installed $("$drainer" --version); start it with: systemctl enable --now drainer"
