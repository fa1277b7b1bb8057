# Sourced by the UML inits (guest_init.sh, capable_host_init.sh): load the kernel modules of the
# nfsd world from the user-mode-linux package. This machine has no /lib/modules for the UML kernel,
# so modprobe runs with -d over a tmpfs tree linking to /usr/lib/uml/modules -- also for the
# kernel's own requests (crypto templates such as rfc4106(gcm(aes))), via /proc/sys/kernel/modprobe.
# Needs a tmpfs /run and a fatal() function.
NFSD_WORLD_MODULES="esp4 xfrm_user veth auth_rpcgss rpcsec_gss_krb5 nfsd nfsv4"
uml_load_modules() {
  mkdir -p /run/modroot/lib; ln -s /usr/lib/uml/modules /run/modroot/lib/modules
  printf '#!/bin/sh\nexec /sbin/modprobe -d /run/modroot "$@"\n' >/run/modprobe; chmod 755 /run/modprobe
  echo /run/modprobe >/proc/sys/kernel/modprobe
  for m in $NFSD_WORLD_MODULES; do
    /run/modprobe "$m" || fatal "modprobe $m failed"
  done
}
