#!/usr/bin/env bash
# Install Debian's prometheus package (prometheus + promtool), which the tests run for real.
# As root (or with sudo): apt-get install. Otherwise: download the package and unpack its two
# binaries into .venv/bin, which scripts/test.sh puts first on PATH.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" -eq 0 ] || sudo -n true 2>/dev/null; then
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo -n"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends prometheus
  exit 0
fi
work=.cache/prometheus-deb
rm -rf "$work" && mkdir -p "$work"
(cd "$work" && apt-get download prometheus) || {
  echo "could not install prometheus: run 'sudo apt-get install prometheus' once" >&2
  exit 1
}
dpkg -x "$work"/prometheus_*.deb "$work/root"
ln -sf "$PWD/$work/root/usr/bin/prometheus" .venv/bin/prometheus
ln -sf "$PWD/$work/root/usr/bin/promtool" .venv/bin/promtool
