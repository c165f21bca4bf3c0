#!/bin/bash
# build.sh: everything the test lab needs, built once and cached in $AIRUT_LAB.
#   - host packages (podman, systemd-nspawn, mmdebstrap, build deps for pystemd, and
#     Chromium with its WebDriver for the dashboard's tests)
#   - the guest root filesystem (systemd + podman + git), made by mmdebstrap
#   - the container base image tarball (Debian minbase + git), made by mmdebstrap
#   - virtualenvs on Debian's /usr/bin/python3 with airut's dependencies (host tests, guest)
#   - the pinned Claude Code CLI's native binary
# Every step is skipped when its output exists, and every download is retried.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
. "$HERE/lab.env"
mkdir -p "$AIRUT_LAB"

APT="apt-get -o DPkg::Lock::Timeout=600 -q"
HOST_PKGS="systemd-container mmdebstrap podman runc netavark aardvark-dns iptables uidmap
  catatonit libsystemd-dev pkg-config gcc python3-dev python3-venv git ca-certificates
  nftables iproute2 procps npm openssl chromium chromium-driver"
missing=$(for p in $HOST_PKGS; do dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed' || echo "$p"; done)
# npm may come with another Node.js installation; do not fight it.
command -v npm >/dev/null && missing=$(echo "$missing" | grep -vx npm || true)
if [ -n "$missing" ]; then
  step "host packages: $(echo $missing)"
  retry 3 $APT update
  DEBIAN_FRONTEND=noninteractive retry 3 $APT install -y --no-install-recommends $missing
fi

GUEST_PKGS=systemd,systemd-sysv,dbus,libpam-systemd,podman,runc,netavark,aardvark-dns,iptables,nftables,uidmap,catatonit,python3,python3-venv,ca-certificates,iproute2,git,procps,less,dovecot-imapd,dovecot-lmtpd,postfix
if [ ! -f "$AIRUT_LAB/guest/.complete" ] || [ "$(cat "$AIRUT_LAB/guest/.complete")" != "$GUEST_PKGS" ]; then
  step "guest root filesystem (mmdebstrap)"
  rm -rf "$AIRUT_LAB/guest"
  # postfix asks how to configure itself: not at all, the lab writes its own main.cf.
  retry 3 mmdebstrap --variant=minbase --include="$GUEST_PKGS" \
    --essential-hook='echo "postfix postfix/main_mailer_type select No configuration" | chroot "$1" debconf-set-selections' \
    bookworm "$AIRUT_LAB/guest"
  # A volatile journal keeps one run's logs from piling onto the next.
  mkdir -p "$AIRUT_LAB/guest/etc/systemd/journald.conf.d"
  printf '[Journal]\nStorage=volatile\n' > "$AIRUT_LAB/guest/etc/systemd/journald.conf.d/lab.conf"
  echo "$GUEST_PKGS" > "$AIRUT_LAB/guest/.complete"
fi

# The agent's base image: git for the agent, curl, python3 and python3-h2 (an HTTP/2
# client) for the sandbox tests.
BASE_PKGS=git,ca-certificates,procps,curl,python3,python3-h2
if [ ! -f "$AIRUT_LAB/base.tar" ] || [ "$(cat "$AIRUT_LAB/base.pkgs" 2>/dev/null)" != "$BASE_PKGS" ]; then
  step "container base image tarball (mmdebstrap)"
  retry 3 mmdebstrap --format=tar --variant=minbase --include=$BASE_PKGS bookworm "$AIRUT_LAB/base.tar.part"
  mv "$AIRUT_LAB/base.tar.part" "$AIRUT_LAB/base.tar"
  echo "$BASE_PKGS" > "$AIRUT_LAB/base.pkgs"
fi

# Two venvs on Debian's /usr/bin/python3 (the interpreter the .deb targets):
# venv/ runs the tests on the host with airut installed editable; guest-venv/ is
# bound into the guest, where up.sh installs the current source as a product.
stamp=$(cat "$REPO/pyproject.toml" | sha256sum | cut -c1-16)
for v in venv guest-venv; do
  VENV=$AIRUT_LAB/$v
  [ -x "$VENV/bin/python" ] || { step "virtualenv $v on /usr/bin/python3"; /usr/bin/python3 -m venv "$VENV"; }
  [ "$(cat "$VENV/.airut-stamp" 2>/dev/null)" != "$stamp" ] || continue
  step "python packages in $v"
  if [ $v = venv ]; then
    retry 3 "$VENV/bin/pip" install -q -e "$REPO[test]"
  else
    # wheel: up.sh builds airut without build isolation (no network in the guest run)
    retry 3 "$VENV/bin/pip" install -q wheel "$REPO" && "$VENV/bin/pip" uninstall -q -y airut
  fi
  echo "$stamp" > "$VENV/.airut-stamp"
done

CLAUDE_DIR=$AIRUT_LAB/claude/$CLAUDE_CODE_VERSION
if [ ! -x "$CLAUDE_DIR/claude" ]; then
  step "Claude Code CLI $CLAUDE_CODE_VERSION (npm)"
  rm -rf "$CLAUDE_DIR.npm"
  retry 3 npm install -g --silent --no-fund --no-audit --prefix "$CLAUDE_DIR.npm" \
    "@anthropic-ai/claude-code@$CLAUDE_CODE_VERSION"
  bin=$(find "$CLAUDE_DIR.npm" -path '*claude-code-linux-x64*/claude*' -type f -perm -u+x | head -1)
  [ -n "$bin" ] || { echo "native claude binary not found in the npm package" >&2; exit 1; }
  mkdir -p "$CLAUDE_DIR"
  cp "$bin" "$CLAUDE_DIR/claude.part" && mv "$CLAUDE_DIR/claude.part" "$CLAUDE_DIR/claude"
  rm -rf "$CLAUDE_DIR.npm"
  "$CLAUDE_DIR/claude" --version
fi
# A lab CA and a certificate for the names the demo model plays in the guest
# (api.anthropic.com among them); airut-proxy is told to trust the CA upstream. Both
# carry the extensions a real CA's do: Python 3.13 (Debian 13) verifies strictly and
# refuses a CA without keyUsage or a leaf without authorityKeyIdentifier.
TLS=$AIRUT_LAB/tls
EXT="subjectAltName=DNS:api.anthropic.com,DNS:allowed.test,DNS:paths.test,DNS:other.test,DNS:*.allowed.test,DNS:mx.corp.test,IP:127.0.0.1
authorityKeyIdentifier=keyid
subjectKeyIdentifier=hash
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth"
if [ "$(cat "$TLS/ext" 2>/dev/null)" != "$EXT" ]; then
  step "lab TLS certificates"
  rm -rf "$TLS.new" && mkdir -p "$TLS.new"
  openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=airut lab CA" \
    -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign \
    -addext subjectKeyIdentifier=hash \
    -keyout "$TLS.new/ca.key" -out "$TLS.new/ca.pem" 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -subj "/CN=api.anthropic.com" \
    -keyout "$TLS.new/server.key" -out "$TLS.new/server.csr" 2>/dev/null
  echo "$EXT" > "$TLS.new/ext"
  openssl x509 -req -in "$TLS.new/server.csr" -CA "$TLS.new/ca.pem" -CAkey "$TLS.new/ca.key" \
    -CAcreateserial -days 3650 -extfile "$TLS.new/ext" -out "$TLS.new/server.pem" 2>/dev/null
  rm -rf "$TLS" && mv "$TLS.new" "$TLS"
fi
step "lab ready in $AIRUT_LAB"
