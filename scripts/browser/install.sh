#!/usr/bin/env bash
# Debian's Chromium for tests/report_html.rs, which opens report.html
# headless (root, apt). Safe to run again.
set -euo pipefail
if ! command -v chromium >/dev/null; then
    echo "[browser] installing chromium (apt)" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends chromium >/dev/null
fi
chromium --version >&2
