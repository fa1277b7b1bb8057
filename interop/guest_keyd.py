"""Guest-side helpers shared by the scripts that run ``rpclatch ipsec keyd`` in a UML guest or the
netns world: the mission tests, the keyd test, the kernel demo and the kernel benchmark.

They run inside the guest with this checkout on ``PYTHONPATH`` (``NfsdWorld.guest_env``), in the
project's virtualenv: a background process stopped by PID, a new Ed25519 key, and the wait for a
key manager to answer STATUS on its control socket.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path


def rpclatch_argv() -> list[str]:
    """argv of this virtualenv's ``rpclatch`` command (or ``python -m rpclatch.cli``)."""
    script = Path(sys.executable).parent / "rpclatch"
    return [str(script)] if script.exists() else [sys.executable, "-m", "rpclatch.cli"]


class Proc:
    """A background process (stdout and stderr in ``log``), stopped with SIGTERM by its PID."""

    def __init__(self, argv: list[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.log = log
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, **(env or {})},
            )

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, timeout: float = 10) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout`` seconds; the exit status (None if killed)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return None


def write_key(path: Path) -> bytes:
    """A new Ed25519 key as PKCS#8 PEM in ``path`` and its public key beside it (``.pub``);
    returns the DER SubjectPublicKeyInfo."""
    from cryptography.hazmat.primitives.asymmetric import ed25519
    from cryptography.hazmat.primitives.serialization import (
        Encoding,
        NoEncryption,
        PrivateFormat,
        PublicFormat,
    )

    key = ed25519.Ed25519PrivateKey.generate()
    path.write_bytes(key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    public = key.public_key()
    path.with_suffix(".pub").write_bytes(public.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo))
    return public.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


async def keyd_ready(sock: Path, proc: Proc, timeout: float = 60) -> bool:
    """Whether the key manager ``proc`` answers STATUS on ``sock`` within ``timeout`` seconds
    (False at once if it exits)."""
    from rpclatch.ipsec.keyd.server import KeydClient

    end = time.monotonic() + timeout
    while time.monotonic() < end and proc.proc.poll() is None:
        if sock.exists():
            try:
                client = await KeydClient.connect(sock)
            except OSError:
                pass
            else:
                try:
                    return bool((await asyncio.wait_for(client.call("STATUS"), 5)).get("ok"))
                finally:
                    await client.close()
        await asyncio.sleep(0.1)
    return False
