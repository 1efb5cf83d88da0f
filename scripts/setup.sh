#!/usr/bin/env bash
# Create .venv and install modstream with the local broker/Triton wheels and dev tools.
# Idempotent: re-running only installs what changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e '.[local,training,dev]'
# Prometheus and promtool (Debian's package) check the alert rules and scrape the end-to-end
# test. Installed system-wide where we may; otherwise unpacked from the package into .venv/bin.
if ! command -v promtool >/dev/null || ! command -v prometheus >/dev/null; then
  if [ ! -x .venv/bin/promtool ] || [ ! -x .venv/bin/prometheus ]; then
    ./scripts/install-prometheus.sh
  fi
fi
# The model repository: the pinned nsfwjs networks, imported, exported to ONNX and
# parity-checked (about 10 s; the tarball is fetched once with `npm pack` and cached).
.venv/bin/python -m training.nsfwjs.export --repo triton_repo
