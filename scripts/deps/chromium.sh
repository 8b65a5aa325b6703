#!/usr/bin/env bash
# Headless Chromium for the browser test of `stgrl visualize` (tests/eval/test_visualize_browser.py).
# Idempotent: does nothing when `chromium` is already on PATH. Debian/Ubuntu only (apt-get); needs
# root or sudo. Without it the browser test skips locally and fails under CI=true.
set -euo pipefail

if command -v chromium >/dev/null 2>&1; then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "scripts/deps/chromium.sh: no apt-get here; install Chromium yourself (the browser test needs \`chromium\` on PATH)" >&2
    exit 1
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends chromium fonts-dejavu-core
command -v chromium >/dev/null
