#!/bin/sh
# Init (PID 1) of a User-Mode Linux guest that plays "a host whose own kernel has nfsd and esp4",
# started by interop.capable_host.CapableHost. It brings up what such a host has -- /proc, /sys,
# /dev, a writable /run, /tmp and /etc, the kernel modules nfsd, esp4, xfrm_user, veth, the
# RPCSEC_GSS ones -- and nothing of the nfsd world itself: the command it runs (the interop suite
# in the network-namespace world, interop.hostkernel) has to build that. The host root is seen
# read-only through hostfs; the host's run directory (kernel command line RUN=...) is /run/out.
# Runs /run/out/command.sh with stdout+stderr in command.log, its exit status in /run/out/rc,
# then powers off.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/tmp
O=/run/out
log() { echo "[host $(cut -d' ' -f1 /proc/uptime)] $*"; }
fatal() { log "FATAL: $*"; echo "$*" >"$O/failed"; sync "$O/failed" 2>/dev/null; /bin/busybox poweroff -f; }

mount -t proc proc /proc; mount -t sysfs sys /sys
mountpoint -q /dev || mount -t devtmpfs dev /dev
mkdir -p /dev/pts /dev/shm; mount -t devpts devpts /dev/pts; mount -t tmpfs shm /dev/shm
mount -t tmpfs run /run
mkdir -p "$O" /run/hosttmp /run/netns
mount -t hostfs -o "$RUN" hostfs "$O" || { echo "cannot mount run dir $RUN"; /bin/busybox poweroff -f; }
mount --bind /tmp /run/hosttmp
. "$O/host.env"
for d in /tmp /var/tmp /var/lib/nfs; do mount -t tmpfs tmpfs $d; done
for p in $HOST_TMP_KEEP; do mkdir -p "/tmp/$p"; mount --bind "/run/hosttmp/$p" "/tmp/$p"; done
cp -a /etc /run/etc && mount --bind /run/etc /etc
ip link set lo up
hostname capable-host
. "$(dirname "$0")/uml_modules.sh"
uml_load_modules
log "a host kernel with nfsd and esp4: $(uname -r), $(grep -c . /proc/modules) modules loaded"
date +%s >"$O/ready"; sync "$O/ready"
sh "$O/command.sh" >"$O/command.log" 2>&1 </dev/null
rc=$?
log "command exited $rc"
sync "$O/command.log"; echo $rc >"$O/rc.tmp"; sync "$O/rc.tmp"; mv "$O/rc.tmp" "$O/rc"; sync
/bin/busybox poweroff -f
