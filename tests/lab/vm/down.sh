#!/bin/bash
# vm/down.sh RUN_DIR [GRACE_SECONDS] : stop the VM's qemu (SIGTERM, SIGKILL after GRACE).
# The disk is made anew by every up.sh, so pulling the plug loses nothing.
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/../lab.env"
RUN=${1:?usage: vm/down.sh RUN_DIR [GRACE]}; GRACE=${2:-10}
P=$(cat "$RUN/qemu.pid" 2>/dev/null || true)
[ -n "$P" ] || exit 0
# Only our qemu: the pid file could be stale and the number reused.
if kill -0 "$P" 2>/dev/null && grep -q qemu-system "/proc/$P/cmdline" 2>/dev/null; then
  kill -TERM "$P"
  for i in $(seq 1 $((GRACE * 10))); do kill -0 "$P" 2>/dev/null || break; sleep 0.1; done
  kill -0 "$P" 2>/dev/null && kill -KILL "$P"
fi
rm -f "$RUN/qemu.pid"
true
