#!/bin/bash
# Installs everything rpclatch needs on a Debian 12 machine (run as root): apt packages for the real
# peers (MIT KDC, rpcbind, User-Mode Linux with nfsd + esp4, gssproxy, tshark) and a virtualenv
# (.venv) with the package and its dev tools. Idempotent: quick when everything is already there.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
APT_PKGS=(krb5-kdc krb5-admin-server krb5-user libkrb5-dev gcc python3-dev python3-venv
          rpcbind libtirpc-dev user-mode-linux nfs-kernel-server nfs-common gssproxy tshark
          iproute2 busybox bc procps kmod)
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
