#!/bin/bash
# vm/up.sh RUN_DIR DEB... : boot the cgroup v2 VM (qemu without KVM), a clean Debian 13
# server with the packages DEB... waiting in /srv, and print qemu's PID. The caller waits
# for the guest agent and installs the package as an operator would (tests/vm).
#
# The machine's disk is made fresh for every run from the cached root filesystem
# ($AIRUT_LAB/vm/rootfs, made by vm/build.sh) plus what changes between runs: the
# package, the lab's stand-ins for the internet and its mail system (stand-ins.sh,
# mail.sh, as for the nspawn guests), the Claude Code binary where `airut setup claude`
# would put it (the clean Debian 12 machine tests that command; npm in the emulated
# machine would take minutes), and whatever the caller put into the root filesystem
# before (repositories). The root filesystem itself is never booted, so it stays clean.
#
# The only channel in and out is the QEMU guest agent on a virtio-serial port
# (RUN_DIR/qga.sock): it runs commands and returns their exit code and output, which
# lets the tests drive the machine while a task runs, as they drive the nspawn guest.
# The console goes to RUN_DIR/console.log.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/../lab.env"
RUN=${1:?usage: vm/up.sh RUN_DIR DEB...}; shift; [ $# -gt 0 ] || { echo "usage: vm/up.sh RUN_DIR DEB..." >&2; exit 2; }
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

"$HERE/../stand-ins.sh" "$ROOT" airut-vm
"$HERE/../mail.sh" "$ROOT"
systemctl --root="$ROOT" --quiet enable postfix.service dovecot.service 2>/dev/null
rm -rf "$ROOT/srv/"*.deb "$ROOT/var/cache/airut"
mkdir -p "$ROOT/srv" "$ROOT/var/cache/airut"
cp "$@" "$ROOT/srv/"
# A hard link costs nothing; the package's tmpfiles.d gives the directory its owner.
cp -al "$AIRUT_LAB/claude" "$ROOT/var/cache/airut/claude"

truncate -s "$AIRUT_VM_DISK" "$RUN/root.img"
mkfs.ext4 -q -F -L root -d "$ROOT" "$RUN/root.img"

# One host thread for both vCPUs (thread=single; the VM tests take ~1.9x as long):
# with a thread per vCPU the guest kernel panicked once mid-run ("Oops: int3" in the
# scheduler) - a vCPU ran a stale translation of code another vCPU had just patched
# (static keys toggle as podman, nft and cgroups are used), a cross-modifying-code
# race of multi-threaded TCG. A kernel panic takes every later test with it.
qemu-system-x86_64 -machine q35 -accel tcg,thread=single -cpu max -m "$AIRUT_VM_MEMORY" -smp "$AIRUT_VM_CPUS" \
  -display none -monitor none -no-reboot -nic none \
  -kernel "$VM/vmlinuz" -initrd "$VM/initrd.img" \
  -append "console=ttyS0 root=/dev/vda rw net.ifnames=0 quiet" \
  -drive "file=$RUN/root.img,format=raw,if=virtio,cache=unsafe" \
  -serial "file:$RUN/console.log" \
  -chardev "socket,id=qga,path=$RUN/qga.sock,server=on,wait=off" \
  -device virtio-serial-pci -device virtserialport,chardev=qga,name=org.qemu.guest_agent.0 \
  -pidfile "$RUN/qemu.pid" -daemonize
cat "$RUN/qemu.pid"
