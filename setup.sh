#!/usr/bin/env bash
# Installs what drainer's tests, demo and benchmarks need on a fresh machine:
# Debian's haproxy, nginx, prometheus (promtool), etcd-server, etcd-client,
# cloud-init and systemd (systemd-analyze), with apt-get when missing, then drainer and its test
# dependencies in ./.venv. test.sh and bench/run call it; it is safe to run again.
set -euo pipefail
cd "$(dirname "$0")"

# tool -> the Debian package that provides it
packages=(haproxy:haproxy nginx:nginx promtool:prometheus prometheus:prometheus
  etcd:etcd-server etcdctl:etcd-client cloud-init:cloud-init systemd-analyze:systemd)
missing=()
for pair in "${packages[@]}"; do
  tool=${pair%%:*} pkg=${pair#*:}
  if ! command -v "$tool" >/dev/null 2>&1 && [ ! -x "/usr/sbin/$tool" ]; then
    case " ${missing[*]-} " in *" $pkg "*) ;; *) missing+=("$pkg") ;; esac
  fi
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup.sh: ${missing[*]} missing; run as root or install them with apt-get" >&2
    exit 1
  fi
  echo "setup.sh: installing ${missing[*]} with apt-get" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

python3 -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'
