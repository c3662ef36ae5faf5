#!/usr/bin/env bash
# A private sshd on 127.0.0.1 for the ssh provider's tests: key-only root
# login, its own host key, client key and authorized_keys under one folder,
# and a client config (ssh -F <dir>/ssh_config) in which node1..node4 all
# reach it. Nothing outside that folder changes (no ~/.ssh edits). Debian's
# openssh-server is installed if sshd is missing. Safe to run again.
#   SSH_TEST_DIR=/tmp/ringmaster-ssh   SSH_TEST_PORT=2222
#   SSH_TEST_HOSTS="node1 node2 node3 node4"
# scripts/ssh/down.sh stops it.
set -euo pipefail
dir=${SSH_TEST_DIR:-/tmp/ringmaster-ssh}
port=${SSH_TEST_PORT:-2222}
hosts=${SSH_TEST_HOSTS:-"node1 node2 node3 node4"}
say() { echo "[ssh-up] $*" >&2; }
if [[ ! -x /usr/sbin/sshd ]]; then
    say "installing openssh-server (apt)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends openssh-server openssh-client >/dev/null
fi
install -d -m 0700 "$dir"
install -d -m 0755 /run/sshd
[[ -s $dir/host_key ]] || ssh-keygen -q -t ed25519 -N '' -f "$dir/host_key"
[[ -s $dir/client_key ]] || ssh-keygen -q -t ed25519 -N '' -f "$dir/client_key" -C ringmaster-test
install -m 0600 "$dir/client_key.pub" "$dir/authorized_keys"
cat >"$dir/sshd_config" <<CONF
Port $port
ListenAddress 127.0.0.1
HostKey $dir/host_key
PidFile $dir/sshd.pid
PermitRootLogin prohibit-password
PubkeyAuthentication yes
AuthorizedKeysFile $dir/authorized_keys
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
# The key files live under /tmp, whose modes StrictModes refuses; only
# this loopback-only test daemon reads them.
StrictModes no
MaxStartups 100:30:200
MaxSessions 100
LogLevel INFO
CONF
/usr/sbin/sshd -t -f "$dir/sshd_config"
cat >"$dir/ssh_config" <<CONF
Host $hosts 127.0.0.1
  HostName 127.0.0.1
  Port $port
  User root
  IdentityFile $dir/client_key
  IdentitiesOnly yes
  StrictHostKeyChecking no
  UserKnownHostsFile /dev/null
  LogLevel ERROR
  BatchMode yes
CONF
if ! { [[ -s $dir/sshd.pid ]] && kill -0 "$(cat "$dir/sshd.pid")" 2>/dev/null; }; then
    say "starting sshd on 127.0.0.1:$port"
    /usr/sbin/sshd -f "$dir/sshd_config" -E "$dir/sshd.log"
fi
first=${hosts%% *}
for _ in $(seq 50); do ssh -F "$dir/ssh_config" "$first" true 2>/dev/null && break; sleep 0.1; done
ssh -F "$dir/ssh_config" "$first" true
say "ready: ssh -F $dir/ssh_config {$(echo "$hosts" | tr ' ' ',')}"
