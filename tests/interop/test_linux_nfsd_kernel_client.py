"""The guest's own Linux kernel NFS client against its nfsd: the baseline our client is compared to.

Checks the server setup the other interop tests rely on: AUTH_SYS and krb5/krb5i/krb5p mounts of
the NFSv4 root, and the krb5p-only export refusing krb5i.
"""

from __future__ import annotations

import uuid

import pytest

from interop.world import GuestCommandError, NfsdWorld

pytestmark = [pytest.mark.uml, pytest.mark.root]


@pytest.mark.parametrize("sec", ["sys", "krb5", "krb5i", "krb5p"])
def test_kernel_client_mounts_root_and_writes(nfsd_guest: NfsdWorld, sec: str) -> None:
    mnt = nfsd_guest.kernel_mount("/", sec=sec, vers="4.1")
    try:
        assert nfsd_guest.run(["cat", f"{mnt}/file.txt"], check=True).stdout == "secret-data /\n"
        name = f"kernel-{sec}-{uuid.uuid4().hex[:8]}.txt"
        payload = f"written by the kernel client with sec={sec}"
        nfsd_guest.run(f"printf '%s' '{payload}' >{mnt}/{name} && sync", check=True)
    finally:
        nfsd_guest.kernel_umount(mnt)
    on_server = nfsd_guest.run(["cat", nfsd_guest.server_path(f"/{name}")], check=True).stdout
    assert on_server == payload


def test_kernel_client_krb5ponly_needs_krb5p(nfsd_guest: NfsdWorld) -> None:
    mnt = nfsd_guest.kernel_mount("/krb5ponly", sec="krb5p", vers="4.1")
    try:
        out = nfsd_guest.run(["cat", f"{mnt}/file.txt"], check=True).stdout
        assert out == "secret-data /krb5ponly\n"
    finally:
        nfsd_guest.kernel_umount(mnt)
    with pytest.raises(GuestCommandError):
        nfsd_guest.kernel_mount("/krb5ponly", sec="krb5i", vers="4.1", mountpoint="/tmp/mnt-denied")
