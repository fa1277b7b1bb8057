"""The real Linux kernel NFS server in a User-Mode Linux guest.

:class:`LinuxNfsdGuest` boots ``linux.uml`` with the host root as a read-only hostfs root and
``interop/guest_init.sh`` as init; the host-side namespace reaches the guest over a tap device
(``vec0`` in the guest). Used where the host's own kernel has no nfsd or no esp4 (see
:func:`interop.world.host_kernel_gaps`); :class:`interop.hostkernel.HostKernelNfsd` is the same
world on a host kernel that has both. The API is :class:`interop.world.NfsdWorld`'s.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from interop.netns import HostNamespace
from interop.world import (
    DEFAULT_EXPORTS,
    ESP_CLIENT_ADDR,
    ESP_SERVER_ADDR,
    ESP_SPI_IN,
    ESP_SPI_OUT,
    GUEST_INIT,
    HOST_ADDR,
    NFS_PORT,
    REPO_ROOT,
    SERVER_ADDR,
    CommandResult,
    Export,
    GuestBootError,
    GuestCommandError,
    GuestConfig,
    GuestError,
    GuestTimeout,
    NfsdWorld,
    XfrmCounters,
    _set_pdeathsig,
    _tmp_keep,
    host_kernel_gaps,
    missing_tools,
    parse_xfrm_state,
)

__all__ = [
    "DEFAULT_EXPORTS",
    "ESP_CLIENT_ADDR",
    "ESP_SERVER_ADDR",
    "ESP_SPI_IN",
    "ESP_SPI_OUT",
    "NFS_PORT",
    "REPO_ROOT",
    "SERVER_ADDR",
    "CommandResult",
    "Export",
    "GuestBootError",
    "GuestCommandError",
    "GuestConfig",
    "GuestError",
    "GuestTimeout",
    "LinuxNfsdGuest",
    "XfrmCounters",
    "_tmp_keep",
    "host_kernel_gaps",
    "missing_requirements",
    "parse_xfrm_state",
]


def inside_uml(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """True in a User-Mode Linux guest (its /proc/cpuinfo says ``vendor_id : User Mode Linux``)."""
    try:
        return "User Mode Linux" in cpuinfo.read_text(errors="replace")
    except OSError:
        return False


def missing_requirements(linux: str = "linux.uml") -> list[str]:
    """Reasons this machine cannot run the UML guest (empty when it can)."""
    reasons = []
    if inside_uml():
        reasons.append("already inside a User-Mode Linux guest (UML does not nest)")
    if os.geteuid() != 0:
        reasons.append("needs root (network namespaces, tap device)")
    if not os.path.exists("/dev/net/tun"):
        reasons.append("no /dev/net/tun")
    if shutil.which(linux) is None:
        reasons.append(f"{linux} not installed (apt-get install user-mode-linux)")
    if not os.path.isdir("/usr/lib/uml/modules"):
        reasons.append("no /usr/lib/uml/modules (user-mode-linux package incomplete)")
    return reasons + missing_tools()


class LinuxNfsdGuest(NfsdWorld):
    """The nfsd world in a UML guest (a whole kernel to boot), always torn down."""

    kind = "uml"

    @classmethod
    def missing(cls, config: GuestConfig | None = None) -> list[str]:
        return missing_requirements((config or GuestConfig()).linux)

    def _launch(self, console: int) -> subprocess.Popen[bytes]:
        self.host_ns = HostNamespace(HOST_ADDR)
        self._say(f"host namespace {self.host_ns.name}: {HOST_ADDR}/24 on {self.host_ns.link_name}")
        cmd = self.host_ns.wrap(
            [
                self.config.linux,
                f"mem={self.config.mem}",
                "rootfstype=hostfs",
                "rootflags=/",
                "ro",
                f"init={GUEST_INIT}",
                f"vec0:transport=tap,ifname={self.host_ns.link_name},gro=1",
                "con0=fd:0,fd:1",
                "con=null",
                "quiet",
                f"RUN={self.run_dir}",
            ]
        )
        return subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=console,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_set_pdeathsig,
        )
