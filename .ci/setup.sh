#!/usr/bin/env bash
# Prepares this checkout on a Debian machine: the Debian packages the tests and the demo
# run for real (prometheus, prometheus-alertmanager: promtool and amtool come with them)
# and .venv with the project and its test extra. Safe to run again: it skips what is done.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

missing=()
for bin in prometheus promtool prometheus-alertmanager amtool; do
  command -v "$bin" >/dev/null 2>&1 || missing+=("$bin")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing Debian packages prometheus prometheus-alertmanager (missing: ${missing[*]})"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus prometheus-alertmanager >/dev/null
  # The packages start system services where systemd runs; the demo and tests use their own.
fi

python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $($python --version)"
  "$python" -m venv .venv
fi
stamp=".venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  echo "setup: installing anomaly-sidecar with its test extra into .venv (log: .venv/pip.log)"
  if ! { .venv/bin/python -m pip install --upgrade pip && .venv/bin/python -m pip install -e '.[test]'; } >.venv/pip.log 2>&1; then
    tail -n 30 .venv/pip.log
    echo "setup: pip install failed; full log in .venv/pip.log" >&2
    exit 1
  fi
  rm -f .venv/.installed-*
  touch "$stamp"
fi
