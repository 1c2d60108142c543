package guest

import (
	"net/netip"
	"strings"

	"github.com/cocoon-run/cocoon/internal/network"
)

// initramfsInit is the initramfs /init, run by busybox sh. It exits on
// failure: the kernel then panics, reboots at once (panic=-1) and QEMU,
// started with -no-reboot, exits, so a broken boot never hangs.
const initramfsInit = `#!/bin/sh
# Cocoon initramfs: load the virtio drivers, mount the root disk and
# switch_root into the guest init.
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in @MODULES@; do
	insmod /lib/modules/$m.ko || echo "initramfs: cannot load $m"
done
root=@ROOT@
fstype=ext4
mode=rw
init=@INIT@
for arg in $(cat /proc/cmdline); do
	case "$arg" in
	root=*) root=${arg#root=} ;;
	rootfstype=*) fstype=${arg#rootfstype=} ;;
	ro) mode=ro ;;
	rw) mode=rw ;;
	cocoon.init=*) init=${arg#cocoon.init=} ;;
	esac
done
i=0
while [ ! -b "$root" ]; do
	i=$((i + 1))
	if [ $i -gt 200 ]; then
		echo "initramfs: $root did not appear"
		exit 1
	fi
	usleep 50000
done
mkdir -p /newroot
if ! mount -t "$fstype" -o "$mode" "$root" /newroot; then
	echo "initramfs: cannot mount $root"
	exit 1
fi
# Hand /dev over so the guest init keeps the console's device nodes.
mount --move /dev /newroot/dev || umount /dev
umount /sys
umount /proc
exec switch_root /newroot "$init"
`

// cocoonInit is the guest init of a microVM (PID 1 after switch_root).
// Under gVisor it is not used: the OCI process is envd itself. Either way
// envd ends up PID 1 and reaps orphans (envd/reaper): kill -9 -1 inside
// spares it, and the kernel's OOM killer never picks it.
const cocoonInit = `#!/bin/sh
# cocoon-init: PID 1 of a Cocoon microVM guest. Mounts the kernel
# filesystems, sets the hostname and network from the kernel command line
# (cocoon.hostname=, cocoon.ip=ADDR/LEN, cocoon.gw=, cocoon.dns=) and execs
# envd, which stays PID 1 and reaps orphans.
PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export PATH
umask 022

mnt() { # mnt TYPE DIR OPTIONS
	mountpoint -q "$2" 2>/dev/null && return 0
	mkdir -p "$2"
	mount -t "$1" -o "$3" "$1" "$2" || echo "cocoon-init: cannot mount $2"
}
mnt proc /proc nosuid,nodev,noexec
mnt sysfs /sys nosuid,nodev,noexec
mnt devtmpfs /dev nosuid,mode=0755
mnt devpts /dev/pts nosuid,noexec,gid=5,mode=0620,ptmxmode=0666
mnt tmpfs /dev/shm nosuid,nodev,mode=1777
mnt tmpfs /run nosuid,nodev,mode=0755
[ -e /dev/fd ] || ln -s /proc/self/fd /dev/fd
[ -e /dev/stdin ] || ln -s /proc/self/fd/0 /dev/stdin
[ -e /dev/stdout ] || ln -s /proc/self/fd/1 /dev/stdout
[ -e /dev/stderr ] || ln -s /proc/self/fd/2 /dev/stderr
mkdir -p /run/lock
# /tmp stays on the root disk, as under gVisor: bounded by the disk, not RAM.
chmod 1777 /tmp

hostname=@HOSTNAME@
[ -s /etc/hostname ] && read -r hostname </etc/hostname
ip=@IP@
gw=@GW@
dns=
for arg in $(cat /proc/cmdline); do
	case "$arg" in
	cocoon.hostname=*) hostname=${arg#*=} ;;
	cocoon.ip=*) ip=${arg#*=} ;;
	cocoon.gw=*) gw=${arg#*=} ;;
	cocoon.dns=*) dns=${arg#*=} ;;
	esac
done
echo "$hostname" >/proc/sys/kernel/hostname
grep -qw "$hostname" /etc/hosts 2>/dev/null || echo "127.0.1.1	$hostname" >>/etc/hosts

ip link set lo up
if [ -e /sys/class/net/eth0 ]; then
	if ip addr add "$ip" dev eth0 && ip link set eth0 up && ip route add default via "$gw" dev eth0; then
		echo "cocoon-init: eth0 $ip via $gw"
	else
		echo "cocoon-init: cannot configure eth0"
	fi
fi
[ -n "$dns" ] && printf 'nameserver %s\n' "$dns" >/etc/resolv.conf

echo "@READY@"
exec @ENVD@
`

// InitramfsInit returns the initramfs /init script that loads modules
// (from /lib/modules/<name>.ko, in order) and switches to InitPath.
func InitramfsInit(modules []string) string {
	return strings.NewReplacer(
		"@MODULES@", strings.Join(modules, " "),
		"@ROOT@", RootDevice,
		"@INIT@", InitPath,
	).Replace(initramfsInit)
}

// CocoonInit returns the guest init script installed at InitPath.
func CocoonInit() string {
	return strings.NewReplacer(
		"@HOSTNAME@", DefaultHostname,
		"@IP@", netip.PrefixFrom(network.GuestIP, network.GuestPrefixLen).String(),
		"@GW@", network.GuestGateway.String(),
		"@READY@", ReadyMarker,
		"@ENVD@", EnvdPath,
	).Replace(cocoonInit)
}
