#!/bin/bash
# up.sh RUN_DIR : boot the lab guest (systemd-nspawn, real systemd 252) with airut's
# state bound from RUN_DIR, and print the guest leader's PID.
#
# - The cgroup v1 controller mounts are remounted rw before systemd starts, or the
#   limits of task units would be accepted and silently not enforced.
# - --system-call-filter=@keyring: runc inside the guest needs the keyring calls.
# - --private-network: the guest's podman bridges live in the guest's own netns.
# - The launcher moves itself into its own sdlab-NAME cgroup in every hierarchy,
#   so down.sh can remove everything the guest created.
# Bound into the guest: the guest venv at its own path (read-only; this script first
# installs the current source into it, as a package would), the Claude Code cache; RUN_DIR/spool and RUN_DIR/state become
# /var/spool/airut and /var/lib/airut, so tests read the spool straight from the host.
#
# LAB_ROOT, LAB_NAME and LAB_MODE=clean boot another root filesystem the same way: a
# clean machine that has never seen airut (tests/package), with only RUN_DIR/srv bound
# and the stand-ins for the internet and the mail system written into it.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/lab.env"
RUN=${1:?usage: up.sh RUN_DIR}
NAME=${LAB_NAME:-$AIRUT_GUEST}
ROOT=${LAB_ROOT:-$AIRUT_LAB/guest}
MODE=${LAB_MODE:-lab}
[ "$MODE" = clean ] || [ -f "$ROOT/.complete" ] || { echo "no guest in $ROOT: run tests/lab/build.sh first" >&2; exit 1; }
if [ -f "/run/sdlab-$NAME.leader" ] && kill -0 "$(cat "/run/sdlab-$NAME.leader")" 2>/dev/null; then
  echo "guest $NAME is already running (tests/lab/down.sh stops it)" >&2; exit 1
fi
rm -f "/run/sdlab-$NAME.leader"
mkdir -p "$RUN/spool" "$RUN/state" "$RUN/srv"

install -D -m755 /dev/stdin "$ROOT/usr/local/sbin/cg-rw-init" <<'INIT'
#!/bin/sh
for c in /sys/fs/cgroup/*; do mountpoint -q "$c" && mount -o remount,rw,bind "$c" 2>/dev/null; done
exec /lib/systemd/systemd "$@"
INIT
install -D -m644 "$HERE/containers.conf" "$ROOT/etc/containers/containers.conf"
if [ "$MODE" = clean ]; then
  "$HERE/stand-ins.sh" "$ROOT" "$NAME"
  BINDS=(--bind="$RUN/srv:/srv")
else
  "$HERE/airut-root.sh" "$ROOT" "$NAME"
  BINDS=(--bind-ro="$AIRUT_LAB/guest-venv:$AIRUT_LAB/guest-venv"
         --bind-ro="$AIRUT_LAB/claude:/var/cache/airut/claude"
         --bind="$RUN/spool:/var/spool/airut" --bind="$RUN/state:/var/lib/airut"
         --bind="$RUN/srv:/srv")
fi
"$HERE/mail.sh" "$ROOT"

ME=$(awk -F: '$2=="memory"{print $3}' /proc/self/cgroup)
LAUNCH=$(mktemp /run/sdlab-launch-XXXXXX)
cat > "$LAUNCH" <<LAUNCHER
#!/bin/bash
for h in /sys/fs/cgroup/*; do
  [ -d "\$h" ] || continue
  case \$(basename \$h) in memory) d=\$h$ME/sdlab-$NAME;; *) d=\$h/sdlab-$NAME;; esac
  mkdir -p \$d
  if [ -f \$d/cpuset.cpus ]; then cat \$h/cpuset.cpus > \$d/cpuset.cpus; cat \$h/cpuset.mems > \$d/cpuset.mems; fi
  echo \$\$ > \$d/cgroup.procs
done
exec systemd-nspawn -D "$ROOT" --machine="$NAME" --register=no --keep-unit \\
  --private-network --system-call-filter=@keyring --console=read-only \\
  --kill-signal=SIGRTMIN+3 ${BINDS[*]} \\
  /usr/local/sbin/cg-rw-init
LAUNCHER
chmod +x "$LAUNCH"
setsid "$LAUNCH" > "/run/sdlab-$NAME.log" 2>&1 < /dev/null &
echo $! > "/run/sdlab-$NAME.pid"
for i in $(seq 1 300); do
  L=$(ps --ppid "$(cat "/run/sdlab-$NAME.pid")" -o pid= 2>/dev/null | tr -d ' ' || true)
  if [ -n "$L" ]; then
    st=$(nsenter -t "$L" -a systemctl is-system-running 2>/dev/null || true)
    case $st in running|degraded) echo "$L" > "/run/sdlab-$NAME.leader"; rm -f "$LAUNCH"; break;; esac
  fi
  sleep 0.1
done
[ -f "/run/sdlab-$NAME.leader" ] || { echo "guest $NAME did not come up; see /run/sdlab-$NAME.log" >&2; exit 1; }
# The agent's base image, imported into the guest's own podman storage when the
# tarball is new to it (a clean guest's test does it itself, as an operator would).
[ "$MODE" = clean ] && { echo "$L"; exit 0; }
stamp=$(stat -c %Y-%s "$AIRUT_LAB/base.tar")
if [ "$(cat "$ROOT/var/lib/airut-lab-base.stamp" 2>/dev/null)" != "$stamp" ] || \
   ! nsenter -t "$L" -a podman image exists localhost/airut-base:latest; then
  nsenter -t "$L" -a podman import -q /dev/stdin localhost/airut-base:latest < "$AIRUT_LAB/base.tar" >/dev/null
  echo "$stamp" > "$ROOT/var/lib/airut-lab-base.stamp"
fi
echo "$L"
