"""The real Linux kernel NFS server on the host's own kernel, in namespaces made for one run.

Where the host kernel has nfsd and esp4 (:func:`interop.world.host_kernel_gaps` is empty),
:class:`HostKernelNfsd` runs the same world as the UML guest without booting a kernel: a server
network namespace ``rlsrv-<pid>-<n>`` linked by a veth pair (``vec0`` on its side) to the host-side
namespace ``rlnfs-<pid>-<n>``, and ``interop/guest_init.sh`` as PID 1 of fresh PID, mount and UTS
namespaces inside it (``unshare --pid --fork --kill-child --mount --uts --propagation private``).
The init gives itself private ``/run``, ``/tmp``, ``/etc``, ``/dev``, ``/var/lib/nfs``, ``/srv``,
so nothing it starts (KDC, gssproxy, rpcbind, mountd, nfsdcld, rpc.gssd, syslogd, dumpcap) touches
the host's files, sockets or daemons; nfsd, its exports and its NFSv4 client tracking are per
network namespace in the kernel. The ``client`` namespace of the ESP path is made by the init
inside its private ``/run/netns``.

Teardown: the init stops nfsd and exits when asked; if it has to be killed, every process of its
PID namespace dies with it (``--kill-child``, PID 1 gone), nfsd of the server namespace is stopped
from outside, then both namespaces are deleted.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path

from interop.netns import SERVER_PREFIX, HostNamespace, NetnsError, _ip, netns_exists, stop_nfsd
from interop.world import (
    COMMON_TOOLS,
    GUEST_INIT,
    HOST_ADDR,
    GuestConfig,
    NfsdWorld,
    Progress,
    _set_pdeathsig,
    host_kernel_gaps,
    missing_tools,
)


def missing_requirements() -> list[str]:
    """Reasons this machine cannot run the host-kernel world (empty when it can)."""
    reasons = [] if os.geteuid() == 0 else ["needs root (network, mount and PID namespaces)"]
    return reasons + missing_tools(("unshare", "nfsdcld", *COMMON_TOOLS)) + host_kernel_gaps()


_counter = 0


class HostKernelNfsd(NfsdWorld):
    """The nfsd world on the host kernel, in namespaces (no kernel to boot), always torn down."""

    kind = "netns"

    def __init__(
        self,
        config: GuestConfig | None = None,
        run_dir: Path | str | None = None,
        progress: Progress | None = None,
    ) -> None:
        global _counter
        super().__init__(config, run_dir, progress)
        _counter += 1
        self.server_netns = f"{SERVER_PREFIX}-{os.getpid()}-{_counter}"

    @classmethod
    def missing(cls, config: GuestConfig | None = None) -> list[str]:
        return missing_requirements()

    def _launch(self, console: int) -> subprocess.Popen[bytes]:
        _ip("netns", "add", self.server_netns)
        self.host_ns = HostNamespace(HOST_ADDR, peer_netns=self.server_netns)
        self._say(
            f"server namespace {self.server_netns} <-> host namespace {self.host_ns.name} "
            f"({HOST_ADDR}/24 on {self.host_ns.link_name}, vec0 on the server side)"
        )
        cmd = [
            "ip",
            "netns",
            "exec",
            self.server_netns,
            "unshare",
            "--pid",
            "--fork",
            "--kill-child",
            "--mount",
            "--uts",
            "--propagation",
            "private",
            "/bin/sh",
            str(GUEST_INIT),
        ]
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "RUN": str(self.run_dir), "WORLD": self.kind}
        return subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=console,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            preexec_fn=_set_pdeathsig,
        )

    def _after_stop(self) -> None:
        if not netns_exists(self.server_netns):  # the name carries our PID: if it exists, we made it
            return
        error = stop_nfsd(self.server_netns)
        if error:
            self._say(f"stopping nfsd in {self.server_netns}: {error}")
        with contextlib.suppress(NetnsError):
            _ip("netns", "del", self.server_netns)
