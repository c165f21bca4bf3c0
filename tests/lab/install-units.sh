#!/bin/bash
# install-units.sh GUEST_ROOT : put airut's units into the guest, pointed at the lab venv.
# The unit files are the shipped ones; a drop-in only swaps /usr/bin/X for the venv's X.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
. "$HERE/lab.env"
ROOT=$1
SYS=$ROOT/etc/systemd/system
# Units an earlier version shipped and this one does not (a guest outlives versions),
# with their drop-ins and the links that enabled them.
for old in "$SYS"/airut*.service "$SYS"/airut*.target "$SYS"/airut*.slice "$SYS"/airut*.timer; do
  [ -f "$old" ] && [ ! -e "$REPO/units/$(basename "$old")" ] || continue
  rm -rf "$old" "$old.d"
  find "$SYS" -name "$(basename "$old")" -type l -delete
done
install -m644 "$REPO"/units/*.service "$REPO"/units/*.target "$REPO"/units/*.slice \
  "$REPO"/units/*.timer "$SYS/"
for unit in "$REPO"/units/*.service; do
  name=$(basename "$unit")
  exe=$(sed -n 's|^ExecStart=/usr/bin/\([^ ]*\).*|\1|p' "$unit")
  [ -n "$exe" ] || continue
  args=$(sed -n 's|^ExecStart=/usr/bin/[^ ]*||p' "$unit")
  mkdir -p "$SYS/$name.d"
  printf '[Service]\nExecStart=\nExecStart=%s/bin/%s%s\nEnvironment=PYTHONDONTWRITEBYTECODE=1\n' \
    "$AIRUT_LAB/guest-venv" "$exe" "$args" > "$SYS/$name.d/lab.conf"
done
# The lab's upstreams are on the guest's loopback (proxy.allowed_private_networks).
printf '[Service]\nIPAddressAllow=127.0.0.1\n' > "$SYS/airut-proxy@.service.d/lab-upstreams.conf"
ln -sf "$AIRUT_LAB/guest-venv/bin/airut" "$ROOT/usr/local/bin/airut"
install -D -m644 "$REPO/units/airut.nft" "$ROOT/usr/share/airut/airut.nft"
install -D -m644 "$REPO/units/airut.sysusers" "$ROOT/usr/lib/sysusers.d/airut.conf"
install -D -m644 "$REPO/units/airut.tmpfiles" "$ROOT/usr/lib/tmpfiles.d/airut.conf"
# The generator that makes the channel instances (and their credentials) from the
# configuration, as the package installs it (in /etc here: the lab's own).
install -d "$ROOT/etc/systemd/system-generators"
ln -sf "$AIRUT_LAB/guest-venv/bin/airut-generator" "$ROOT/etc/systemd/system-generators/airut-generator"
install -d -m700 "$ROOT/etc/airut/credentials"
