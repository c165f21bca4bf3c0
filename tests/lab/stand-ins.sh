#!/bin/bash
# stand-ins.sh ROOT HOSTNAME : the lab's stand-ins for the internet in a root filesystem
# (the lab guest's, the VM's, a clean guest's). The demo model plays Anthropic's API
# and a few web servers for the proxy's tests: their names resolve to the machine
# itself, their certificates come from a lab CA that airut-proxy is told to trust.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/lab.env"
ROOT=${1:?usage: stand-ins.sh ROOT HOSTNAME}; NAME=${2:?usage: stand-ins.sh ROOT HOSTNAME}
echo "$NAME" > "$ROOT/etc/hostname"
printf '127.0.0.1 localhost %s\n::1 localhost\n127.0.0.1 api.anthropic.com allowed.test paths.test other.test deep.allowed.test mx.corp.test\n127.0.0.2 internal.test\n' "$NAME" > "$ROOT/etc/hosts"
install -D -m644 "$AIRUT_LAB/tls/ca.pem" "$ROOT/etc/airut/lab-tls/ca.pem"
install -D -m644 "$AIRUT_LAB/tls/server.pem" "$ROOT/etc/airut/lab-tls/server.pem"
install -D -m644 "$AIRUT_LAB/tls/server.key" "$ROOT/etc/airut/lab-tls/server.key"
# 0.0.0.0:8443 lets bench/proxy reach the same server without the proxy; 127.0.0.2:80
# plays an internal service (internal.test) the proxy must not reach.
printf 'AIRUT_DEMO_MODEL_ARGS=--listen-tls 127.0.0.1:443 --listen 127.0.0.1:80 --listen 127.0.0.2:80 --listen-tls 0.0.0.0:8443 --cert /etc/airut/lab-tls/server.pem --key /etc/airut/lab-tls/server.key\n' > "$ROOT/etc/default/airut-demo-model"
printf 'AIRUT_PROXY_ARGS=--upstream-ca /etc/airut/lab-tls/ca.pem\n' > "$ROOT/etc/default/airut-proxy"
# The demo model runs as a dynamic user and binds 80 and 443.
printf 'net.ipv4.ip_unprivileged_port_start=0\n' > "$ROOT/etc/sysctl.d/50-airut-lab.conf"
