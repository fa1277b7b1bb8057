#!/bin/sh
# Init (PID 1) of the User-Mode Linux guest of interop.ike_guest.IkeGuest, where real IKEv2 daemons
# (strongSwan, libreswan) and rpclatch negotiate kernel ESP SAs between network namespaces. The host
# root is seen read-only through hostfs; the host's run directory (kernel command line RUN=...) is
# /run/out. Brings up /proc, /sys, /dev, a writable /run and /tmp, the ESP/XFRM/veth modules and the
# AES-GCM crypto instance, gives libreswan the /usr/libexec/ipsec it has compiled in, touches
# /run/out/ready, then serves command jobs from /run/out/jobs (the protocol of interop.world's
# NfsdWorld.spawn) until /run/out/stop appears. The guest has no network device: every test makes
# its own namespaces (interop/ike_peers.py).
export PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LC_ALL=C
O=/run/out
log() { echo "[guest $(cut -d' ' -f1 /proc/uptime)] $*"; }
fatal() { log "FATAL: $*"; echo "$*" >"$O/failed"; sync "$O/failed" 2>/dev/null; /bin/busybox poweroff -f; }

mount -t proc proc /proc; mount -t sysfs sys /sys
mountpoint -q /dev || mount -t devtmpfs dev /dev
mkdir -p /dev/pts /dev/shm; mount -t devpts devpts /dev/pts; mount -t tmpfs shm /dev/shm
mount -t tmpfs run /run
mkdir -p "$O" /run/hosttmp /run/netns /run/ike
mount -t hostfs -o "$RUN" hostfs "$O" || { echo "cannot mount run dir $RUN"; /bin/busybox poweroff -f; }
mount --rbind /tmp /run/hosttmp
. "$O/guest.env"
for d in /tmp /var/tmp; do mount -t tmpfs tmpfs $d; done
for p in $HOST_TMP_KEEP; do mkdir -p "/tmp/$p"; mount --bind "/run/hosttmp/$p" "/tmp/$p"; done
ip link set lo up

# Kernel modules from the user-mode-linux package (this host may have no /lib/modules for the UML
# kernel: modprobe -d over a tmpfs tree), also for the kernel's own requests. Each modprobe costs
# ~0.1 s in UML, and building a crypto instance asks for many names no module provides
# (crypto-rfc4106(gcm(aes)), crypto-gcm(aes)-all, ...): those are answered at once.
mkdir -p /run/modroot/lib; ln -s /usr/lib/uml/modules /run/modroot/lib/modules
cat >/run/modprobe <<'EOF'
#!/bin/sh
case "$*" in *crypto-*'('*|*crypto-*-all) exit 1 ;; esac
exec /sbin/modprobe -d /run/modroot "$@"
EOF
chmod 755 /run/modprobe
echo /run/modprobe >/proc/sys/kernel/modprobe
/run/modprobe -a esp4 xfrm_user veth gcm ghash_generic seqiv echainiv ctr hmac sha512_generic overlay \
  || fatal "modprobe failed"
# The first AES-GCM SA of a fresh kernel instantiates rfc4106(gcm(aes)) (1-2 s in UML): pay it here,
# not inside the first negotiation a test times.
ip xfrm state add src 192.0.2.250 dst 192.0.2.251 proto esp spi 0x100 mode transport \
  aead 'rfc4106(gcm(aes))' 0x000102030405060708090a0b0c0d0e0f10111213 128 && ip xfrm state flush \
  || fatal "kernel ESP with rfc4106(gcm(aes)) does not work"
# libreswan's pluto has /usr/libexec/ipsec compiled in, but it is unpacked under $LIBRESWAN_ROOT
# (its Debian package conflicts with strongSwan's): an overlay over the read-only /usr/libexec with
# one symlink in its tmpfs upper layer. The host stays untouched.
if [ -x "$LIBRESWAN_ROOT/usr/libexec/ipsec/pluto" ]; then
  mkdir -p /run/ovl/up /run/ovl/work
  mount -t overlay overlay -o lowerdir=/usr/libexec,upperdir=/run/ovl/up,workdir=/run/ovl/work /usr/libexec \
    && ln -s "$LIBRESWAN_ROOT/usr/libexec/ipsec" /usr/libexec/ipsec || log "cannot provide /usr/libexec/ipsec"
fi
log "IKE guest up: kernel $(uname -r), $(grep -c . /proc/modules) modules"
date +%s >"$O/ready"; sync "$O/ready"

# --- command jobs: $O/jobs/<id>.sh -> <id>.out, <id>.err, <id>.rc ----------------------------------
mkdir -p "$O/jobs"
while [ ! -e "$O/stop" ]; do
  for f in "$O"/jobs/*.sh; do
    [ -e "$f" ] || continue
    id=${f%.sh}
    mv "$f" "$id.run" || continue
    ( sh "$id.run" >"$id.out" 2>"$id.err" </dev/null; rc=$?
      sync "$id.out" "$id.err"; echo $rc >"$id.rc.tmp"; sync "$id.rc.tmp"; mv "$id.rc.tmp" "$id.rc" ) &
  done
  sleep 0.05
done
log "stop requested"
ps -eo pid,comm | grep -E 'charon|pluto|tcpdump|dumpcap|rpclatch' >"$O/leftover-processes.txt"
ip netns list >"$O/leftover-netns.txt" 2>&1
dmesg >"$O/dmesg.log" 2>&1
sync
log "powering off"
/bin/busybox poweroff -f
