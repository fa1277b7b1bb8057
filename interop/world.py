"""The Linux kernel NFS server world the interop suite runs against, whatever kernel runs it.

Two worlds implement :class:`NfsdWorld`, with one API and one init script
(``interop/guest_init.sh``) that brings up, in the server's network namespace, an MIT KDC, gssproxy,
rpcbind, mountd and nfsd (NFSv4.0-4.2, RPCSEC_GSS krb5/krb5i/krb5p, short grace and lease) and,
optionally, manually keyed kernel ESP (RFC 4106 AES-GCM, transport mode) between a namespace
``client`` and the server:

* :class:`interop.uml.LinuxNfsdGuest` -- a User-Mode Linux guest (its own kernel; for hosts whose
  kernel has no nfsd or no esp4, such as the machines this project is developed on);
* :class:`interop.hostkernel.HostKernelNfsd` -- network, mount, PID and UTS namespaces on the host's
  own kernel (for hosts that have nfsd and esp4).

:func:`interop.choose.open_world` picks one. "Guest" in names and messages means the server world
of either kind.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import ctypes.util
import itertools
import logging
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from interop.netns import HostNamespace, remove_stale

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
GUEST_INIT = Path(__file__).resolve().parent / "guest_init.sh"

#: TEST-NET-1 (RFC 5737): the host-side namespace and the guest's tap address.
HOST_ADDR = "192.0.2.1"
SERVER_ADDR = "192.0.2.2"
#: TEST-NET-2: guest netns ``client`` and the guest root namespace, the ESP-protected path.
ESP_CLIENT_ADDR = "198.51.100.1"
ESP_SERVER_ADDR = "198.51.100.2"
#: SPIs of the two manually keyed SAs (client->server, server->client).
ESP_SPI_IN = 0x1001
ESP_SPI_OUT = 0x1002
#: Where the run directory appears inside the guest.
GUEST_RUN_DIR = "/run/out"
#: Where the exports live inside the guest (each export is its own tmpfs).
GUEST_EXPORT_ROOT = "/srv/export"
NFS_PORT = 2049

Progress = Callable[[str], None]


class GuestError(Exception):
    """Base of the harness errors."""


class GuestBootError(GuestError):
    """The guest did not come up; the message names the run directory and the console tail."""


class GuestCommandError(GuestError):
    """A command in the guest (or host namespace) failed and ``check=True`` was asked for."""

    def __init__(self, result: CommandResult) -> None:
        self.result = result
        super().__init__(
            f"{result.where}: {shlex.join(result.argv)} exited {result.returncode}: "
            f"{result.stderr.strip()[-800:]}"
        )


class GuestTimeout(GuestError):
    """A command in the guest did not finish in time (it was killed)."""


@dataclass(frozen=True)
class Export:
    """One NFS export: ``path`` as the NFSv4 client sees it (fsid=0 is ``/``) and its sec= flavors."""

    path: str
    fsid: int
    flavors: tuple[str, ...]

    @property
    def guest_dir(self) -> str:
        return GUEST_EXPORT_ROOT + ("" if self.path == "/" else self.path)

    def env_word(self) -> str:
        return f"{'' if self.path == '/' else self.path}|{self.fsid}|{':'.join(self.flavors)}"


#: ``/`` (fsid=0, the NFSv4 root) allows AUTH_SYS and every krb5 flavor; ``/krb5only`` needs
#: krb5/krb5i/krb5p; ``/krb5ponly`` needs krb5p, so a LOOKUP into it under AUTH_SYS or krb5i gets
#: NFS4ERR_WRONGSEC (Linux check_nfsd_access() in nfsd_lookup()).
DEFAULT_EXPORTS = (
    Export("/", 0, ("sys", "krb5", "krb5i", "krb5p")),
    Export("/krb5only", 1, ("krb5", "krb5i", "krb5p")),
    Export("/krb5ponly", 2, ("krb5p",)),
)


@dataclass(frozen=True)
class GuestConfig:
    """What the guest runs. The defaults are what the interop suite uses."""

    mem: str = "1G"
    esp: bool = True
    capture: bool = True
    capture_snaplen: int = 256
    grace_time: int = 10
    lease_time: int = 10
    nfsd_threads: int = 8
    export_size: str = "400m"
    exports: tuple[Export, ...] = DEFAULT_EXPORTS
    realm: str = "RPCLATCH.TEST"
    domain: str = "rpclatch.test"
    hostname: str = "guest"
    users: tuple[tuple[str, str], ...] = (("alice", "alice-pw-1"), ("bob", "bob-pw-2"))
    #: In the KDC but not in the server's keytab: asking for it must fail cleanly.
    extra_principals: tuple[str, ...] = ("nfs/wrong.rpclatch.test",)
    boot_timeout: float = 120.0
    python: str = sys.executable
    linux: str = "linux.uml"

    @property
    def fqdn(self) -> str:
        return f"{self.hostname}.{self.domain}"


@dataclass(frozen=True)
class CommandResult:
    """Outcome of a command run in the guest or the host namespace."""

    argv: tuple[str, ...]
    where: str
    returncode: int
    stdout: str
    stderr: str
    duration: float

    @property
    def ok(self) -> bool:
        return self.returncode == 0


@dataclass(frozen=True)
class XfrmCounters:
    """Lifetime counters of one SA (``ip -s xfrm state``)."""

    src: str
    dst: str
    spi: int
    bytes: int
    packets: int


COMMON_TOOLS = (
    "ip",
    "rpc.nfsd",
    "exportfs",
    "rpc.mountd",
    "krb5kdc",
    "kdb5_util",
    "kadmin.local",
    "gssproxy",
    "rpcbind",
    "dumpcap",
)


def missing_tools(tools: Sequence[str] = COMMON_TOOLS) -> list[str]:
    """Reasons (one per tool) the server world cannot be brought up: tools not installed."""
    return [f"{tool} not installed" for tool in tools if shutil.which(tool) is None]


def host_kernel_gaps(
    *,
    filesystems: Path = Path("/proc/filesystems"),
    sys_module: Path = Path("/sys/module"),
    lib_modules: Path = Path("/lib/modules"),
    release: str | None = None,
) -> list[str]:
    """Why the suite cannot use the host's own kernel (nfsd + esp4 in network namespaces) and boots
    User-Mode Linux instead; empty when the host kernel has both.

    nfsd counts as present when the ``nfsd`` file system is registered (``/proc/filesystems``),
    ``/sys/module/nfsd`` exists or the running kernel has it as a module or built in; esp4 when
    ``/sys/module/esp4`` exists (loaded) or the kernel has it (see :func:`_kernel_has_module`).
    """
    release = release or os.uname().release
    mods = lib_modules / release
    gaps = []
    try:
        registered = any(line.split()[-1:] == ["nfsd"] for line in filesystems.read_text().splitlines())
    except OSError:
        registered = False
    if not registered and not (sys_module / "nfsd").is_dir() and not _kernel_has_module(mods, "nfsd"):
        gaps.append(f"host kernel {release} has no nfsd (not in {filesystems}, no nfsd.ko under {mods})")
    if not (sys_module / "esp4").is_dir() and not _kernel_has_module(mods, "esp4"):
        gaps.append(f"host kernel {release} has no esp4 (no {sys_module / 'esp4'}, no esp4.ko under {mods})")
    return gaps


def _kernel_has_module(mods: Path, name: str) -> bool:
    """``name`` is installed (``modules.dep``) or built in (``modules.builtin``) under ``mods``
    (``/lib/modules/<release>``); without those indexes, a ``name.ko*`` file anywhere below."""
    indexed = False
    for index in ("modules.dep", "modules.builtin"):
        try:
            text = (mods / index).read_text(errors="replace")
        except OSError:
            continue
        indexed = True
        if re.search(rf"(?:^|/){re.escape(name)}\.ko", text, re.MULTILINE):
            return True
    return not indexed and any(mods.glob(f"**/{name}.ko*"))


def _set_pdeathsig() -> None:
    """In the world's first child: die with the parent so a killed harness leaves nothing behind."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _tmp_keep(paths: Sequence[Path]) -> list[str]:
    """First components of those ``paths`` under /tmp: the guest bind-mounts them over its tmpfs."""
    keep = []
    for path in paths:
        parts = path.resolve().parts
        if len(parts) > 2 and parts[1] == "tmp" and parts[2] not in keep:
            keep.append(parts[2])
    return keep


def host_tmp_keep(python: str) -> list[str]:
    """What a guest or private /tmp must bind back from the host's /tmp: this checkout and the
    Python (interpreter, venv, base prefix) its commands run with, where they lie under /tmp."""
    return _tmp_keep([REPO_ROOT, Path(python), Path(sys.prefix), Path(sys.base_prefix)])


def path_in_run_dir(run_dir: Path, host_path: Path | str) -> str:
    """The path, under :data:`GUEST_RUN_DIR`, of ``host_path`` (a file in the host's ``run_dir``)."""
    rel = Path(host_path).resolve().relative_to(run_dir)
    return f"{GUEST_RUN_DIR}/{rel}" if str(rel) != "." else GUEST_RUN_DIR


def _exited(pid: int) -> bool:
    """True once ``pid`` (our child) has exited -- zombie or gone -- without reaping it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return True
    fields = stat.rsplit(")", 1)[-1].split()
    return not fields or fields[0] in ("Z", "X")


def _group_alive(pgid: int) -> bool:
    """True while a live (non-zombie) process is in process group ``pgid``."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[-1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if len(fields) > 2 and fields[2] == str(pgid) and fields[0] not in ("Z", "X"):
            return True
    return False


def kill_process_group(proc: subprocess.Popen[bytes]) -> None:
    """Kill the process group ``proc`` leads (made with ``start_new_session``): SIGTERM, then SIGKILL,
    then reap ``proc``. The leader is not reaped before (at most a zombie), so its PID still names
    that group and nothing else -- UML's helper processes, or the netns init's ``ip``/``unshare``."""
    if proc.returncode is None:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, sig)
            deadline = time.monotonic() + 5
            while _group_alive(proc.pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if not _group_alive(proc.pid):
                break
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)


class GuestJob:
    """A command running inside the guest (see :meth:`NfsdWorld.spawn`)."""

    def __init__(self, guest: NfsdWorld, job_id: str, argv: tuple[str, ...], where: str) -> None:
        self.guest = guest
        self.job_id = job_id
        self.argv = argv
        self.where = where
        self.started = time.monotonic()
        self._base = guest.run_dir / "jobs" / job_id
        self._result: CommandResult | None = None

    @property
    def pid(self) -> int | None:
        """Guest PID of the command once it started, else None."""
        try:
            return int((self._base.with_suffix(".pid")).read_text().strip())
        except (FileNotFoundError, ValueError):
            return None

    def done(self) -> bool:
        return self._base.with_suffix(".rc").exists()

    def signal(self, sig: str = "TERM") -> None:
        """Send signal ``sig`` (name without SIG) to the command, if it is running."""
        deadline = time.monotonic() + 10
        pid = self.pid
        while pid is None and not self.done() and time.monotonic() < deadline:
            time.sleep(0.05)
            pid = self.pid
        if pid is not None and not self.done():
            self.guest.run(["kill", f"-{sig}", str(pid)], timeout=30)

    def wait(self, timeout: float = 120.0, check: bool = False) -> CommandResult:
        if self._result is None:
            deadline = time.monotonic() + timeout
            rc_path = self._base.with_suffix(".rc")
            while not rc_path.exists():
                if not self.guest.running:
                    raise GuestError(f"guest went away while running {shlex.join(self.argv)}")
                if time.monotonic() > deadline:
                    self.signal("KILL")
                    raise GuestTimeout(
                        f"guest command did not finish in {timeout:.0f} s (killed): {shlex.join(self.argv)}"
                    )
                time.sleep(0.05)
            self._result = CommandResult(
                argv=self.argv,
                where=self.where,
                returncode=int(rc_path.read_text().strip() or "255"),
                stdout=self._base.with_suffix(".out").read_text(errors="replace"),
                stderr=self._base.with_suffix(".err").read_text(errors="replace"),
                duration=time.monotonic() - self.started,
            )
        if check and not self._result.ok:
            raise GuestCommandError(self._result)
        return self._result


class NfsdWorld:
    """Linux nfsd + KDC + gssproxy (+ ESP) behind one API.

    ``with World() as world: ...`` brings it up and always tears it down. Subclasses say how the
    world's init (``guest_init.sh``) is started (:meth:`_launch`) and what the machine must have
    (:meth:`missing`); everything after the init is running is shared.

    Everything lands in one run directory: ``console.log``, ``nfs.pcapng`` (NFS + ESP traffic
    captured in the server namespace), ``krb5kdc.log``, ``gssproxy.log``, ``syslog.log``,
    ``dmesg.log``, ``xfrm-state.log``, keytabs, ``krb5.conf`` for the host side, and one set of
    files per command job in ``jobs/``.

    Two places run clients:

    * the host-side namespace (``192.0.2.1`` -> ``192.0.2.2``, over a UML tap or a veth):
      :meth:`host_run` runs a command there, :meth:`in_host_netns` moves the calling thread there
      (in-process clients); :meth:`host_env` gives the Kerberos environment;
    * inside the server world (:meth:`run`, :meth:`spawn`; ``netns="client"`` for the ESP-protected
      path ``198.51.100.1`` -> ``198.51.100.2``): a job is a shell script dropped into the run
      directory that the world's init executes, writing stdout, stderr and the exit status back.
    """

    #: ``"uml"`` or ``"netns"``: which kernel runs nfsd (tests and logs name it).
    kind = "abstract"

    def __init__(
        self,
        config: GuestConfig | None = None,
        run_dir: Path | str | None = None,
        progress: Progress | None = None,
    ) -> None:
        self.config = config or GuestConfig()
        if run_dir is None:
            stamp = time.strftime("%Y%m%d-%H%M%S")
            run_dir = REPO_ROOT / "runs" / "interop" / f"{stamp}-{os.getpid()}"
        self.run_dir = Path(run_dir).resolve()
        self._progress = progress or (lambda line: log.info("%s", line))
        self.host_ns: HostNamespace | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._console_thread: threading.Thread | None = None
        self._stop_tail = threading.Event()
        self._job_ids = itertools.count(1)
        self._job_lock = threading.Lock()
        self._closed = False
        self._t0 = 0.0
        self._sigterm_pid = 0
        self._old_sigterm: signal.Handlers | Callable[[int, FrameType | None], object] | int | None = None
        self.esp_key_in = "0x" + os.urandom(20).hex()
        self.esp_key_out = "0x" + os.urandom(20).hex()

    # ---- names -----------------------------------------------------------------------------------

    @property
    def fqdn(self) -> str:
        return self.config.fqdn

    @property
    def realm(self) -> str:
        return self.config.realm

    @property
    def service_name(self) -> str:
        """GSS host-based service name of the NFS server (``nfs@guest.rpclatch.test``)."""
        return f"nfs@{self.fqdn}"

    @property
    def service_principal(self) -> str:
        return f"nfs/{self.fqdn}@{self.realm}"

    @property
    def host_krb5_conf(self) -> Path:
        """krb5.conf for clients in the host-side namespace (KDC at the guest's tap address)."""
        return self.run_dir / "krb5.conf"

    @property
    def capture_file(self) -> Path:
        return self.run_dir / "nfs.pcapng"

    @property
    def console_log(self) -> Path:
        return self.run_dir / "console.log"

    def keytab(self, user: str) -> Path:
        """Client keytab of ``user`` (host path; in the guest it is under :data:`GUEST_RUN_DIR`)."""
        return self.run_dir / f"{user}.keytab"

    def guest_path(self, host_path: Path | str) -> str:
        """The guest's path for a file under the run directory."""
        return path_in_run_dir(self.run_dir, host_path)

    def export(self, path: str) -> Export:
        for exp in self.config.exports:
            if exp.path == path:
                return exp
        raise KeyError(path)

    def server_path(self, nfs_path: str) -> str:
        """Path inside the guest of the file the NFSv4 client calls ``nfs_path`` (e.g. ``/a/b``)."""
        return GUEST_EXPORT_ROOT + ("" if nfs_path == "/" else nfs_path)

    @property
    def running(self) -> bool:
        """True while the world's init runs (checked without reaping it, see :meth:`close`)."""
        return self._proc is not None and self._proc.returncode is None and not _exited(self._proc.pid)

    # ---- lifecycle -------------------------------------------------------------------------------

    def __enter__(self) -> NfsdWorld:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _say(self, text: str) -> None:
        self._progress(f"[{time.monotonic() - self._t0:6.2f}s] {text}")

    def start(self) -> None:
        """Boot the guest and wait until nfsd is ready; on any failure tear down and raise."""
        missing = self.missing(self.config)
        if missing:
            raise GuestBootError(f"cannot run the Linux nfsd {self.kind} world here: " + "; ".join(missing))
        self._t0 = time.monotonic()
        atexit.register(self.close)
        if threading.current_thread() is threading.main_thread():
            self._sigterm_pid = os.getpid()
            self._old_sigterm = signal.signal(signal.SIGTERM, self._on_sigterm)
        try:
            self._start()
        except BaseException:
            self.close()
            raise

    def _on_sigterm(self, signum: int, frame: FrameType | None) -> None:
        """SIGTERM in the process that brought the world up unwinds it like Ctrl-C (so ``close`` runs).
        A forked child inherits this handler (pyroute2's netns helpers, multiprocessing): there it
        must not unwind into a copy of the caller's stack -- it would run the caller's teardown and
        could block forever on a lock held by another thread at fork time -- so the child dies of
        the signal as it would have without the handler."""
        if os.getpid() != self._sigterm_pid:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            os._exit(128 + signum)
        raise KeyboardInterrupt(f"signal {signum}")

    def _write_env(self) -> None:
        cfg = self.config
        values = {
            "WORLD": self.kind,
            "FQDN": cfg.fqdn,
            "DOMAIN": cfg.domain,
            "REALM": cfg.realm,
            "HOST_ADDR": HOST_ADDR,
            "HOST_FQDN": f"host.{cfg.domain}",
            "SERVER_ADDR": SERVER_ADDR,
            "ESP": "1" if cfg.esp else "0",
            "ESP_CLIENT_ADDR": ESP_CLIENT_ADDR,
            "ESP_SERVER_ADDR": ESP_SERVER_ADDR,
            "ESP_SPI_IN": hex(ESP_SPI_IN),
            "ESP_SPI_OUT": hex(ESP_SPI_OUT),
            "ESP_KEY_IN": self.esp_key_in,
            "ESP_KEY_OUT": self.esp_key_out,
            "SERVICE_PRINCIPALS": f"nfs/{cfg.fqdn} host/{cfg.fqdn}",
            "EXTRA_PRINCIPALS": " ".join(cfg.extra_principals),
            "USERS": " ".join(f"{u}:{pw}" for u, pw in cfg.users),
            "EXPORTS": " ".join(e.env_word() for e in sorted(cfg.exports, key=lambda e: e.path)),
            "EXPORT_SIZE": cfg.export_size,
            "CAPTURE": "1" if cfg.capture else "0",
            "CAPTURE_SNAPLEN": str(cfg.capture_snaplen),
            "GRACE_TIME": str(cfg.grace_time),
            "LEASE_TIME": str(cfg.lease_time),
            "NFSD_THREADS": str(cfg.nfsd_threads),
            "HOST_TMP_KEEP": " ".join(host_tmp_keep(cfg.python)),
        }
        for key, value in values.items():
            if "'" in value or "\n" in value:
                raise GuestBootError(f"unusable value for {key}: {value!r}")
        text = "".join(f"{k}={shlex.quote(v)}\n" for k, v in values.items())
        (self.run_dir / "guest.env").write_text(text)
        self.host_krb5_conf.write_text(
            "[libdefaults]\n"
            f"  default_realm = {cfg.realm}\n"
            "  dns_lookup_kdc = false\n  dns_lookup_realm = false\n"
            "  dns_canonicalize_hostname = false\n  rdns = false\n  udp_preference_limit = 1\n"
            f"[realms]\n  {cfg.realm} = {{\n    kdc = {SERVER_ADDR}:88\n  }}\n"
            f"[domain_realm]\n  .{cfg.domain} = {cfg.realm}\n  {cfg.domain} = {cfg.realm}\n"
        )

    @classmethod
    def missing(cls, config: GuestConfig | None = None) -> list[str]:
        """Reasons this machine cannot run this world (empty when it can)."""
        raise NotImplementedError

    def _launch(self, console: int) -> subprocess.Popen[bytes]:
        """Create :attr:`host_ns` and start the world's init with stdout/stderr on ``console``;
        the process must lead its own process group (``start_new_session``)."""
        raise NotImplementedError

    def _after_stop(self) -> None:
        """Release what :meth:`_launch` made beyond the init's process group and :attr:`host_ns`."""

    def _start(self) -> None:
        for path in (REPO_ROOT, self.run_dir, Path(self.config.python)):
            if " " in str(path):
                raise GuestBootError(f"path with a space cannot be handed to the world's init: {path}")
        for name in remove_stale():
            self._say(f"removed namespace {name} left by an earlier run")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "jobs").mkdir(exist_ok=True)
        for stale in ("ready", "failed", "stop"):
            (self.run_dir / stale).unlink(missing_ok=True)
        self._write_env()
        self._say(f"run dir {self.run_dir}")
        console = os.open(self.console_log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            self._proc = self._launch(console)
        finally:
            os.close(console)
        self._say(f"{self.kind} world started, pid {self._proc.pid}")
        self._console_thread = threading.Thread(
            target=self._tail_console, name=f"{self.kind}-console", daemon=True
        )
        self._console_thread.start()
        deadline = time.monotonic() + self.config.boot_timeout
        while not (self.run_dir / "ready").exists():
            failed = self.run_dir / "failed"
            if failed.exists() or not self.running or time.monotonic() > deadline:
                time.sleep(0.3)
                reason = (
                    failed.read_text().strip()
                    if failed.exists()
                    else (
                        f"the {self.kind} init exited"
                        if not self.running
                        else f"not ready after {self.config.boot_timeout:.0f} s"
                    )
                )
                raise GuestBootError(
                    f"{self.kind} world did not come up ({reason}); console tail:\n"
                    f"{self._console_tail()}\nrun dir: {self.run_dir}"
                )
            time.sleep(0.1)
        self._say("ready: nfsd, KDC, gssproxy" + (", ESP" if self.config.esp else ""))

    def _console_tail(self, max_chars: int = 4000) -> str:
        try:
            text = self.console_log.read_text(errors="replace")
        except FileNotFoundError:
            return "(no console log)"
        return "\n".join(line for line in text.splitlines() if "use-gss-proxy" not in line)[-max_chars:]

    def _tail_console(self) -> None:
        pos = 0
        buf = b""
        while not self._stop_tail.is_set():
            try:
                with self.console_log.open("rb") as f:
                    f.seek(pos)
                    chunk = f.read()
            except FileNotFoundError:
                chunk = b""
            pos += len(chunk)
            buf += chunk
            *lines, buf = buf.split(b"\n")
            for raw in lines:
                line = raw.decode(errors="replace").rstrip()
                if line.startswith("[guest") or "FATAL" in line:
                    self._say(line)
            self._stop_tail.wait(0.2)

    def close(self) -> None:
        """Power the guest off (kill it if needed), delete the namespace; safe to call repeatedly.

        Teardown always happens: this runs also from ``__exit__``, ``atexit`` and a SIGTERM
        handler; it asks the init to stop, then kills its process group by PID, then deletes the
        namespaces."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(Exception):
            atexit.unregister(self.close)
        try:
            if self._proc is not None:
                self._stop_guest(self._proc)
        finally:
            self._stop_tail.set()
            try:
                self._after_stop()
            finally:
                if self.host_ns is not None:
                    self.host_ns.close()
            if self._old_sigterm is not None and threading.current_thread() is threading.main_thread():
                signal.signal(signal.SIGTERM, self._old_sigterm)
                self._old_sigterm = None
            if self._t0:
                self._say(f"{self.kind} world stopped; logs in {self.run_dir}")

    def _stop_guest(self, proc: subprocess.Popen[bytes]) -> None:
        if proc.returncode is None and not _exited(proc.pid):
            with contextlib.suppress(OSError):
                (self.run_dir / "stop").touch()
            deadline = time.monotonic() + 20
            while not _exited(proc.pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            if not _exited(proc.pid):
                self._say(f"the {self.kind} init did not stop; killing its process group {proc.pid}")
        kill_process_group(proc)

    # ---- commands --------------------------------------------------------------------------------

    def spawn(
        self,
        argv: Sequence[str] | str,
        *,
        netns: str | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
    ) -> GuestJob:
        """Start ``argv`` (a list, or a shell command string) in the guest; ``netns="client"`` runs
        it in the ESP-protected namespace. Returns at once; :meth:`GuestJob.wait` collects it."""
        if not self.running:
            raise GuestError("the guest is not running")
        with self._job_lock:
            job_id = f"{next(self._job_ids):05d}"
        words = ["sh", "-c", argv] if isinstance(argv, str) else list(argv)
        if netns is not None:
            words = ["ip", "netns", "exec", netns, *words]
        base = f"{GUEST_RUN_DIR}/jobs/{job_id}"
        lines = [
            f"echo $$ >{base}.pid.tmp; sync {base}.pid.tmp; mv {base}.pid.tmp {base}.pid",
            f"cd {shlex.quote(cwd or str(REPO_ROOT))} || exit 126",
        ]
        lines += [f"export {k}={shlex.quote(v)}" for k, v in (env or {}).items()]
        lines.append("exec " + shlex.join(words))
        script = self.run_dir / "jobs" / f"{job_id}.sh"
        tmp = script.with_suffix(".tmp")
        tmp.write_text("\n".join(lines) + "\n")
        tmp.rename(script)
        where = f"guest{'/' + netns if netns else ''}"
        return GuestJob(self, job_id, (argv,) if isinstance(argv, str) else tuple(argv), where)

    def run(
        self,
        argv: Sequence[str] | str,
        *,
        netns: str | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        timeout: float = 120.0,
        check: bool = False,
    ) -> CommandResult:
        """Run ``argv`` in the guest and wait for it (see :meth:`spawn`)."""
        return self.spawn(argv, netns=netns, env=env, cwd=cwd).wait(timeout=timeout, check=check)

    def python_argv(self, *args: str) -> list[str]:
        """argv running this project's Python (same interpreter/venv as the host) with ``args``."""
        return [self.config.python, *args]

    def guest_env(self, user: str | None = "alice", netns: str | None = None) -> dict[str, str]:
        """Environment for a Kerberos client in the guest acting as ``user`` (client keytab)."""
        env = {"PYTHONPATH": str(REPO_ROOT), "KRB5_CONFIG": "/etc/krb5.conf", "PYTHONDONTWRITEBYTECODE": "1"}
        if user is not None:
            env["KRB5_CLIENT_KTNAME"] = f"{GUEST_RUN_DIR}/{user}.keytab"
            env["KRB5CCNAME"] = f"FILE:/tmp/krb5cc_{user}_{netns or 'root'}"
        return env

    def host_env(self, user: str | None = "alice") -> dict[str, str]:
        """Environment for a Kerberos client in the host-side namespace acting as ``user``."""
        env = {"KRB5_CONFIG": str(self.host_krb5_conf), "PYTHONPATH": str(REPO_ROOT)}
        if user is not None:
            env["KRB5_CLIENT_KTNAME"] = str(self.keytab(user))
            env["KRB5CCNAME"] = f"FILE:{self.run_dir / f'host-{user}.ccache'}"
        return env

    def host_run(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        timeout: float = 120.0,
        check: bool = False,
        input_data: str | None = None,
    ) -> CommandResult:
        """Run ``argv`` on the host inside the host-side namespace (reaches the guest at 192.0.2.2)."""
        if self.host_ns is None:
            raise GuestError("the guest is not running")
        t0 = time.monotonic()
        try:
            proc = self.host_ns.run(argv, env=env, timeout=timeout, input_data=input_data)
        except subprocess.TimeoutExpired as exc:
            raise GuestTimeout(f"host command did not finish in {timeout:.0f} s: {shlex.join(argv)}") from exc
        result = CommandResult(
            tuple(argv),
            f"host/{self.host_ns.name}",
            proc.returncode,
            proc.stdout,
            proc.stderr,
            time.monotonic() - t0,
        )
        if check and not result.ok:
            raise GuestCommandError(result)
        return result

    @contextlib.contextmanager
    def in_host_netns(self, user: str | None = "alice") -> Iterator[None]:
        """Run the block with the calling thread in the host-side namespace and the Kerberos
        environment of :meth:`host_env` (for in-process clients; sockets made here stay there)."""
        if self.host_ns is None:
            raise GuestError("the guest is not running")
        saved = {k: os.environ.get(k) for k in ("KRB5_CONFIG", "KRB5_CLIENT_KTNAME", "KRB5CCNAME")}
        os.environ.update({k: v for k, v in self.host_env(user).items() if k != "PYTHONPATH"})
        try:
            with self.host_ns.entered():
                yield
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v

    # ---- server-side operations ------------------------------------------------------------------

    def restart_nfsd(self, grace_time: int | None = None) -> None:
        """Stop and start nfsd: open state is lost, connections are closed, and a grace period of
        ``grace_time`` (default: the config's) starts -- pass a longer one when a test must see
        NFS4ERR_GRACE on a loaded machine."""
        cfg = self.config
        grace = cfg.grace_time if grace_time is None else grace_time
        self.run(
            f"rpc.nfsd 0 && rpc.nfsd -N 3 --lease-time {cfg.lease_time} "
            f"--grace-time {grace} {cfg.nfsd_threads}",
            check=True,
            timeout=60,
        )

    def stop_kdc(self) -> None:
        self.run(
            'kill "$(cat /run/krb5kdc.pid)" && while [ -e /proc/"$(cat /run/krb5kdc.pid)" ]; do '
            "sleep 0.1; done",
            check=True,
            timeout=30,
        )

    def start_kdc(self) -> None:
        self.run(["krb5kdc", "-P", "/run/krb5kdc.pid"], check=True, timeout=30)

    def unexport(self, path: str) -> None:
        """Withdraw the export ``path`` (NFSv4 path, e.g. ``/krb5only``) and flush the caches."""
        self.run(["exportfs", "-u", f"*:{self.export(path).guest_dir}"], check=True)
        self.run(["exportfs", "-f"], check=True)

    def reexport(self) -> None:
        """Restore the configured exports (``exportfs -ra``)."""
        self.run(["exportfs", "-ra"], check=True)

    def drop_caches(self) -> None:
        self.run("sync; echo 3 >/proc/sys/vm/drop_caches", check=True)

    def server_sha256(self, nfs_path: str) -> str:
        """SHA-256 (hex) of a file as the server's file system has it."""
        out = self.run(["sha256sum", self.server_path(nfs_path)], check=True).stdout
        return out.split()[0]

    def kernel_mount(
        self,
        path: str = "/",
        *,
        sec: str = "sys",
        vers: str = "4.1",
        mountpoint: str | None = None,
        timeout: float = 90.0,
    ) -> str:
        """Mount ``path`` of the server with the guest's own kernel NFS client; returns the mount point."""
        mnt = mountpoint or f"/tmp/mnt-{sec}-{vers}-{path.strip('/').replace('/', '_') or 'root'}"
        self.run(["mkdir", "-p", mnt], check=True)
        self.run(
            ["mount", "-t", "nfs4", "-o", f"sec={sec},vers={vers}", f"{self.fqdn}:{path}", mnt],
            check=True,
            timeout=timeout,
        )
        return mnt

    def kernel_umount(self, mountpoint: str) -> None:
        self.run(["umount", mountpoint], check=True, timeout=60)

    def xfrm_counters(self, netns: str | None = None) -> dict[int, XfrmCounters]:
        """SA lifetime counters by SPI, in the guest root namespace or ``netns``."""
        out = self.run(["ip", "-s", "xfrm", "state"], netns=netns, check=True).stdout
        return parse_xfrm_state(out)

    @contextlib.contextmanager
    def capture(
        self, name: str, *, iface: str = "any", bpf: str = "", netns: str | None = None, snaplen: int = 256
    ) -> Iterator[Path]:
        """Capture packets in the guest for the duration of the block; yields the host path of the
        pcapng, complete once the block ends."""
        out = self.run_dir / f"{name}.pcapng"
        out.unlink(missing_ok=True)
        argv = ["dumpcap", "-q", "-i", iface, "-s", str(snaplen), "-w", self.guest_path(out)]
        if bpf:
            argv += ["-f", bpf]
        job = self.spawn(argv, netns=netns)
        deadline = time.monotonic() + 30
        while not (out.exists() and out.stat().st_size > 0):
            if job.done() or time.monotonic() > deadline:
                res = job.wait(timeout=5)
                raise GuestError(f"capture did not start: {res.stderr.strip()}")
            time.sleep(0.1)
        try:
            yield out
        finally:
            time.sleep(1.0)  # dumpcap reads the kernel ring in blocks: let it drain before stopping
            job.signal("INT")
            job.wait(timeout=30)
            self.run(["sync", self.guest_path(out)])


_SA_HEAD = re.compile(r"^src (\S+) dst (\S+)\s*$")
_SA_SPI = re.compile(r"proto esp spi 0x([0-9a-fA-F]+)")
_SA_CUR = re.compile(r"^\s*(\d+)\(bytes\), (\d+)\(packets\)")


def parse_xfrm_state(text: str) -> dict[int, XfrmCounters]:
    """Parse ``ip -s xfrm state`` output into counters by SPI (the ``lifetime current`` line)."""
    result: dict[int, XfrmCounters] = {}
    src = dst = ""
    spi: int | None = None
    for line in text.splitlines():
        if m := _SA_HEAD.match(line):
            src, dst, spi = m.group(1), m.group(2), None
        elif m := _SA_SPI.search(line):
            spi = int(m.group(1), 16)
        elif (m := _SA_CUR.match(line)) and spi is not None:
            result[spi] = XfrmCounters(src, dst, spi, int(m.group(1)), int(m.group(2)))
    return result
