#!/bin/bash
# Installs everything rpclatch needs on a Debian 12 machine (run as root): apt packages for the real
# peers (MIT KDC, rpcbind, User-Mode Linux with nfsd + esp4, gssproxy, tshark, the IKEv2 daemons
# strongSwan and libreswan) and a virtualenv (.venv) with the package and its dev tools.
# Idempotent: quick when everything is already there. No daemon is started on this host: the IKE
# peers run only inside the User-Mode Linux guest of the interop tests (interop/ike_guest.py).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
APT_PKGS=(krb5-kdc krb5-admin-server krb5-user libkrb5-dev gcc python3-dev python3-venv
          rpcbind libtirpc-dev user-mode-linux nfs-kernel-server nfs-common gssproxy tshark
          iproute2 busybox bc procps kmod tcpdump
          # IKEv2 peers: strongSwan (charon-systemd driven over vici, swanctl, pki, openssl plugin)
          charon-systemd strongswan-swanctl libstrongswan-standard-plugins strongswan-pki
          # ... and the shared libraries of libreswan's pluto, which is unpacked below, not installed
          libnss3-tools libnss3 libnspr4 libunbound8 libldns3 libevent-core-2.1-7 libevent-pthreads-2.1-7
          libcurl3-nss libcap-ng0 libaudit1 libldap-2.5-0 libpam0g libselinux1 libsystemd0)
missing=()
for p in "${APT_PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup: missing Debian packages: ${missing[*]}; rerun as root (or sudo) to install them" >&2
    exit 2
  fi
  echo "setup: installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections
  apt-get update -qq
  # Debian's nfs-kernel-server / rpcbind start services from their postinst; we start our own.
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d
  trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  rm -f /usr/sbin/policy-rc.d
fi
# libreswan: Debian's package conflicts with strongswan-libcharon (both provide ike-server), so its
# .deb is downloaded and unpacked into $LIBRESWAN_ROOT (dpkg's state stays clean; nothing forced).
# The interop guest gives it the /usr/libexec/ipsec it has compiled in (interop/ike_guest_init.sh).
LIBRESWAN_ROOT=${LIBRESWAN_ROOT:-/opt/libreswan}
if [ ! -x "$LIBRESWAN_ROOT/usr/libexec/ipsec/pluto" ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup: libreswan missing in $LIBRESWAN_ROOT; rerun as root (or sudo) to unpack it" >&2
    exit 2
  fi
  echo "setup: unpacking libreswan into $LIBRESWAN_ROOT"
  tmp=$(mktemp -d); chmod 755 "$tmp"          # apt-get download runs as _apt: it must write here
  (cd "$tmp" && apt-get download libreswan >/dev/null 2>&1) \
    || (cd "$tmp" && apt-get update -qq && apt-get download libreswan >/dev/null)
  mkdir -p "$LIBRESWAN_ROOT"
  dpkg -x "$tmp"/libreswan_*.deb "$LIBRESWAN_ROOT"
  rm -rf "$tmp"
fi
for b in "$LIBRESWAN_ROOT"/usr/libexec/ipsec/{pluto,whack,addconn,showhostkey} /usr/sbin/charon-systemd; do
  if ldd "$b" | grep -q 'not found'; then
    echo "setup: $b lacks shared libraries: $(ldd "$b" | grep 'not found' | tr -s ' \t\n' ' ')" >&2
    exit 1
  fi
done
# charon-systemd's postinst enables strongswan.service; where systemd runs, keep it off the host
if [ -d /run/systemd/system ] && systemctl is-enabled --quiet strongswan 2>/dev/null; then
  systemctl disable --now strongswan >/dev/null 2>&1 || true
fi
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
STAMP=.venv/.rpclatch-installed
if [ ! -f "$STAMP" ] || [ pyproject.toml -nt "$STAMP" ]; then
  .venv/bin/pip install -q --upgrade pip >/dev/null
  .venv/bin/pip install -q -e '.[dev]'
  touch "$STAMP"
fi
