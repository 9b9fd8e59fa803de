#!/usr/bin/env bash
# The demo in one command: installs what is missing (Debian packages prometheus and
# prometheus-alertmanager, .venv with the project), then runs Prometheus, Alertmanager,
# a demo model server under load and the sidecar, all on 127.0.0.1. Ctrl-C stops them.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
bash .ci/setup.sh
exec .venv/bin/python examples/demo/run.py "$@"
