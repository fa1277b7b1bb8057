"""A User-Mode Linux guest that plays a host whose own kernel has nfsd and esp4.

This project's machines lack both in their kernels, so the network-namespace world
(:mod:`interop.hostkernel`) cannot run on them directly. :class:`CapableHost` boots ``linux.uml``
(its kernel has nfsd, esp4, veth and network/PID/mount namespaces) with
``interop/capable_host_init.sh`` as init, which brings up only what such a host has, then runs one
command -- in the tests, the interop suite with ``--world netns`` -- and powers off. The host root
is seen read-only through hostfs, so the command uses this checkout and its virtualenv and writes
only into the run directory (``/run/out`` in the guest).

Teardown always happens: on timeout, error or Ctrl-C the UML process group is killed by PID.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from interop.world import (
    REPO_ROOT,
    _exited,
    _set_pdeathsig,
    host_tmp_keep,
    kill_process_group,
    path_in_run_dir,
)

INIT = Path(__file__).resolve().parent / "capable_host_init.sh"


class CapableHostError(Exception):
    """The guest did not boot, or the command did not finish in time (the guest was killed)."""


@dataclass(frozen=True)
class HostCommandResult:
    """Exit status (None: the guest stopped before the command ended) and the command's output."""

    returncode: int | None
    log: str
    seconds: float


@dataclass(frozen=True)
class CapableHostConfig:
    mem: str = "2G"
    linux: str = "linux.uml"
    boot_timeout: float = 120.0
    python: str = sys.executable


class CapableHost:
    """Boots, runs one command, powers off: ``CapableHost(run_dir).run(argv, env, timeout)``."""

    def __init__(
        self,
        run_dir: Path | str,
        config: CapableHostConfig | None = None,
        progress: Callable[[str], None] | None = None,
    ) -> None:
        self.run_dir = Path(run_dir).resolve()
        self.config = config or CapableHostConfig()
        self._progress = progress or (lambda line: None)
        self._t0 = time.monotonic()

    def _say(self, text: str) -> None:
        self._progress(f"[{time.monotonic() - self._t0:7.2f}s] {text}")

    def guest_path(self, host_path: Path | str) -> str:
        """The guest's path (under /run/out) of a file in the run directory."""
        return path_in_run_dir(self.run_dir, host_path)

    def run(
        self, argv: Sequence[str], *, env: Mapping[str, str] | None = None, timeout: float = 3600.0
    ) -> HostCommandResult:
        """Run ``argv`` (cwd: this checkout) as root inside the guest and power off."""
        for path in (REPO_ROOT, self.run_dir):
            if " " in str(path):
                raise CapableHostError(f"path with a space cannot go on the UML command line: {path}")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        for stale in ("ready", "failed", "rc", "command.log"):
            (self.run_dir / stale).unlink(missing_ok=True)
        keep = " ".join(host_tmp_keep(self.config.python))
        (self.run_dir / "host.env").write_text(f"HOST_TMP_KEEP={shlex.quote(keep)}\n")
        lines = [f"cd {shlex.quote(str(REPO_ROOT))} || exit 126"]
        lines += [f"export {k}={shlex.quote(v)}" for k, v in (env or {}).items()]
        lines.append("exec " + shlex.join(argv))
        (self.run_dir / "command.sh").write_text("\n".join(lines) + "\n")
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
        t0 = time.monotonic()
        with (self.run_dir / "console.log").open("wb") as console:
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=console,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_set_pdeathsig,
            )
        self._say(f"UML started, pid {proc.pid}: {shlex.join(argv)}")
        try:
            return self._wait(proc, t0, timeout)
        finally:
            self._kill(proc)

    def _wait(self, proc: subprocess.Popen[bytes], t0: float, timeout: float) -> HostCommandResult:
        rc_path = self.run_dir / "rc"
        boot_deadline = t0 + self.config.boot_timeout
        deadline = t0 + timeout
        booted = False
        while not rc_path.exists():
            failed = self.run_dir / "failed"
            if failed.exists():
                raise CapableHostError(
                    f"guest failed: {failed.read_text().strip()}; console: {self.run_dir / 'console.log'}"
                )
            if not booted and (self.run_dir / "ready").exists():
                booted = True
                self._say("guest up, command running")
            now = time.monotonic()
            if not booted and now > boot_deadline:
                raise CapableHostError(
                    f"guest not up after {self.config.boot_timeout:.0f} s; console: "
                    f"{self.run_dir / 'console.log'}"
                )
            if now > deadline:
                raise CapableHostError(
                    f"command did not finish in {timeout:.0f} s (guest killed); log: "
                    f"{self.run_dir / 'command.log'}"
                )
            if _exited(proc.pid):
                time.sleep(0.5)
                if rc_path.exists():
                    break
                return HostCommandResult(None, self._log(), time.monotonic() - t0)
            time.sleep(0.5)
        rc = int(rc_path.read_text().strip() or "255")
        self._say(f"command exited {rc}")
        return HostCommandResult(rc, self._log(), time.monotonic() - t0)

    def _log(self) -> str:
        try:
            return (self.run_dir / "command.log").read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def _kill(self, proc: subprocess.Popen[bytes]) -> None:
        """Let the guest power off by itself for a moment, then kill UML's process group."""
        deadline = time.monotonic() + 20
        while not _exited(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        kill_process_group(proc)
