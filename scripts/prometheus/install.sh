#!/usr/bin/env bash
# Prometheus for tests/metrics.rs: Debian's package (root, apt). The tests
# start their own server (their own config, data folder and loopback port)
# and stop it; nothing runs as a service here. Safe to run again.
set -euo pipefail
if ! command -v prometheus >/dev/null; then
    echo "[prometheus] installing prometheus (apt)" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi
prometheus --version 2>&1 | head -1 >&2
