"""The harness itself: parsers and helpers (no guest), and teardown on SIGTERM / Ctrl-C (a guest)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from interop import hostkernel, sockpolicy, uml
from interop.choose import WORLD_ENV, WORLDS, WorldChoiceError, choose_world
from interop.runner import CaseResult, format_table, parse_junit
from interop.world import (
    DEFAULT_EXPORTS,
    REPO_ROOT,
    Export,
    GuestBootError,
    GuestConfig,
    NfsdWorld,
    XfrmCounters,
    _tmp_keep,
    host_kernel_gaps,
    parse_xfrm_state,
)

XFRM_STATE = """\
src 198.51.100.2 dst 198.51.100.1
\tproto esp spi 0x00001002(4098) reqid 1(0x00000001) mode transport
\treplay-window 0 seq 0x00000000 flag  (0x00000000)
\taead rfc4106(gcm(aes)) 0x513a2ef1113343a3f2749927c3ee2b01df5cd560 (160 bits) 128
\tlifetime config:
\t  limit: soft (INF)(bytes), hard (INF)(bytes)
\t  limit: soft (INF)(packets), hard (INF)(packets)
\tlifetime current:
\t  3249896(bytes), 2738(packets)
\t  add 2026-11-26 19:41:55 use 2026-11-26 19:42:04
src 198.51.100.1 dst 198.51.100.2
\tproto esp spi 0x00001001(4097) reqid 1(0x00000001) mode transport
\tlifetime current:
\t  3264802(bytes), 2931(packets)
"""


def test_parse_xfrm_state_reads_lifetime_counters() -> None:
    assert parse_xfrm_state(XFRM_STATE) == {
        0x1002: XfrmCounters("198.51.100.2", "198.51.100.1", 0x1002, 3249896, 2738),
        0x1001: XfrmCounters("198.51.100.1", "198.51.100.2", 0x1001, 3264802, 2931),
    }


@given(st.text())
def test_parse_xfrm_state_never_raises(text: str) -> None:
    result = parse_xfrm_state(text)
    assert all(isinstance(v, XfrmCounters) and v.spi == k for k, v in result.items())


def test_parse_junit_and_table(tmp_path: Path) -> None:
    xml = tmp_path / "junit.xml"
    xml.write_text(
        '<?xml version="1.0"?><testsuites><testsuite name="pytest">'
        '<testcase classname="tests.interop.test_a" name="test_ok" time="1.5"/>'
        '<testcase classname="tests.interop.test_a" name="test_bad" time="0.25">'
        '<failure message="assert 1 == 2&#10;more">tb</failure></testcase>'
        '<testcase classname="tests.interop.test_b" name="test_skip" time="0">'
        '<skipped message="no uml"/></testcase>'
        "</testsuite></testsuites>"
    )
    cases = parse_junit(xml)
    assert cases == [
        CaseResult("test_a::test_ok", "passed", 1.5, ""),
        CaseResult("test_a::test_bad", "failed", 0.25, "assert 1 == 2"),
        CaseResult("test_b::test_skip", "skipped", 0.0, "no uml"),
    ]
    table = format_table(cases)
    assert table.splitlines()[-1] == "1 passed, 1 failed, 0 error, 1 skipped of 3"
    assert "FAILED" in table and "assert 1 == 2" in table


def test_tmp_keep_names_only_paths_under_tmp() -> None:
    assert _tmp_keep(
        [Path("/tmp/ci-clone/repo"), Path("/tmp/ci-clone/x"), Path("/work/main"), Path("/tmp")]
    ) == ["ci-clone"]


def test_default_exports_give_wrongsec_layout() -> None:
    by_path = {e.path: e for e in DEFAULT_EXPORTS}
    assert by_path["/"].fsid == 0 and "sys" in by_path["/"].flavors
    assert by_path["/krb5ponly"].flavors == ("krb5p",)
    assert by_path["/krb5only"].env_word() == "/krb5only|1|krb5:krb5i:krb5p"
    assert by_path["/"].env_word() == "|0|sys:krb5:krb5i:krb5p"


BOOT_AND_WAIT = """
import sys, time
from interop.choose import choose_world
with choose_world(sys.argv[2]).cls(run_dir=sys.argv[1]) as g:
    print("READY", g.host_ns.name, g._proc.pid, getattr(g, "server_netns", "-"), flush=True)
    time.sleep(600)
"""


def _world_or_skip(kind: str) -> type[NfsdWorld]:
    cls = WORLDS[kind]
    missing = cls.missing()
    if missing:
        pytest.skip(f"{kind} world cannot run here: " + "; ".join(missing))
    return cls


def _run_dir(label: str) -> Path:
    """A run directory of its own; the repository may be read-only (the netns suite inside UML)."""
    base = os.environ.get("RPCLATCH_INTEROP_RUN_DIR")
    root = Path(base) if base else REPO_ROOT / "runs" / "interop"
    return root / f"{label}-{os.getpid()}-{time.time_ns()}"


@pytest.mark.uml
@pytest.mark.root
@pytest.mark.parametrize("kind", ["uml", "netns"])
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_tears_down_world_and_namespaces(tmp_path: Path, sig: signal.Signals, kind: str) -> None:
    _world_or_skip(kind)
    run_dir = _run_dir(f"teardown-{kind}-{sig.name}")
    proc = subprocess.Popen(
        [sys.executable, "-c", BOOT_AND_WAIT, str(run_dir), kind],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)),
    )
    try:
        assert proc.stdout is not None
        line = ""
        deadline = time.monotonic() + 180
        while not line.startswith("READY") and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line and proc.poll() is not None:
                break
        assert line.startswith("READY"), f"world did not come up: {line!r}"
        _, netns, init_pid, server_netns = line.split()
        assert Path(f"/run/netns/{netns}").exists()
        proc.send_signal(sig)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    assert not Path(f"/run/netns/{netns}").exists()
    assert server_netns == "-" or not Path(f"/run/netns/{server_netns}").exists()
    assert not Path(f"/proc/{init_pid}").exists() or _exited_or_other(int(init_pid), run_dir)
    assert _leftovers(run_dir) == []


def _exited_or_other(pid: int, run_dir: Path) -> bool:
    """The PID the world's init had is gone, or now belongs to a process unrelated to this run."""
    try:
        return str(run_dir) not in Path(f"/proc/{pid}/cmdline").read_text(errors="replace") and str(
            run_dir
        ) not in Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace")
    except OSError:
        return True


def _leftovers(run_dir: Path) -> list[str]:
    """Processes still running for ``run_dir``: the UML guest names it on its command line, the
    netns world's init has it in its environment (RUN=...)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            text = (entry / "cmdline").read_bytes() + b" " + (entry / "environ").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[-1].split()[0]
        except OSError:
            continue
        if f"RUN={run_dir}".encode() in text and state not in ("Z", "X"):
            found.append(f"{entry.name}: {text[:200]!r}")
    return found


@pytest.mark.uml
@pytest.mark.root
@pytest.mark.parametrize("kind", ["uml", "netns"])
def test_boot_failure_raises_and_cleans_up(kind: str) -> None:
    cls = _world_or_skip(kind)
    run_dir = _run_dir(f"bootfail-{kind}")
    world = cls(
        GuestConfig(exports=(Export("/", 0, ("nosuchflavor",)),), esp=False, capture=False), run_dir=run_dir
    )
    with pytest.raises(GuestBootError) as info:
        world.start()
    assert "exportfs" in str(info.value) and str(run_dir) in str(info.value)
    assert world.host_ns is not None
    assert not Path(f"/run/netns/{world.host_ns.name}").exists()
    if isinstance(world, hostkernel.HostKernelNfsd):
        assert not Path(f"/run/netns/{world.server_netns}").exists()
    assert not world.running
    assert _leftovers(run_dir) == []


@pytest.mark.uml
@pytest.mark.root
def test_cli_runs_the_suite_and_prints_a_table() -> None:
    choice = choose_world()
    if choice.missing:
        pytest.skip("; ".join(choice.missing))
    run_dir = _run_dir("cli")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "rpclatch.cli",
            "interop",
            "linux-nfsd",
            "--run-dir",
            str(run_dir),
            "--world",
            choice.kind,
            "-k",
            "test_rpcinfo_lists_nfs",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "PASSED" in proc.stdout
    assert f"interop: world: {choose_world(choice.kind).reason}" in proc.stdout  # "(asked for)"
    assert "test_linux_nfsd_rpc::test_rpcinfo_lists_nfs_v4_tcp_2049" in proc.stdout
    assert proc.stdout.rstrip().splitlines()[-2] == "1 passed, 0 failed, 0 error, 0 skipped of 1"
    cases = parse_junit(run_dir / "junit.xml")
    assert [c.outcome for c in cases] == ["passed"]
    assert (run_dir / "guest" / "console.log").exists() and (run_dir / "guest" / "nfs.pcapng").exists()


def test_socket_policy_layouts_match_linux_xfrm_h() -> None:
    info = sockpolicy.userpolicy_info(sockpolicy.XFRM_POLICY_OUT)
    assert len(info) == 168
    assert info[40:42] == socket.AF_INET.to_bytes(2, sys.byteorder)  # sel.family
    assert info[56:64] == b"\xff" * 8  # lifetime.soft_byte_limit: unlimited
    assert info[160] == sockpolicy.XFRM_POLICY_OUT and info[161] == sockpolicy.XFRM_POLICY_ALLOW
    tmpl = sockpolicy.esp_transport_tmpl("198.51.100.1", "198.51.100.2", reqid=7)
    assert len(tmpl) == 64
    assert tmpl[0:4] == bytes([198, 51, 100, 2]) and tmpl[20] == 50  # id.daddr, id.proto = ESP
    assert tmpl[28:32] == bytes([198, 51, 100, 1])  # saddr
    assert int.from_bytes(tmpl[44:48], sys.byteorder) == 7 and tmpl[48] == sockpolicy.XFRM_MODE_TRANSPORT
    assert tmpl[52:64] == b"\xff" * 12  # any auth/enc/comp algorithm


def test_host_kernel_gaps_names_what_the_host_kernel_lacks(tmp_path: Path) -> None:
    """The network-namespace mode needs nfsd and esp4 in the host kernel; each missing one is named."""
    fs, sysmod, libmod = tmp_path / "filesystems", tmp_path / "sys-module", tmp_path / "lib-modules"
    sysmod.mkdir()
    fs.write_text("nodev\tsysfs\nnodev\tproc\n\text4\n")
    gaps = host_kernel_gaps(filesystems=fs, sys_module=sysmod, lib_modules=libmod, release="9.9.9")
    assert len(gaps) == 2 and "no nfsd" in gaps[0] and "no esp4" in gaps[1]
    fs.write_text("nodev\tsysfs\nnodev\tnfsd\n")  # nfsd registered (module loaded or built in)
    (libmod / "9.9.9" / "kernel" / "net" / "ipv4").mkdir(parents=True)
    (libmod / "9.9.9" / "kernel" / "net" / "ipv4" / "esp4.ko.xz").write_bytes(b"")
    assert host_kernel_gaps(filesystems=fs, sys_module=sysmod, lib_modules=libmod, release="9.9.9") == []
    fs.write_text("nodev\tsysfs\n")
    (sysmod / "nfsd").mkdir()  # nfsd loaded, its file system not registered yet
    assert host_kernel_gaps(filesystems=fs, sys_module=sysmod, lib_modules=libmod, release="9.9.9") == []
    (sysmod / "nfsd").rmdir()
    (libmod / "9.9.9" / "kernel" / "net" / "ipv4" / "esp4.ko.xz").unlink()
    (sysmod / "esp4").mkdir()  # esp4 loaded
    (libmod / "9.9.9" / "kernel" / "fs" / "nfsd").mkdir(parents=True)
    (libmod / "9.9.9" / "kernel" / "fs" / "nfsd" / "nfsd.ko").write_bytes(b"")
    assert host_kernel_gaps(filesystems=fs, sys_module=sysmod, lib_modules=libmod, release="9.9.9") == []


def test_host_kernel_gaps_reads_the_module_indexes(tmp_path: Path) -> None:
    """With modules.dep / modules.builtin the kernel's own lists decide (a built-in esp4 counts, a
    stray .ko file not listed does not); no directory walk."""
    fs, sysmod, libmod = tmp_path / "filesystems", tmp_path / "sys-module", tmp_path / "lib-modules"
    sysmod.mkdir()
    fs.write_text("nodev\tsysfs\n")
    mods = libmod / "9.9.9"
    (mods / "kernel" / "fs" / "nfsd").mkdir(parents=True)
    (mods / "kernel" / "fs" / "nfsd" / "nfsd.ko").write_bytes(b"")  # present, but not in the index
    (mods / "modules.dep").write_text("kernel/fs/nfs/nfsv4.ko.xz: kernel/fs/nfs/nfs.ko.xz\n")
    (mods / "modules.builtin").write_text("kernel/net/ipv4/esp4.ko\n")
    gaps = host_kernel_gaps(filesystems=fs, sys_module=sysmod, lib_modules=libmod, release="9.9.9")
    assert len(gaps) == 1 and "no nfsd" in gaps[0]
    (mods / "modules.dep").write_text("kernel/fs/nfsd/nfsd.ko.xz: kernel/net/sunrpc/sunrpc.ko.xz\n")
    assert host_kernel_gaps(filesystems=fs, sys_module=sysmod, lib_modules=libmod, release="9.9.9") == []


def test_runner_help_names_the_worlds_and_the_choice_here() -> None:
    """``interop/run --help`` explains both worlds and says which one this machine gets, and why."""
    reason = choose_world().reason
    out = subprocess.run(
        [sys.executable, str(REPO_ROOT / "interop" / "runner.py"), "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    text = " ".join(out.split())
    assert "User-Mode Linux" in text and "network namespaces on the host's own kernel" in text
    assert " ".join(reason.split()) in text


def test_choose_world_follows_the_host_kernel_and_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(WORLD_ENV, raising=False)
    auto = choose_world()
    if hostkernel.missing_requirements():
        assert auto.kind == "uml" and "host-kernel mode cannot run here" in auto.reason
    else:
        assert auto.kind == "netns" and auto.missing == ()
    monkeypatch.setenv(WORLD_ENV, "uml")
    asked = choose_world()
    assert asked.kind == "uml" and "asked for" in asked.reason
    monkeypatch.setenv(WORLD_ENV, "netns")
    forced = choose_world()
    assert forced.kind == "netns" and forced.missing == tuple(hostkernel.missing_requirements())
    monkeypatch.setenv(WORLD_ENV, "vmware")
    with pytest.raises(WorldChoiceError, match=r"vmware.*auto, uml, netns"):
        choose_world()


def test_auto_takes_the_netns_world_exactly_when_the_host_kernel_can(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(WORLD_ENV, raising=False)
    monkeypatch.setattr(hostkernel, "missing_requirements", lambda: [])
    capable = choose_world()
    assert capable.cls is hostkernel.HostKernelNfsd and capable.missing == ()
    assert capable.reason == "network namespaces on the host kernel (the host kernel has nfsd and esp4)"
    monkeypatch.setattr(hostkernel, "missing_requirements", lambda: ["host kernel 9.9 has no esp4"])
    lacking = choose_world()
    assert lacking.cls is uml.LinuxNfsdGuest
    assert lacking.reason == (
        "User-Mode Linux (the host-kernel mode cannot run here: host kernel 9.9 has no esp4)"
    )


def test_cli_names_a_world_this_machine_lacks_in_one_line() -> None:
    """Asking for a world the machine cannot run gives one line naming what is missing."""
    for kind, cls in WORLDS.items():
        missing = cls.missing()
        if not missing:
            continue
        proc = subprocess.run(
            [sys.executable, "-m", "rpclatch.cli", "interop", "linux-nfsd", "--world", kind],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert proc.returncode != 0 and "Traceback" not in proc.stderr
        assert f"cannot run the Linux nfsd {kind} world here: {missing[0]}" in proc.stderr


def test_sigterm_handler_unwinds_only_the_process_that_installed_it() -> None:
    """A world turns SIGTERM into KeyboardInterrupt so ``close`` runs; a forked child inheriting the
    handler must die of the signal instead of unwinding into a copy of the caller (that copy ran
    pytest's teardown and hung on a lock held at fork time: the full-run XFRM hangs)."""
    world = WORLDS["uml"](run_dir=_run_dir("sigterm-handler"))
    world._sigterm_pid = os.getpid()
    old = signal.signal(signal.SIGTERM, world._on_sigterm)
    try:
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGTERM)
        pid = os.fork()
        if pid == 0:  # child: Python code running when the signal lands
            try:
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline:
                    time.sleep(0.01)
            except KeyboardInterrupt:
                os._exit(99)
            os._exit(98)
        time.sleep(0.2)
        os.kill(pid, signal.SIGTERM)
        _, status = os.waitpid(pid, 0)
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGTERM, status
    finally:
        signal.signal(signal.SIGTERM, old)
