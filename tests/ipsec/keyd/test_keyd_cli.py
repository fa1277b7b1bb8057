"""``rpclatch ipsec keyd`` / ``rpclatch ipsec status``: argument errors are one line, status
prints the daemon's tables or JSON."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat
from test_keyd_core import ModelService

from rpclatch.cli import main
from rpclatch.commands.ipsec import (
    accept_pad,
    default_socket,
    esp_suites,
    format_status,
    load_private_key,
    peer_keys,
)
from rpclatch.errors import UserError
from rpclatch.ipsec.keyd.core import KeydCore
from rpclatch.ipsec.keyd.server import KeydServer
from rpclatch.ipsec.model import AES_GCM_128, AES_GCM_256, CHACHA20_POLY1305


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Path]:
    """A keyd control server (model service, one latch) on its own loop thread."""
    path = tmp_path / "keyd.sock"
    loop = asyncio.new_event_loop()
    service = ModelService()
    service.started[41] = None  # type: ignore[assignment]
    server = KeydServer(KeydCore(service), path)
    ready = threading.Event()

    def serve() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(server.start())
        ready.set()
        loop.run_forever()
        loop.run_until_complete(server.close())
        loop.close()

    thread = threading.Thread(target=serve)
    thread.start()
    ready.wait(10)
    try:
        yield path
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


def test_status_json_and_table(served: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ipsec", "status", "--socket", str(served), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"ike_sas": [], "child_sas": [], "latches": [{"latch": 41}]}
    assert main(["ipsec", "status", "--socket", str(served)]) == 0
    out = capsys.readouterr().out
    assert "IKE SAs: none" in out and "LATCH" in out and "41" in out


def test_status_without_daemon_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ipsec", "status", "--socket", str(tmp_path / "none.sock")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no keyd at" in err


def _one_line_error(capsys: pytest.CaptureFixture[str], *words: str) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("rpclatch: error: "), err
    assert "Traceback" not in err
    for word in words:
        assert word in err, err
    return err


def test_keyd_bad_arguments_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # all refused before any socket is opened: no network, no XFRM needed
    assert main(["ipsec", "keyd", "--address", "nowhere"]) == 2
    _one_line_error(capsys, "--address", "not an IP address")
    assert main(["ipsec", "keyd", "--address", "198.51.100.1", "--port", "70000"]) == 2
    _one_line_error(capsys, "--port")
    bad = tmp_path / "bad.pem"
    bad.write_text("junk")
    assert main(["ipsec", "keyd", "--address", "198.51.100.1", "--key", str(bad)]) == 2
    _one_line_error(capsys, "--key", "not an unencrypted PEM private key")
    assert main(["ipsec", "keyd", "--address", "198.51.100.1", "--key", str(tmp_path / "missing.pem")]) == 2
    _one_line_error(capsys, "--key", "missing.pem", "No such file")
    for spec, word in (("198.51.100.2", "ADDR=KEYFILE"), (f"nowhere={bad}", "not an IP address")):
        assert main(["ipsec", "keyd", "--address", "198.51.100.1", "--peer-key", spec]) == 2
        _one_line_error(capsys, "--peer-key", word)
    assert main(["ipsec", "keyd", "--address", "198.51.100.1", "--peer-key", f"198.51.100.2={bad}"]) == 2
    _one_line_error(capsys, "--peer-key", "not a PEM public key")
    for spec in ("aes-gcm-256,des", ","):
        assert main(["ipsec", "keyd", "--address", "198.51.100.1", "--esp", spec]) == 2
        _one_line_error(capsys, "--esp", "not a CHILD_SA cipher", "chacha20-poly1305")


def test_esp_suite_names_in_the_given_order() -> None:
    assert esp_suites("chacha20-poly1305, aes-gcm-256,chacha20-poly1305") == (CHACHA20_POLY1305, AES_GCM_256)
    assert esp_suites("aes-gcm-128") == (AES_GCM_128,)


def test_keyd_unusable_socket_directory_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # a regular file where the directory should be: refused also for root (no permission bits)
    blocker = tmp_path / "file"
    blocker.write_text("")
    argv = ["ipsec", "keyd", "--address", "198.51.100.1", "--socket", str(blocker / "keyd.sock")]
    assert main(argv) == 2
    _one_line_error(capsys, "--socket", str(blocker))


def test_keyd_unusable_namespace_or_address_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sock = ["--socket", str(tmp_path / "keyd.sock")]
    argv = ["ipsec", "keyd", "--address", "198.51.100.1", "--netns", "rpclatch-no-such-netns", *sock]
    assert main(argv) == 2
    _one_line_error(capsys, "--netns rpclatch-no-such-netns")
    # an address this host does not have (TEST-NET-2): nothing to bind
    assert main(["ipsec", "keyd", "--address", "198.51.100.1", "--port", "50500", *sock]) == 2
    _one_line_error(capsys, "cannot bind UDP 198.51.100.1:50500")
    assert not (tmp_path / "keyd.sock").exists()


def test_key_files(tmp_path: Path) -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    private = tmp_path / "key.pem"
    private.write_bytes(key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    public = tmp_path / "peer.pem"
    public.write_bytes(key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo))
    assert isinstance(load_private_key(str(private)), ed25519.Ed25519PrivateKey)
    assert len(list(accept_pad([str(public), str(private)]).entries)) == 2
    with pytest.raises(UserError):
        accept_pad(["any", str(public)])
    with pytest.raises(UserError):
        accept_pad([str(tmp_path / "missing.pem")])
    other = ed25519.Ed25519PrivateKey.generate().public_key()
    extra = other.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    assert len(list(accept_pad([str(public)], [extra]).entries)) == 2
    assert len(list(accept_pad(["any"], [extra]).entries)) == 1  # any already accepts it


def test_peer_keys_by_address(tmp_path: Path) -> None:
    import ipaddress

    key = ed25519.Ed25519PrivateKey.generate().public_key()
    public = tmp_path / "peer.pem"
    public.write_bytes(key.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo))
    spki = key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    assert peer_keys([f"198.51.100.2={public}", f"2001:db8::2={public}"]) == {
        ipaddress.ip_address("198.51.100.2"): spki,
        ipaddress.ip_address("2001:db8::2"): spki,
    }
    with pytest.raises(UserError):
        peer_keys([f"198.51.100.2={tmp_path / 'missing.pem'}"])


def test_default_socket_per_namespace() -> None:
    assert default_socket(None) == Path("/run/rpclatch/keyd.sock")
    assert default_socket("client") == Path("/run/rpclatch/keyd-client.sock")
    assert default_socket("/var/run/netns/server") == Path("/run/rpclatch/keyd-server.sock")


def test_format_status_columns() -> None:
    text = format_status({"ike_sas": [{"ike_sa": "ike:1/2", "state": "ESTABLISHED"}], "latches": []})
    assert text.splitlines()[:3] == ["IKE SAs:", "IKE_SA   STATE", "ike:1/2  ESTABLISHED"]


@pytest.fixture
def netns() -> Iterator[str]:
    """A fresh network namespace with loopback up (root only)."""
    import os
    import shutil
    import subprocess

    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("needs root and iproute2 (a network namespace of its own)")
    name = f"rpclatch-keyd-cli-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


@pytest.mark.root
def test_keyd_process_serves_status_and_stops_on_sigterm(
    netns: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The real command in a namespace of its own: control socket up, STATUS answered, SIGTERM ->
    exit 0 with the socket removed. No peer, so nothing reaches the kernel's SAD/SPD."""
    import signal
    import subprocess
    import sys

    sock = tmp_path / "run" / "keyd.sock"  # the directory is made by keyd
    key = tmp_path / "key.pem"
    private = ed25519.Ed25519PrivateKey.generate()
    key.write_bytes(private.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    spki = private.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    argv = [sys.executable, "-m", "rpclatch.cli", "ipsec", "keyd", "--netns", netns, "--address", "127.0.0.1"]
    with subprocess.Popen(
        [*argv, "--socket", str(sock), "--key", str(key)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        try:
            line = proc.stdout.readline()
            assert line.startswith("# keyd: IKE on 127.0.0.1:500"), line
            assert f"key SPKI {spki.hex()}" in line and sock.exists()
            assert main(["ipsec", "status", "--socket", str(sock), "--json"]) == 0
            assert json.loads(capsys.readouterr().out) == {"ike_sas": [], "child_sas": [], "latches": []}
            # a second keyd on the same address and port: one line, nonzero
            second = subprocess.run(
                [*argv, "--socket", str(tmp_path / "other.sock")], capture_output=True, text=True, timeout=60
            )
            assert second.returncode == 2 and second.stderr.count("\n") == 1, second.stderr
            assert "cannot bind UDP 127.0.0.1:500" in second.stderr
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=10) == 0
            assert not sock.exists()
            assert "Traceback" not in proc.stderr.read()
        finally:
            if proc.poll() is None:
                proc.kill()
