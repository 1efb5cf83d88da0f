#!/usr/bin/env bash
# Set up and run the demo: broker, Triton and consumer on loopback, live summary, Ctrl-C stops.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
exec .venv/bin/modstream demo "$@"
