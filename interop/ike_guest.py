"""A User-Mode Linux guest in which real IKEv2 peers negotiate kernel ESP SAs (issue #12 interop).

The host kernel of this project's machines has XFRM but no ESP; the UML kernel has ``esp4``.
:class:`IkeGuest` boots ``linux.uml`` with the host root as a read-only hostfs root and
``interop/ike_guest_init.sh`` as init (modules, the AES-GCM crypto instance, libreswan's
``/usr/libexec/ipsec``), then runs commands in it through the job protocol of
:class:`interop.world.NfsdWorld` (:meth:`run`, :meth:`spawn`): the same run directory, job files,
teardown on error, SIGTERM and Ctrl-C, and the same kill of UML's process group by PID. Unlike the
nfsd world it has no network device and no daemon of its own: each scenario of
:mod:`interop.ike_peers` makes its namespaces, starts its daemons, and removes them again.

One boot serves a whole test module (the fixture in ``tests/interop/test_ike_peers.py``).
"""

from __future__ import annotations

import importlib.util
import os
import shlex
import shutil
import subprocess
from pathlib import Path

from interop.uml import missing_requirements as uml_missing
from interop.world import (
    GuestBootError,
    GuestConfig,
    NfsdWorld,
    Progress,
    _set_pdeathsig,
    host_tmp_keep,
)

INIT = Path(__file__).resolve().parent / "ike_guest_init.sh"
LIBRESWAN_ROOT = os.environ.get("LIBRESWAN_ROOT", "/opt/libreswan")
#: what the peers need on the host (scripts/setup.sh installs all of it)
PEER_TOOLS = ("charon-systemd", "swanctl", "pki", "certutil", "tcpdump", "tshark")


def missing_peers(python: str | None = None) -> list[str]:
    """Reasons the IKE peers cannot run (empty when they can): strongSwan, libreswan, the ``vici``
    module for the Python that runs in the guest."""
    reasons = [
        f"{tool} not installed (run scripts/setup.sh)"
        for tool in PEER_TOOLS
        if shutil.which(tool, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin") is None
    ]
    if not os.access(f"{LIBRESWAN_ROOT}/usr/libexec/ipsec/pluto", os.X_OK):
        reasons.append(f"libreswan not unpacked in {LIBRESWAN_ROOT} (run scripts/setup.sh)")
    if python is None:
        if importlib.util.find_spec("vici") is None:
            reasons.append("the vici Python package is missing (pip install -e '.[dev]')")
    elif subprocess.run([python, "-c", "import vici"], capture_output=True, check=False).returncode:
        reasons.append(f"{python} cannot import vici (pip install -e '.[dev]')")
    return reasons


class IkeGuest(NfsdWorld):
    """The UML guest for IKE interop (see the module docstring); ``with IkeGuest(run_dir=...) as g``.

    Only the job API of :class:`~interop.world.NfsdWorld` applies (:meth:`run`, :meth:`spawn`,
    :meth:`python_argv`, :meth:`guest_path`, :meth:`close`); its nfsd, Kerberos and capture
    helpers do not (there is no nfsd, no KDC, no dumpcap job here: scenarios capture with
    tcpdump themselves)."""

    kind = "uml-ike"

    def __init__(
        self,
        config: GuestConfig | None = None,
        run_dir: Path | str | None = None,
        progress: Progress | None = None,
    ) -> None:
        super().__init__(config or GuestConfig(mem="768M", esp=False, capture=False), run_dir, progress)

    @classmethod
    def missing(cls, config: GuestConfig | None = None) -> list[str]:
        cfg = config or GuestConfig()
        return uml_missing(cfg.linux) + missing_peers(cfg.python)

    def _write_env(self) -> None:
        values = {
            "HOST_TMP_KEEP": " ".join(host_tmp_keep(self.config.python)),
            "LIBRESWAN_ROOT": LIBRESWAN_ROOT,
        }
        for key, value in values.items():
            if "'" in value or "\n" in value:
                raise GuestBootError(f"unusable value for {key}: {value!r}")
        (self.run_dir / "guest.env").write_text("".join(f"{k}={shlex.quote(v)}\n" for k, v in values.items()))

    def _launch(self, console: int) -> subprocess.Popen[bytes]:
        cmd = [
            self.config.linux,
            f"mem={self.config.mem}",
            "rootfstype=hostfs",
            "rootflags=/",
            "ro",
            f"init={INIT}",
            "con0=fd:0,fd:1",
            "con=null",
            "quiet",
            f"RUN={self.run_dir}",
        ]
        return subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=console,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_set_pdeathsig,
        )
