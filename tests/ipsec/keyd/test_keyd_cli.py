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
from rpclatch.commands.ipsec import accept_pad, format_status, load_private_key
from rpclatch.errors import UserError
from rpclatch.ipsec.keyd.core import KeydCore
from rpclatch.ipsec.keyd.server import KeydServer


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


def test_keyd_bad_arguments_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ipsec", "keyd", "--address", "nowhere"]) == 2
    assert "not an IP address" in capsys.readouterr().err
    bad = tmp_path / "bad.pem"
    bad.write_text("junk")
    assert main(["ipsec", "keyd", "--address", "198.51.100.1", "--key", str(bad)]) == 2
    assert "--key" in capsys.readouterr().err


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


def test_format_status_columns() -> None:
    text = format_status({"ike_sas": [{"ike_sa": "ike:1/2", "state": "ESTABLISHED"}], "latches": []})
    assert text.splitlines()[:3] == ["IKE SAs:", "IKE_SA   STATE", "ike:1/2  ESTABLISHED"]
