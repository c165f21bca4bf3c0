#!/bin/bash
# make-deb.sh SUITE OUTDIR : build airut's .deb for a Debian suite (bookworm, trixie)
# in a clean chroot of that suite made by mmdebstrap, from the files git tracks in
# this checkout; run lintian there on the result. Writes
# OUTDIR/airut_<version>~deb12_amd64.deb (or ~deb13) and its lintian report.
# DEBFULLNAME and DEBEMAIL (Debian's convention, as dch reads them) name whoever
# builds and distributes the package; without them the package names the
# placeholder in debian/control, which lintian reports (bogus-mail-host).
# AIRUT_LINTIAN=no leaves lintian out (the tests' builds: a minute less each).
set -euo pipefail
SUITE=$1; OUT=$(mkdir -p "$2" && cd "$2" && pwd)
case $SUITE in
  bookworm) TAG=deb12;;
  trixie) TAG=deb13;;
  *) echo "make-deb.sh: unknown suite $SUITE (bookworm or trixie)" >&2; exit 2;;
esac
REPO=$(cd "$(dirname "$0")/.." && pwd)
if ! command -v mmdebstrap >/dev/null; then
  for try in 1 2 3; do
    apt-get -o DPkg::Lock::Timeout=600 -q update && DEBIAN_FRONTEND=noninteractive \
      apt-get -o DPkg::Lock::Timeout=600 -q install -y --no-install-recommends mmdebstrap \
      && break
    [ $try = 3 ] && exit 1; sleep $((try * 5))
  done
fi
VERSION=$(sed -n '1s/^[^(]*(\([^)]*\)).*/\1/p' "$REPO/debian/changelog")
SRC=$(mktemp -d)
trap 'rm -rf "$SRC"' EXIT
mkdir "$SRC/airut"
(cd "$REPO" && git ls-files -z --cached --others --exclude-standard | tar --null -T - -cf -) \
  | tar -C "$SRC/airut" -xf -
sed -i "1s/([^)]*)/($VERSION~$TAG)/; 1s/) [a-z-]*;/) $SUITE;/" "$SRC/airut/debian/changelog"
if [ -n "${DEBEMAIL:-}" ]; then
  case $DEBEMAIL in *[\<\>\|\&\\]*|*[[:space:]]*)
    echo "make-deb.sh: DEBEMAIL must be a bare address (name it in DEBFULLNAME)" >&2; exit 2;;
  esac
  WHO="${DEBFULLNAME:-airut developers} <$DEBEMAIL>"
  case $WHO in *[\|\&\\]*) echo "make-deb.sh: DEBFULLNAME must not hold | & \\" >&2; exit 2;; esac
  sed -i "s|^Maintainer: .*|Maintainer: $WHO|" "$SRC/airut/debian/control"
  sed -i "s|^ -- [^<]*<[^>]*>| -- $WHO|" "$SRC/airut/debian/changelog"
fi
DEB=airut_${VERSION}~${TAG}_amd64.deb
# The build sees nothing of this shell's environment (pip settings, paths) but a
# proxy if there is one; it trusts the certificates the host trusts (pip fetches the
# dependencies from the package index).
CLEAN="env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8"
for v in http_proxy https_proxy no_proxy; do
  [ -n "${!v:-}" ] && CLEAN="$CLEAN $v=${!v}"
done
rm -f "$OUT/$DEB" "$OUT/$DEB.lintian"
TOOLS=debhelper,dh-virtualenv,help2man,python3-dev,python3-venv,libsystemd-dev,pkg-config,ca-certificates,git
LINT=(--customize-hook="chroot \"\$1\" $CLEAN lintian --no-tag-display-limit /$DEB > '$OUT/$DEB.lintian' || true")
if [ "${AIRUT_LINTIAN:-yes}" = no ]; then LINT=(); else TOOLS=$TOOLS,lintian; fi
for try in 1 2 3; do
  mmdebstrap --variant=buildd --mode=root \
    --include="$TOOLS" \
    --customize-hook="cp -a '$SRC/airut' \"\$1/build\"" \
    --customize-hook='cp /etc/ssl/certs/ca-certificates.crt "$1/etc/ssl/certs/ca-certificates.crt"' \
    --customize-hook="chroot \"\$1\" $CLEAN sh -ec 'cd /build && dpkg-buildpackage -us -uc -b'" \
    "${LINT[@]}" \
    --customize-hook="cp \"\$1/$DEB\" '$OUT/'" \
    "$SUITE" /dev/null && break
  [ $try = 3 ] && exit 1
  echo "make-deb.sh: build failed (try $try); retrying" >&2
done
echo "$OUT/$DEB"
