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
.venv/bin/python -m pip install --quiet -e '.[local,training,review,dev]'
# The fonts the demo set of tenant heads draws with (training/heads/demo_set.py): Debian's
# fonts-dejavu-core, installed where we may (as root or with sudo).
if [ ! -d /usr/share/fonts/truetype/dejavu ]; then
  if [ "$(id -u)" -eq 0 ] || sudo -n true 2>/dev/null; then
    SUDO=""
    if [ "$(id -u)" -ne 0 ]; then SUDO="sudo -n"; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
      fonts-dejavu-core
  else
    echo "DejaVu fonts missing: run 'sudo apt-get install fonts-dejavu-core' once" >&2
  fi
fi
# Debian's chromium and its driver: the review page's browser test (tests/integration/
# test_review_browser.py) drives them headless; nothing is downloaded by Selenium itself.
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
  if [ "$(id -u)" -eq 0 ] || sudo -n true 2>/dev/null; then
    SUDO=""
    if [ "$(id -u)" -ne 0 ]; then SUDO="sudo -n"; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
      chromium chromium-driver
  else
    echo "chromium missing: run 'sudo apt-get install chromium chromium-driver' once" >&2
  fi
fi
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
# Demo heads: custom categories (docs/heads.md) trained once on the generated, synthetic demo
# set, so `modstream demo` can show a tenant's own category; about a minute on two cores.
if [ ! -f triton_repo/moderation/config.pbtxt ]; then
  demo=.cache/heads-demo
  .venv/bin/python -m training.heads.demo_set --out "$demo" --train-per-class 100 \
    --test-per-class 40 --overwrite --no-progress
  mkdir -p "$demo/report"
  .venv/bin/python -m training.heads train --data "$demo" --repo triton_repo \
    --out "$demo/report" --card "$demo/report/model-card.md" --draws 1 --no-progress --export
fi
# Decoding in Triton (docs/decoding.md): the preprocess step and a <model>_bytes ensemble for
# every 224-pixel model above, moderation included.
.venv/bin/python -m training.bytes_models --repo triton_repo
