#!/bin/busybox sh
# PID 1 of the test VM (see vm.rs): loads the 9p and test modules, mounts the
# host's root read-only, gives it a private /run, /tmp, /proc, /sys, /dev and
# bpffs, runs /run/vm/cmd.sh chrooted into it and powers off. The exit status
# goes to /run/vm/rc (the host's per-run directory); without it the host
# reports a guest failure.
B=/bin/busybox
$B mount -t proc proc /proc
$B mount -t sysfs sysfs /sys
$B mount -t devtmpfs devtmpfs /dev
fail() { echo "vm: $*"; $B poweroff -f; }
for m in $($B cat /modules); do
  $B insmod "/m/$m" || fail "insmod $m failed"
done
O=trans=virtio,version=9p2000.L,msize=512000
$B mkdir -p /share && $B mount -t 9p -o $O,cache=none share /share || fail "9p share mount failed"
. /share/env
R=/newroot
$B mkdir -p $R && $B mount -t 9p -o $O,ro,cache=loose hostroot $R || fail "9p root mount failed"
# Paths under /tmp that must stay visible (the workspace): held aside while
# /tmp becomes a private tmpfs, then bound back.
for k in $KEEP; do
  $B mkdir -p "/keep$k" && $B mount --bind "$R$k" "/keep$k" || fail "keeping $k failed"
done
$B mount -t tmpfs -o mode=1777 tmpfs $R/tmp
for k in $KEEP; do
  $B mkdir -p "$R$k" && $B mount --bind "/keep$k" "$R$k" || fail "restoring $k failed"
done
$B mount -t tmpfs -o mode=755 tmpfs $R/run
$B mkdir -p $R/run/vm && $B mount --bind /share $R/run/vm
$B mount -t proc proc $R/proc
$B mount -t sysfs sysfs $R/sys
$B mount -t devtmpfs devtmpfs $R/dev
$B mkdir -p $R/dev/pts $R/dev/shm
$B mount -t devpts -o gid=5,mode=620,ptmxmode=666 devpts $R/dev/pts
$B mount -t tmpfs -o mode=1777 tmpfs $R/dev/shm
$B mount -t bpf -o mode=700 bpf $R/sys/fs/bpf
$B mount -t cgroup2 cgroup2 $R/sys/fs/cgroup 2>/dev/null
$B hostname vm
$B ip link set lo up
$B chroot $R /bin/sh /run/vm/cmd.sh
echo $? > /share/rc
$B sync
$B poweroff -f
