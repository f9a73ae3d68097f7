#!/usr/bin/env bash
# Runs the whole test suite on a fresh machine, installing what it needs first
# (setup.sh: haproxy and nginx with apt-get when missing, Python packages in .venv).
# Extra arguments go to pytest (e.g. ./test.sh -k haproxy).
set -euo pipefail
cd "$(dirname "$0")"
./setup.sh

.venv/bin/ruff check drainer tests bench
.venv/bin/mypy
.venv/bin/lint-imports --no-cache  # the layers in .importlinter
status=0
.venv/bin/python -m pytest "$@" || status=$?
if [ "$status" -eq 5 ]; then
  echo "test.sh: pytest collected no tests" >&2
  status=0
fi
exit "$status"
