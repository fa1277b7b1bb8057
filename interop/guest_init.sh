#!/bin/sh
# Init (PID 1) of the nfsd world of interop.world.NfsdWorld, in one of two places:
#  WORLD=uml   (interop.uml.LinuxNfsdGuest): the User-Mode Linux guest's init. The guest sees the
#              host root read-only through hostfs; the host's run directory (kernel command line
#              RUN=...) is mounted read-write at /run/out.
#  WORLD=netns (interop.hostkernel.HostKernelNfsd): PID 1 of fresh PID/mount/UTS namespaces inside
#              the server network namespace on the host's own kernel; RUN (environment) is bound to
#              /run/out, and /run, /dev, /tmp, /etc and the daemons' state directories are private.
# Settings come in as /run/out/guest.env, logs, captures and command results go back out. Brings
# up, in order: kernel modules, the link to the host-side namespace (vec0), optional manually keyed
# ESP between netns "client" and the server namespace, an MIT KDC, gssproxy, rpcbind, mountd,
# (netns: nfsdcld), nfsd (short grace/lease), a packet capture of NFS and ESP traffic, rpc.gssd for
# the world's own kernel client; then touches /run/out/ready and serves command jobs from
# /run/out/jobs until /run/out/stop appears.
# Pitfalls of nfsd in a UML guest: /tmp, /run, /var/tmp get tmpfs (so host paths under /tmp that the
# host asks for are bind-mounted back); /lib/modules may be absent on the host, so modprobe runs with
# -d over a tmpfs tree linking to /usr/lib/uml/modules; gssproxy must be up before nfsd.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root
WORLD=${WORLD:-uml}
O=/run/out
log() { echo "[guest $(cut -d' ' -f1 /proc/uptime)] $*"; }
halt() { if [ "$WORLD" = netns ]; then exit "${1:-0}"; else /bin/busybox poweroff -f; fi; }
fatal() { log "FATAL: $*"; echo "$*" >"$O/failed"; sync "$O/failed" 2>/dev/null; halt 1; }
step() { "$@" || log "step failed (rc=$?): $*"; }

# A /dev of our own (netns world): syslogd's /dev/log and a devpts instance must not replace the host's.
private_dev() {
  mkdir -p /run/dev && mount -t tmpfs -o mode=755 dev /run/dev || return 1
  for n in null zero full random urandom tty; do : >/run/dev/$n; mount --bind /dev/$n /run/dev/$n || return 1; done
  mkdir /run/dev/pts /run/dev/shm
  mount -t devpts -o newinstance,ptmxmode=0666 devpts /run/dev/pts && ln -s pts/ptmx /run/dev/ptmx
  mount -t tmpfs shm /run/dev/shm
  ln -s /proc/self/fd /run/dev/fd; ln -s /proc/self/fd/0 /run/dev/stdin
  ln -s /proc/self/fd/1 /run/dev/stdout; ln -s /proc/self/fd/2 /run/dev/stderr
  mount -n --move /run/dev /dev
}

mount -t proc proc /proc
if [ "$WORLD" = netns ]; then               # (sysfs of the server netns: mounted by ip netns exec)
  # private /run holding the run dir at /run/out and the host's /tmp at /run/hosttmp: built under
  # the run dir, then moved over /run (the run dir's own path may lie under /run or /tmp)
  W="$RUN/.world-run"
  mkdir -p "$W" && mount -t tmpfs run "$W" && mkdir -p "$W/out" "$W/hosttmp" \
    && mount --bind "$RUN" "$W/out" && mount --rbind /tmp "$W/hosttmp" && mount -n --move "$W" /run \
    || { echo "cannot set up a private /run with the run dir $RUN"; exit 1; }
  private_dev || { echo "cannot set up a private /dev"; exit 1; }
else
  mount -t sysfs sys /sys
  mountpoint -q /dev || mount -t devtmpfs dev /dev
  mkdir -p /dev/pts /dev/shm; mount -t devpts devpts /dev/pts; mount -t tmpfs shm /dev/shm
  mount -t tmpfs run /run
  mkdir -p "$O" /run/hosttmp
  mount -t hostfs -o "$RUN" hostfs "$O" || { echo "cannot mount run dir $RUN"; halt 1; }
  mount --rbind /tmp /run/hosttmp
fi
. "$O/guest.env"
log "init ($WORLD world): run dir $RUN mounted"
for d in /tmp /var/lib/nfs /var/tmp /var/lib/krb5kdc /var/lib/gssproxy /srv; do mount -t tmpfs tmpfs $d; done
for p in $HOST_TMP_KEEP; do mkdir -p "/tmp/$p"; mount --bind "/run/hosttmp/$p" "/tmp/$p"; done
mkdir -p /var/lib/gssproxy/clients /var/lib/gssproxy/rcache /var/lib/nfs/v4recovery /var/lib/nfs/rpc_pipefs
cp -a /etc /run/etc && mount --bind /run/etc /etc
busybox syslogd -n -O "$O/syslog.log" &
ip link set lo up
hostname "$FQDN"
printf '127.0.0.1 localhost\n%s %s guest\n%s %s\n' "$SERVER_ADDR" "$FQDN" "$HOST_ADDR" "$HOST_FQDN" >/etc/hosts

# --- kernel modules ------------------------------------------------------------------------------
. "$(dirname "$0")/uml_modules.sh"
if [ "$WORLD" = netns ]; then               # the host kernel: load what is not loaded yet
  for m in $NFSD_WORLD_MODULES; do
    [ -d "/sys/module/$m" ] || modprobe "$m" || fatal "modprobe $m failed"
  done
else
  uml_load_modules
fi
log "modules loaded"

# --- link to the host-side namespace ------------------------------------------------------------
ip addr add "$SERVER_ADDR/24" dev vec0 && ip link set vec0 up || fatal "vec0 setup failed"
log "vec0 $SERVER_ADDR up"

# --- netns client + ESP (RFC 4106 AES-GCM, transport mode, manual keys) --------------------------
ip netns add client; ip link add vc type veth peer name vs; ip link set vc netns client
ip -n client addr add "$ESP_CLIENT_ADDR/24" dev vc; ip -n client link set vc up; ip -n client link set lo up
ip addr add "$ESP_SERVER_ADDR/24" dev vs; ip link set vs up
if [ "$ESP" = 1 ]; then
  for ns in "-n client" ""; do
    ip $ns xfrm state add src "$ESP_CLIENT_ADDR" dst "$ESP_SERVER_ADDR" proto esp spi "$ESP_SPI_IN" reqid 1 \
      mode transport aead 'rfc4106(gcm(aes))' "$ESP_KEY_IN" 128 || fatal "xfrm state (in) failed"
    ip $ns xfrm state add src "$ESP_SERVER_ADDR" dst "$ESP_CLIENT_ADDR" proto esp spi "$ESP_SPI_OUT" reqid 1 \
      mode transport aead 'rfc4106(gcm(aes))' "$ESP_KEY_OUT" 128 || fatal "xfrm state (out) failed"
  done
  ip -n client xfrm policy add src "$ESP_CLIENT_ADDR" dst "$ESP_SERVER_ADDR" proto tcp dir out tmpl proto esp reqid 1 mode transport
  ip -n client xfrm policy add src "$ESP_SERVER_ADDR" dst "$ESP_CLIENT_ADDR" proto tcp dir in tmpl proto esp reqid 1 mode transport
  ip xfrm policy add src "$ESP_SERVER_ADDR" dst "$ESP_CLIENT_ADDR" proto tcp dir out tmpl proto esp reqid 1 mode transport
  ip xfrm policy add src "$ESP_CLIENT_ADDR" dst "$ESP_SERVER_ADDR" proto tcp dir in tmpl proto esp reqid 1 mode transport \
    || fatal "xfrm policy failed"
  log "ESP configured: client netns $ESP_CLIENT_ADDR <-> $ESP_SERVER_ADDR (TCP only)"
else
  log "netns client $ESP_CLIENT_ADDR <-> $ESP_SERVER_ADDR without ESP"
fi

# --- Kerberos: KDC, principals, keytabs ----------------------------------------------------------
cat >/etc/krb5.conf <<EOC
[libdefaults]
  default_realm = $REALM
  dns_lookup_kdc = false
  dns_lookup_realm = false
  dns_canonicalize_hostname = false
  rdns = false
  udp_preference_limit = 1
[realms]
  $REALM = {
    kdc = $ESP_SERVER_ADDR:88
    admin_server = $ESP_SERVER_ADDR
  }
[domain_realm]
  .$DOMAIN = $REALM
  $DOMAIN = $REALM
EOC
mkdir -p /etc/krb5kdc
cat >/etc/krb5kdc/kdc.conf <<EOC
[kdcdefaults]
  kdc_ports = 88
  kdc_tcp_ports = 88
[realms]
  $REALM = {
    database_name = /var/lib/krb5kdc/principal
    key_stash_file = /var/lib/krb5kdc/stash
    supported_enctypes = aes256-cts-hmac-sha1-96:normal aes128-cts-hmac-sha1-96:normal
    max_life = 10h
  }
[logging]
  kdc = FILE:$O/krb5kdc.log
EOC
kdb5_util create -s -r "$REALM" -P "$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')" >/dev/null \
  || fatal "kdb5_util create failed"
for p in $SERVICE_PRINCIPALS $EXTRA_PRINCIPALS; do kadmin.local -q "addprinc -randkey $p" >/dev/null 2>&1; done
kadmin.local -q "ktadd -k /etc/krb5.keytab $SERVICE_PRINCIPALS" >/dev/null || fatal "ktadd failed"
for up in $USERS; do
  u=${up%%:*}; pw=${up#*:}
  kadmin.local -q "addprinc -pw $pw $u" >/dev/null 2>&1
  kadmin.local -q "ktadd -norandkey -k $O/$u.keytab $u" >/dev/null || fatal "ktadd $u failed"
  chmod 644 "$O/$u.keytab"
done
sync "$O"/*.keytab
krb5kdc -P /run/krb5kdc.pid || fatal "krb5kdc failed"
log "KDC up: realm $REALM, principals: $SERVICE_PRINCIPALS $EXTRA_PRINCIPALS, users: $(echo "$USERS" | sed 's/:[^ ]*//g')"

# --- exports: tmpfs mounts so each export is its own file system ---------------------------------
mount -t nfsd nfsd /proc/fs/nfsd || fatal "mount nfsd failed"
mount -t rpc_pipefs sunrpc /run/rpc_pipefs 2>/dev/null || { mkdir -p /run/rpc_pipefs; mount -t rpc_pipefs sunrpc /run/rpc_pipefs; }
: >/etc/exports
for e in $EXPORTS; do                      # path|fsid|sec ; path relative to /srv/export
  rel=${e%%|*}; rest=${e#*|}; fsid=${rest%%|*}; sec=${rest#*|}
  dir=/srv/export$rel
  mkdir -p "$dir"; mount -t tmpfs -o size=$EXPORT_SIZE,mode=1777 "export$fsid" "$dir"
  echo "secret-data ${rel:-/}" >"$dir/file.txt"
  echo "$dir *(rw,fsid=$fsid,no_subtree_check,no_root_squash,insecure,sec=$sec)" >>/etc/exports
done
# gssproxy must be answering before nfsd starts (the kernel checks use-gss-proxy at nfsd start)
gssproxy -D >"$O/gssproxy.log" 2>&1 &
i=0; while [ "$(cat /proc/net/rpc/use-gss-proxy 2>/dev/null)" != 1 ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
[ "$(cat /proc/net/rpc/use-gss-proxy)" = 1 ] || fatal "gssproxy did not register with the kernel"
rpcbind -w || fatal "rpcbind failed"
exportfs -ra 2>"$O/exportfs.log" || fatal "exportfs failed: $(cat "$O/exportfs.log")"
rpc.mountd -N 2 -N 3 || fatal "rpc.mountd failed"
rpc.idmapd -p /run/rpc_pipefs 2>/dev/null || log "rpc.idmapd not started"
# capture NFS (port 2049) and ESP on every guest interface before nfsd accepts anything
if [ "$CAPTURE" = 1 ]; then
  dumpcap -q -i any -s "$CAPTURE_SNAPLEN" -f 'tcp port 2049 or ip proto 50' -w "$O/nfs.pcapng" >"$O/dumpcap.log" 2>&1 &
  echo $! >/run/dumpcap.pid
  i=0; while [ ! -s "$O/nfs.pcapng" ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
  [ -s "$O/nfs.pcapng" ] && log "capture running: nfs.pcapng" || log "capture did not start (see dumpcap.log)"
fi
if [ "$WORLD" = netns ]; then
  # NFSv4 client tracking outside the initial network namespace goes through nfsdcld (the kernel
  # refuses the legacy recovery directory and the usermode helper there)
  mkdir -p /var/lib/nfs/nfsdcld
  nfsdcld -p /run/rpc_pipefs -s /var/lib/nfs/nfsdcld || fatal "nfsdcld failed"
fi
rpc.nfsd -N 3 --lease-time "$LEASE_TIME" --grace-time "$GRACE_TIME" "$NFSD_THREADS" || fatal "rpc.nfsd failed"
rpc.gssd -p /run/rpc_pipefs || log "rpc.gssd not started"
log "nfsd up: versions=$(cat /proc/fs/nfsd/versions) exports: $(exportfs -s | tr '\n' ';')"
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
if [ -s /run/dumpcap.pid ]; then kill -INT "$(cat /run/dumpcap.pid)"; sleep 1; fi
dmesg >"$O/dmesg.log" 2>&1
ip -s xfrm state >"$O/xfrm-state.log" 2>&1
cat /proc/fs/nfsd/clients/*/info >"$O/nfsd-clients.log" 2>/dev/null
rpc.nfsd 0
sync
log "powering off"
halt 0
