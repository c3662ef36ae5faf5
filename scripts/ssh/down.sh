#!/usr/bin/env bash
# Stops the sshd scripts/ssh/up.sh started (by pid file) and removes its
# folder. Sessions still open end on their own.
set -uo pipefail
dir=${SSH_TEST_DIR:-/tmp/ringmaster-ssh}
if [[ -s $dir/sshd.pid ]] && kill -0 "$(cat "$dir/sshd.pid")" 2>/dev/null; then
    kill -TERM "$(cat "$dir/sshd.pid")"
fi
rm -rf "$dir"
echo "[ssh-down] stopped" >&2
