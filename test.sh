#!/usr/bin/env bash
# Runs the whole test suite on a fresh machine, installing what it needs first:
# Debian's haproxy and nginx (apt-get, when missing), then drainer and its test
# dependencies in ./.venv. Extra arguments go to pytest (e.g. ./test.sh -k haproxy).
set -euo pipefail
cd "$(dirname "$0")"

missing=()
for tool in haproxy nginx; do
  command -v "$tool" >/dev/null 2>&1 || [ -x "/usr/sbin/$tool" ] || missing+=("$tool")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "test.sh: ${missing[*]} missing; run as root or install them with apt-get" >&2
    exit 1
  fi
  echo "test.sh: installing ${missing[*]} with apt-get" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

python3 -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'

.venv/bin/ruff check drainer tests bench
.venv/bin/mypy
status=0
.venv/bin/python -m pytest "$@" || status=$?
if [ "$status" -eq 5 ]; then
  echo "test.sh: pytest collected no tests" >&2
  status=0
fi
exit "$status"
