"""Cross-check our COMPOUND encodings with an independent implementation: Wireshark's NFS
dissector (tshark) must parse a capture of a realistic 4.0 and 4.1 conversation without any
malformed-packet or error mark, and see the operations and values we encoded."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from rpclatch.nfs4 import const as c
from rpclatch.nfs4.compound import COMPOUND4args, COMPOUND4res
from rpclatch.nfs4.const import (
    createmode4,
    nfs_ftype4,
    nfsstat4,
    open_claim_type4,
    open_delegation_type4,
    opentype4,
    rpc_gss_svc_t,
    stable_how4,
    state_protect_how4,
)
from rpclatch.nfs4.ops import (
    CLOSE4args,
    CLOSE4res,
    COMMIT4args,
    COMMIT4res,
    CREATE4args,
    CREATE4res,
    CREATE4resok,
    CREATE_SESSION4args,
    CREATE_SESSION4res,
    CREATE_SESSION4resok,
    DESTROY_CLIENTID4args,
    DESTROY_CLIENTID4res,
    DESTROY_SESSION4args,
    DESTROY_SESSION4res,
    EXCHANGE_ID4args,
    EXCHANGE_ID4res,
    EXCHANGE_ID4resok,
    GETATTR4args,
    GETATTR4res,
    GETFH4args,
    GETFH4res,
    LOOKUP4args,
    LOOKUP4res,
    OPEN4args,
    OPEN4res,
    OPEN4resok,
    OPEN_CONFIRM4args,
    OPEN_CONFIRM4res,
    PUTFH4args,
    PUTFH4res,
    PUTROOTFH4args,
    PUTROOTFH4res,
    READ4args,
    READ4res,
    READ4resok,
    READDIR4args,
    READDIR4res,
    READDIR4resok,
    RECLAIM_COMPLETE4args,
    RECLAIM_COMPLETE4res,
    REMOVE4args,
    REMOVE4res,
    RENEW4args,
    RENEW4res,
    SECINFO4args,
    SECINFO4res,
    SECINFO_NO_NAME4args,
    SECINFO_NO_NAME4res,
    SEQUENCE4args,
    SEQUENCE4res,
    SEQUENCE4resok,
    SETCLIENTID4args,
    SETCLIENTID4res,
    SETCLIENTID4resok,
    SETCLIENTID_CONFIRM4args,
    SETCLIENTID_CONFIRM4res,
    WRITE4args,
    WRITE4res,
    WRITE4resok,
    createhow4,
    entry4,
    netaddr4,
    open_claim4,
    open_delegation4,
    open_owner4,
    openflag4,
    state_protect4_a,
    state_protect4_r,
)
from rpclatch.nfs4.types import (
    STAT_ATTRS,
    Fattr4,
    bitmap_from_attrs,
    change_info4,
    channel_attrs4,
    fsid4,
    nfs_impl_id4,
    nfstime4,
    rpcsec_gss_info,
    secinfo4,
    state_protect_ops4,
    stateid4,
)

from .pcap import write_rpc_pcap

OK = nfsstat4.NFS4_OK
FH_ROOT = bytes.fromhex("01000100000000000000000000000000")
FH_FILE = bytes.fromhex("0100010000000000000000000000000000000002")
SID = stateid4(1, b"\x11" * 12)
SESSION = bytes(range(16))
ATTRS = Fattr4(
    type=nfs_ftype4.NF4REG,
    change=5,
    size=12,
    fsid=fsid4(0, 0),
    fileid=2,
    mode=0o644,
    numlinks=1,
    owner="0",
    owner_group="0",
    space_used=4096,
    time_access=nfstime4(1, 0),
    time_metadata=nfstime4(2, 0),
    time_modify=nfstime4(3, 0),
)
CH = channel_attrs4(0, 1 << 20, 1 << 20, 4096, 16, 8)


def _seq(minor: int) -> tuple[list[object], list[object]]:
    if minor == 0:
        return [], []
    return (
        [SEQUENCE4args(SESSION, 1, 0, 0, False)],
        [SEQUENCE4res(OK, SEQUENCE4resok(SESSION, 1, 0, 7, 7, 0))],
    )


def conversation() -> list[tuple[int, bytes, bytes]]:
    pairs: list[tuple[int, list[object], list[object]]] = [
        (
            0,
            [SETCLIENTID4args(b"verifier", b"rpclatch-test", 0x40000000, netaddr4("tcp", "0.0.0.0.0.0"), 1)],
            [SETCLIENTID4res(OK, SETCLIENTID4resok(0x1122334455667788, b"confirm!"))],
        ),
        (0, [SETCLIENTID_CONFIRM4args(0x1122334455667788, b"confirm!")], [SETCLIENTID_CONFIRM4res(OK)]),
        (
            0,
            [PUTROOTFH4args(), GETFH4args(), GETATTR4args(bitmap_from_attrs(STAT_ATTRS))],
            [PUTROOTFH4res(OK), GETFH4res(OK, FH_ROOT), GETATTR4res(OK, ATTRS)],
        ),
        (
            0,
            [PUTROOTFH4args(), LOOKUP4args("secure")],
            [PUTROOTFH4res(OK), LOOKUP4res(nfsstat4.NFS4ERR_WRONGSEC)],
        ),
        (
            0,
            [PUTROOTFH4args(), SECINFO4args("secure")],
            [
                PUTROOTFH4res(OK),
                SECINFO4res(
                    OK,
                    (
                        secinfo4(6, rpcsec_gss_info(c.KRB5_OID, 0, rpc_gss_svc_t.RPC_GSS_SVC_PRIVACY)),
                        secinfo4(6, rpcsec_gss_info(c.KRB5_OID, 0, rpc_gss_svc_t.RPC_GSS_SVC_INTEGRITY)),
                    ),
                ),
            ],
        ),
        (
            0,
            [
                PUTFH4args(FH_ROOT),
                OPEN4args(
                    1,
                    1,
                    0,
                    open_owner4(0x1122334455667788, b"owner1"),
                    openflag4(opentype4.OPEN4_NOCREATE),
                    open_claim4(open_claim_type4.CLAIM_NULL, "file.txt"),
                ),
                GETFH4args(),
            ],
            [
                PUTFH4res(OK),
                OPEN4res(
                    OK,
                    OPEN4resok(
                        SID,
                        change_info4(True, 1, 1),
                        c.OPEN4_RESULT_CONFIRM,
                        (),
                        open_delegation4(open_delegation_type4.OPEN_DELEGATE_NONE),
                    ),
                ),
                GETFH4res(OK, FH_FILE),
            ],
        ),
        (0, [PUTFH4args(FH_FILE), OPEN_CONFIRM4args(SID, 2)], [PUTFH4res(OK), OPEN_CONFIRM4res(OK, SID)]),
        (
            0,
            [PUTFH4args(FH_FILE), READ4args(SID, 0, 65536)],
            [PUTFH4res(OK), READ4res(OK, READ4resok(True, b"secret-data\n"))],
        ),
        (0, [PUTFH4args(FH_FILE), CLOSE4args(3, SID)], [PUTFH4res(OK), CLOSE4res(OK, SID)]),
        (0, [RENEW4args(0x1122334455667788)], [RENEW4res(OK)]),
        (
            1,
            [
                EXCHANGE_ID4args(
                    b"verifier",
                    b"rpclatch-test",
                    0,
                    state_protect4_a(
                        state_protect_how4.SP4_MACH_CRED,
                        state_protect_ops4(bitmap_from_attrs([42, 43, 44, 57])),
                    ),
                    (nfs_impl_id4("rpclatch.test", "rpclatch 0.1", nfstime4(0, 0)),),
                )
            ],
            [
                EXCHANGE_ID4res(
                    OK,
                    EXCHANGE_ID4resok(
                        7,
                        1,
                        c.EXCHGID4_FLAG_USE_NON_PNFS,
                        state_protect4_r(
                            state_protect_how4.SP4_MACH_CRED,
                            state_protect_ops4(bitmap_from_attrs([42, 43, 44, 57])),
                        ),
                        0,
                        b"guest",
                        b"guest",
                        (nfs_impl_id4("kernel.org", "Linux", nfstime4(0, 0)),),
                    ),
                )
            ],
        ),
        (
            1,
            [CREATE_SESSION4args(7, 1, 0, CH, CH, 0x40000000)],
            [CREATE_SESSION4res(OK, CREATE_SESSION4resok(SESSION, 1, 0, CH, CH))],
        ),
        (1, [RECLAIM_COMPLETE4args(False)], [RECLAIM_COMPLETE4res(OK)]),
        (
            1,
            [PUTROOTFH4args(), SECINFO_NO_NAME4args()],
            [PUTROOTFH4res(OK), SECINFO_NO_NAME4res(OK, (secinfo4(1),))],
        ),
        (
            1,
            [PUTROOTFH4args(), READDIR4args(0, bytes(8), 8192, 32768, bitmap_from_attrs([1, 4]))],
            [
                PUTROOTFH4res(OK),
                READDIR4res(
                    OK,
                    READDIR4resok(
                        b"cookieve",
                        (
                            entry4(1, "file.txt", Fattr4(type=nfs_ftype4.NF4REG, size=12)),
                            entry4(2, "dir", Fattr4(type=nfs_ftype4.NF4DIR, size=4096)),
                        ),
                        True,
                    ),
                ),
            ],
        ),
        (
            1,
            [
                PUTROOTFH4args(),
                OPEN4args(
                    0,
                    3,
                    0,
                    open_owner4(7, b"owner2"),
                    openflag4(opentype4.OPEN4_CREATE, createhow4(createmode4.UNCHECKED4, Fattr4(mode=0o644))),
                    open_claim4(open_claim_type4.CLAIM_NULL, "new.txt"),
                ),
                GETFH4args(),
            ],
            [
                PUTROOTFH4res(OK),
                OPEN4res(
                    OK,
                    OPEN4resok(
                        SID,
                        change_info4(True, 1, 2),
                        4,
                        (0, 2),
                        open_delegation4(open_delegation_type4.OPEN_DELEGATE_NONE),
                    ),
                ),
                GETFH4res(OK, FH_FILE),
            ],
        ),
        (
            1,
            [PUTFH4args(FH_FILE), WRITE4args(SID, 0, stable_how4.UNSTABLE4, b"hello")],
            [PUTFH4res(OK), WRITE4res(OK, WRITE4resok(5, stable_how4.UNSTABLE4, b"writever"))],
        ),
        (1, [PUTFH4args(FH_FILE), COMMIT4args(0, 0)], [PUTFH4res(OK), COMMIT4res(OK, b"writever")]),
        (
            1,
            [PUTROOTFH4args(), CREATE4args(nfs_ftype4.NF4DIR, "newdir", Fattr4(mode=0o755))],
            [PUTROOTFH4res(OK), CREATE4res(OK, CREATE4resok(change_info4(True, 2, 3), (0, 2)))],
        ),
        (
            1,
            [PUTROOTFH4args(), REMOVE4args("new.txt")],
            [PUTROOTFH4res(OK), REMOVE4res(OK, change_info4(True, 3, 4))],
        ),
        (1, [DESTROY_SESSION4args(SESSION)], [DESTROY_SESSION4res(OK)]),
        (1, [DESTROY_CLIENTID4args(7)], [DESTROY_CLIENTID4res(OK)]),
    ]
    out = []
    for i, (minor, args, results) in enumerate(pairs):
        seq_a, seq_r = (
            _seq(minor)
            if not isinstance(args[0], (EXCHANGE_ID4args, CREATE_SESSION4args, DESTROY_SESSION4args))
            else ([], [])
        )
        a = COMPOUND4args(tuple(seq_a + args), minor)  # type: ignore[arg-type]
        r = COMPOUND4res(results[-1].status, tuple(seq_r + results))  # type: ignore[attr-defined,arg-type]
        out.append((0x1000 + i, a.encode(), r.encode()))
    return out


@pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark is not installed")
def test_tshark_parses_conversation_without_errors(tmp_path: Path) -> None:
    pcap = tmp_path / "nfs4.pcap"
    exchanges = conversation()
    write_rpc_pcap(pcap, exchanges)
    verbose = subprocess.run(
        ["tshark", "-n", "-r", str(pcap), "-V"], capture_output=True, text=True, check=True, timeout=120
    ).stdout
    assert "Malformed" not in verbose
    assert "Expert Info (Error" not in verbose
    assert verbose.count("Network File System") == 2 * len(exchanges)
    for needle in (
        "Opcode: SETCLIENTID_CONFIRM (36)",
        "Opcode: SECINFO (33)",
        "Opcode: EXCHANGE_ID (42)",
        "Opcode: CREATE_SESSION (43)",
        "Opcode: SEQUENCE (53)",
        "Opcode: SECINFO_NO_NAME (52)",
        "Opcode: RECLAIM_COMPLETE (58)",
        "Opcode: DESTROY_CLIENTID (57)",
        "Opcode: OPEN_CONFIRM (20)",
        "Opcode: COMMIT (5)",
        "Status: NFS4ERR_WRONGSEC (10016)",
        "Name: secure",
        "Name: file.txt",
        "Opcode: CREATE (6)",
        "rpcsec_gss_svc_privacy (3)",
        "rpcsec_gss_svc_integrity (2)",
        "Name: newdir",
        "Name: new.txt",
        "Opcode: READDIR (26)",
        "Opcode: WRITE (38)",
    ):
        assert needle in verbose, needle
    fields = subprocess.run(
        ["tshark", "-n", "-r", str(pcap), "-T", "fields", "-e", "rpc.xid", "-e", "nfs.main_opcode"],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout.split("\n")
    assert sum(1 for line in fields if line.strip()) == 2 * len(exchanges)
