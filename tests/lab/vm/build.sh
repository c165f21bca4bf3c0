#!/bin/bash
# vm/build.sh DEB: the cgroup v2 lane's virtual machine, a clean Debian 13 server for
# the Debian 13 package DEB, built once and cached in $AIRUT_LAB/vm (tests/lab/build.sh
# must have run: this reuses its base image tarball).
#   - host packages: qemu (no KVM needed: the lane runs under TCG), e2fsprogs
#   - a Debian 13 root filesystem made by mmdebstrap that has never seen airut: what
#     `apt install ./DEB` pulls from Debian (the machine has no network, so it is in
#     place before), podman with crun (Debian's default), a mail system (postfix,
#     dovecot) for the mail round trip, the cloud kernel and its initramfs, and the
#     QEMU guest agent, the lane's only channel into the machine
#   - the kernel and initramfs, copied out for qemu -kernel/-initrd
#   - the agent's base image, imported into the root filesystem's podman storage from
#     the host (inside the emulated machine the same import takes a minute)
# Every step is skipped when its output exists; downloads are retried.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/../lab.env"
DEB=${1:?usage: vm/build.sh DEB (the Debian 13 package)}
VM=$AIRUT_LAB/vm
ROOT=$VM/rootfs
mkdir -p "$VM"

APT="apt-get -o DPkg::Lock::Timeout=600 -q"
HOST_PKGS="qemu-system-x86 e2fsprogs mmdebstrap podman"
missing=$(for p in $HOST_PKGS; do dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed' || echo "$p"; done)
if [ -n "$missing" ]; then
  step "host packages for the VM: $(echo $missing)"
  retry 3 $APT update
  DEBIAN_FRONTEND=noninteractive retry 3 $APT install -y --no-install-recommends $missing
fi

# What a Debian 13 server has when airut's Depends are installed (crun, as podman
# prefers it, for the "runc | crun" alternative), plus the kernel, the guest agent,
# and the mail system and python3 the tests play around it.
DEPENDS=$("$HERE/../deb-depends.sh" "$DEB" | sed 's/\brunc\b/crun/')
VM_PKGS=$DEPENDS,systemd-sysv,udev,dbus,libpam-systemd,iproute2,python3,kmod,zstd,linux-image-cloud-amd64,initramfs-tools,qemu-guest-agent,postfix,dovecot-imapd,dovecot-lmtpd
# Units that cost boot time and do nothing for the lane.
MASK="podman-auto-update.service podman-auto-update.timer podman-restart.service
  apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer e2scrub_reap.service fstrim.timer
  man-db.timer getty@.service serial-getty@.service systemd-timesyncd.service"
if [ "$(cat "$ROOT/.complete" 2>/dev/null)" != "$VM_PKGS $MASK" ]; then
  step "VM root filesystem (mmdebstrap, Debian 13 with the cloud kernel)"
  rm -rf "$ROOT"
  retry 3 mmdebstrap --variant=minbase --include="$VM_PKGS" \
    --essential-hook='echo "postfix postfix/main_mailer_type select No configuration" | chroot "$1" debconf-set-selections' \
    --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-exclude=/usr/share/info/*' \
    trixie "$ROOT"
  echo airut-vm > "$ROOT/etc/hostname"
  printf '/dev/vda / ext4 rw,errors=remount-ro 0 1\n' > "$ROOT/etc/fstab"
  : > "$ROOT/etc/machine-id"  # made on first boot
  for u in $MASK; do ln -sf /dev/null "$ROOT/etc/systemd/system/$u"; done
  mkdir -p "$ROOT/etc/systemd/journald.conf.d"
  printf '[Journal]\nStorage=volatile\n' > "$ROOT/etc/systemd/journald.conf.d/lab.conf"
  rm -f "$ROOT/var/lib/podman-base.stamp"
  echo "$VM_PKGS $MASK" > "$ROOT/.complete"
fi

# Like most Debian servers, the machine has swap: a task's memory limit must hold with it.
mkdir -p "$ROOT/etc/systemd/system/swap.target.wants"
cat > "$ROOT/etc/systemd/system/lab-swap.service" <<'UNIT'
[Unit]
Description=lab: 512 MiB of swap, as most servers have
DefaultDependencies=no
# Not after local-fs.target: Debian 13's /tmp is a tmpfs mounted after swap.target,
# which would make a cycle that systemd breaks by dropping a job, sometimes this one.
After=systemd-remount-fs.service
Before=swap.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/sh -ec 'fallocate -l 512M /swapfile; chmod 600 /swapfile; mkswap -q /swapfile; swapon /swapfile'
UNIT
ln -sf ../lab-swap.service "$ROOT/etc/systemd/system/swap.target.wants/lab-swap.service"

kernel=$(ls "$ROOT"/boot/vmlinuz-* | sort -V | tail -1)
initrd=$ROOT/boot/initrd.img-${kernel##*/vmlinuz-}
[ -f "$initrd" ] || { echo "no initramfs for $kernel in the VM root filesystem" >&2; exit 1; }
if ! cmp -s "$kernel" "$VM/vmlinuz" || ! cmp -s "$initrd" "$VM/initrd.img"; then
  cp "$kernel" "$VM/vmlinuz"; cp "$initrd" "$VM/initrd.img"
fi

# The base image goes straight into the machine's podman storage (overlay, as podman
# in the machine uses it). A private bind mount of the storage keeps the overlay
# driver's mount handling away from the host's / (podman fails remounting it).
stamp=$(stat -c %Y-%s "$AIRUT_LAB/base.tar")
if [ "$(cat "$ROOT/var/lib/podman-base.stamp" 2>/dev/null)" != "$stamp" ]; then
  step "base image into the VM's podman storage"
  STORE=$ROOT/var/lib/containers/storage
  RUNROOT=$(mktemp -d /run/airut-vm-podman-XXXXXX)
  mkdir -p "$STORE"
  mount --bind "$STORE" "$STORE" && mount --make-private "$STORE"
  trap 'umount -l "$STORE" 2>/dev/null; rm -rf "$RUNROOT"' EXIT
  P=(podman --root "$STORE" --runroot "$RUNROOT" --storage-driver overlay)
  "${P[@]}" rmi -f localhost/airut-base:latest >/dev/null 2>&1 || true
  "${P[@]}" import -q "$AIRUT_LAB/base.tar" localhost/airut-base:latest >/dev/null
  # podman's own database would keep the host's paths for its storage: the machine
  # makes its own on first use.
  rm -rf "$STORE/libpod"
  umount "$STORE"; rm -rf "$RUNROOT"; trap - EXIT
  echo "$stamp" > "$ROOT/var/lib/podman-base.stamp"
fi
step "VM ready in $VM"
