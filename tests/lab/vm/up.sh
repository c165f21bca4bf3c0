#!/bin/bash
# vm/up.sh RUN_DIR : boot the cgroup v2 VM (qemu without KVM) with airut installed,
# and print qemu's PID. The caller waits for the guest agent (tests/vm/vm.py).
#
# The machine's disk is made fresh for every run from the cached root filesystem
# ($AIRUT_LAB/vm/rootfs, made by vm/build.sh) plus what changes between runs: airut
# from the current source (airut-root.sh, as for the nspawn guest), the guest venv at
# its own path (its scripts name their interpreter by absolute path), the Claude Code
# binary, and whatever the caller put into the root filesystem before (configuration,
# repositories). The root filesystem itself is never booted, so it stays clean.
#
# The only channel in and out is the QEMU guest agent on a virtio-serial port
# (RUN_DIR/qga.sock): it runs commands and returns their exit code and output, which
# lets the tests drive the machine while a task runs, as they drive the nspawn guest.
# The console goes to RUN_DIR/console.log.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/../lab.env"
RUN=${1:?usage: vm/up.sh RUN_DIR}
VM=$AIRUT_LAB/vm
ROOT=$VM/rootfs
: "${AIRUT_VM_MEMORY:=3072}" "${AIRUT_VM_CPUS:=2}" "${AIRUT_VM_DISK:=8G}"
[ -f "$ROOT/.complete" ] || { echo "no VM in $VM: run tests/lab/vm/build.sh first" >&2; exit 1; }
command -v qemu-system-x86_64 >/dev/null || {
  echo "qemu-system-x86_64 is missing: run tests/lab/vm/build.sh (apt package qemu-system-x86)" >&2
  exit 1; }
if [ -f "$RUN/qemu.pid" ] && kill -0 "$(cat "$RUN/qemu.pid")" 2>/dev/null; then
  echo "the VM is already running (tests/lab/vm/down.sh stops it)" >&2; exit 1
fi
mkdir -p "$RUN"
rm -f "$RUN/root.img" "$RUN/console.log" "$RUN/qga.sock" "$RUN/qemu.pid"

"$HERE/../airut-root.sh" "$ROOT" airut-vm
# Hard links: the copies cost nothing, and pip replaces files rather than rewriting them.
rm -rf "$ROOT$AIRUT_LAB" "$ROOT/var/cache/airut/claude"
mkdir -p "$ROOT$AIRUT_LAB" "$ROOT/var/cache/airut"
cp -al "$AIRUT_LAB/guest-venv" "$ROOT$AIRUT_LAB/guest-venv"
cp -al "$AIRUT_LAB/claude" "$ROOT/var/cache/airut/claude"
# Enabled as the package enables them: airut starts with the machine.
systemctl --root="$ROOT" --quiet enable airut.target airut-demo-model.service 2>/dev/null

truncate -s "$AIRUT_VM_DISK" "$RUN/root.img"
mkfs.ext4 -q -F -L root -d "$ROOT" "$RUN/root.img"

qemu-system-x86_64 -machine q35 -accel tcg -cpu max -m "$AIRUT_VM_MEMORY" -smp "$AIRUT_VM_CPUS" \
  -display none -monitor none -no-reboot -nic none \
  -kernel "$VM/vmlinuz" -initrd "$VM/initrd.img" \
  -append "console=ttyS0 root=/dev/vda rw net.ifnames=0 quiet" \
  -drive "file=$RUN/root.img,format=raw,if=virtio,cache=unsafe" \
  -serial "file:$RUN/console.log" \
  -chardev "socket,id=qga,path=$RUN/qga.sock,server=on,wait=off" \
  -device virtio-serial-pci -device virtserialport,chardev=qga,name=org.qemu.guest_agent.0 \
  -pidfile "$RUN/qemu.pid" -daemonize
cat "$RUN/qemu.pid"
