#!/bin/bash
# package/build.sh DEB : a clean Debian 12 machine for the package's tests, as a root
# filesystem tarball cached in $AIRUT_LAB/clean12.tar. It has never seen airut: only
# what `apt install ./airut_*.deb` would pull from Debian (the package's Depends, read
# from DEB) and what the test plays around it: a mail system (postfix, dovecot), npm
# for `airut setup claude` and an npm cache for it ($AIRUT_LAB/npm-cache), python3 for
# the test's IMAP reader. The guest has no
# network, so the dependencies are in place before the package is installed; each
# test run unpacks a fresh copy (tests/package/up.sh).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/../lab/lab.env"
DEB=${1:?usage: package/build.sh DEB}
DEPENDS=$("$HERE/../lab/deb-depends.sh" "$DEB")
PKGS="$DEPENDS,systemd-sysv,dbus,libpam-systemd,iproute2,less,dovecot-imapd,dovecot-lmtpd,postfix,npm,python3"
TAR=$AIRUT_LAB/clean12.tar
CACHE=$AIRUT_LAB/npm-cache
STAMP="$PKGS claude-code@$CLAUDE_CODE_VERSION"
if [ -f "$TAR" ] && [ -d "$CACHE" ] && [ "$(cat "$TAR.pkgs" 2>/dev/null)" = "$STAMP" ]; then
  exit 0
fi
step "clean Debian 12 machine (mmdebstrap): $PKGS"
# Also, made by that machine's own npm (npm's cache is specific to its version and
# registry): an npm cache holding the pinned Claude Code CLI, for the offline
# `airut setup claude -- --offline --cache ...`. It is taken out of the machine.
ENV="env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root NODE_EXTRA_CA_CERTS=/tmp/host-ca.crt"
for v in http_proxy https_proxy no_proxy; do [ -n "${!v:-}" ] && ENV="$ENV $v=${!v}"; done
rm -rf "$CACHE" "$CACHE.part"
retry 3 mmdebstrap --variant=minbase --format=tar --include="$PKGS" \
  --essential-hook='echo "postfix postfix/main_mailer_type select No configuration" | chroot "$1" debconf-set-selections' \
  --customize-hook='mkdir -p "$1/etc/systemd/journald.conf.d"; printf "[Journal]\nStorage=volatile\n" > "$1/etc/systemd/journald.conf.d/lab.conf"' \
  --customize-hook='cp /etc/ssl/certs/ca-certificates.crt "$1/tmp/host-ca.crt"' \
  --customize-hook="rm -rf '$CACHE.part'; chroot \"\$1\" $ENV npm install -g --silent --no-fund --no-audit --cache /tmp/npm-cache --prefix /tmp/npm-prefix @anthropic-ai/claude-code@$CLAUDE_CODE_VERSION" \
  --customize-hook="chroot \"\$1\" npm config get registry > \"\$1/tmp/npm-cache/.registry\"; cp -a \"\$1/tmp/npm-cache\" '$CACHE.part'; rm -rf \"\$1/tmp/npm-cache\" \"\$1/tmp/npm-prefix\" \"\$1/tmp/host-ca.crt\" \"\$1/root/.npm\"" \
  bookworm "$TAR.part"
mv "$CACHE.part" "$CACHE"
mv "$TAR.part" "$TAR"
echo "$STAMP" > "$TAR.pkgs"
