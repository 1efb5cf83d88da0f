#!/usr/bin/env bash
# Set up, lint, type-check and run the whole test suite (unit + integration against the real
# Tansu broker and tritonserver, both started by the tests on loopback).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
# Tools setup.sh may have unpacked into the venv (promtool, prometheus) come first.
export PATH="$PWD/.venv/bin:$PATH"
.venv/bin/ruff check consumer training tests bench
.venv/bin/mypy
.venv/bin/pytest "$@"
