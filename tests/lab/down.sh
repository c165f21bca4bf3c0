#!/bin/bash
# down.sh [GRACE_SECONDS] : power the lab guest off (SIGKILL after GRACE) and remove
# every cgroup it left on the host.
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/lab.env"
NAME=${LAB_NAME:-$AIRUT_GUEST}; GRACE=${1:-15}
P=$(cat /run/sdlab-$NAME.pid 2>/dev/null || true); L=$(cat /run/sdlab-$NAME.leader 2>/dev/null || true)
[ -n "$L" ] && timeout 5 nsenter -t "$L" -a systemctl poweroff --no-block 2>/dev/null || true
alive() { { [ -n "$P" ] && kill -0 "$P" 2>/dev/null; } || { [ -n "$L" ] && kill -0 "$L" 2>/dev/null; }; }
for i in $(seq 1 $((GRACE*10))); do alive || break; sleep 0.1; done
if alive; then
  [ -n "$L" ] && kill -KILL "$L" 2>/dev/null
  sleep 0.5; [ -n "$P" ] && kill -KILL "$P" 2>/dev/null
fi
ME=$(awk -F: '$2=="memory"{print $3}' /proc/self/cgroup)
left=0
for try in $(seq 1 10); do
  left=0
  for h in /sys/fs/cgroup/*; do
    case $(basename $h) in memory) d=$h$ME/sdlab-$NAME;; *) d=$h/sdlab-$NAME;; esac
    [ -d "$d" ] || continue
    find "$d" -depth -type d -exec rmdir {} \; 2>/dev/null
    [ -d "$d" ] && left=1
  done
  [ $left = 0 ] && break; sleep 0.5
done
[ $left = 0 ] || echo "warning: cgroups of guest $NAME not fully removed" >&2
rm -f /run/sdlab-$NAME.pid /run/sdlab-$NAME.leader
true
