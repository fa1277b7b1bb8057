"""``rpclatch conformance`` against the real Linux nfsd (NFS program 100003 version 4, NULL
procedure) in the interop world, for krb5, krb5i and krb5p.

The expected outcomes are the ones observed (docs/conformance.md has the table and the kernel
version): a change on either side -- the kernel's RPCSEC_GSS or this suite -- shows up here.
"""

from __future__ import annotations

import asyncio

import pytest

from interop.world import NFS_PORT, SERVER_ADDR, NfsdWorld
from rpclatch.conformance import registry, report, runner
from rpclatch.conformance.model import Outcome, Report
from rpclatch.conformance.probe import ProbeConfig
from rpclatch.gss.provider import GssapiProvider
from rpclatch.gss.wire import Service

pytestmark = [pytest.mark.uml, pytest.mark.root]

NFS_PROGRAM = 100003
NFS_V4 = 4


def _run(guest: NfsdWorld, sec: str) -> Report:
    config = ProbeConfig(
        SERVER_ADDR,
        NFS_PORT,
        NFS_PROGRAM,
        NFS_V4,
        target=guest.service_name,
        service=Service.from_sec_name(sec),
        timeout=20.0,
        drop_wait=2.0,
    )
    with guest.in_host_netns("alice"):
        result = asyncio.run(runner.run(registry.select(), config, GssapiProvider()))
    (guest.run_dir / f"conformance-{sec}.json").write_text(report.to_json(result))
    (guest.run_dir / f"conformance-{sec}.txt").write_text(report.table(result) + "\n")
    return result


#: What Linux nfsd (RPCSEC_GSS v1 only, gssproxy) answers, observed on the UML guest's 6.1 kernel;
#: every case not listed PASSes. The same for krb5, krb5i and krb5p.
OBSERVED: dict[str, tuple[Outcome, str]] = {
    # accepts seq_num == MAXSEQ (its check is seq_num > MAXSEQ), refuses MAXSEQ+1 with CTXPROBLEM
    "GSS-08": (Outcome.WARN, "MAXSEQ: MSG_ACCEPTED SUCCESS"),
    # a retransmitted INIT (same xid, same AP-REQ): the connection is closed, no second answer
    "GSS-17": (Outcome.WARN, "connection closed"),
    # an INIT with a garbage token is dropped, the connection closed (no gss_major error reply)
    "GSS-19": (Outcome.WARN, "connection closed"),
    # v1 only: version 2 refused with AUTH_BADCRED (RFC 2203 §5.1 says AUTH_REJECTEDCRED)
    "CB-01": (Outcome.NOT_SUPPORTED, "AUTH_BADCRED"),
    "CB-04": (Outcome.NOT_SUPPORTED, "AUTH_BADCRED"),
    # service 4 in a v1 credential: AUTH_BADVERF rather than AUTH_BADCRED
    "CB-05": (Outcome.WARN, "AUTH_BADVERF"),
    **{f"CB-0{n}": (Outcome.NOT_SUPPORTED, "AUTH_BADCRED") for n in range(6, 10)},
    **{f"CB-{n}": (Outcome.OMIT, "") for n in range(10, 17)},
}


@pytest.mark.parametrize("sec", ["krb5", "krb5i", "krb5p"])
def test_linux_nfsd_conformance(nfsd_guest: NfsdWorld, sec: str) -> None:
    result = _run(nfsd_guest, sec)
    seen = {r.spec.id: (r.outcome, f"{r.reason} | {r.got}") for r in result.results}
    expected = {c.spec.id: OBSERVED.get(c.spec.id, (Outcome.PASS, "")) for c in registry.all_cases()}
    assert {i: o for i, (o, _) in seen.items()} == {i: o for i, (o, _) in expected.items()}, report.table(
        result
    )
    for case_id, (_, got) in expected.items():
        assert got in seen[case_id][1], (case_id, seen[case_id][1])
    # the server closes the connection when it drops a request (the suite reconnects)
    assert "closed" in result.by_id()["GSS-05"].reason
    assert result.exit_code == 0
