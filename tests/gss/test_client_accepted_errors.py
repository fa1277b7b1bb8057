"""A hostile server's accepted errors on an RPCSEC_GSS context (issue #10 item 7, client half).

The sans-IO RPC client cores (:class:`RpcClientConnection`, :class:`RpcDatagramClient`) with the
real client flavor, a context established with the real server flavor on a real KDC, and a server
that answers with forged MSG_ACCEPTED errors. RFC 2203 §5.3.3.2: every reply on a context carries
the verifier MIC(seq_num); an accepted error without it (AUTH_NONE, or a MIC over another seq_num)
is not the server's and must not reach the caller as the server's error. Genuine ones -- signed
with the server's context -- do, and the connection keeps working for legitimate calls.
"""

from __future__ import annotations

import asyncio
import struct

import pytest

from rpclatch.gss.client import GssClientAuth
from rpclatch.gss.loopback import LoopbackTransport
from rpclatch.gss.provider import GssapiProvider
from rpclatch.gss.realm import ThrowawayRealm
from rpclatch.gss.server import GssServerAuth
from rpclatch.gss.wire import GssCred, Service, be32
from rpclatch.rpc.client import CallCompleted, CallFailed, RpcClientConnection, RpcDatagramClient
from rpclatch.rpc.errors import AuthVerifierError, RpcAcceptError
from rpclatch.rpc.messages import (
    NULL_AUTH,
    AcceptedReply,
    AcceptStat,
    AuthFlavor,
    CallMessage,
    OpaqueAuth,
    decode_message,
)
from rpclatch.rpc.record import LAST_FRAGMENT, encode_record

PROG, VERS = 0x20000099, 1
ERRORS = [
    AcceptStat.SYSTEM_ERR,
    AcceptStat.GARBAGE_ARGS,
    AcceptStat.PROC_UNAVAIL,
    AcceptStat.PROG_UNAVAIL,
    AcceptStat.PROG_MISMATCH,
]


@pytest.fixture(
    scope="module", params=[Service.NONE, Service.INTEGRITY, Service.PRIVACY], ids=["krb5", "krb5i", "krb5p"]
)
def gss(
    request: pytest.FixtureRequest, realm: ThrowawayRealm
) -> tuple[GssClientAuth, GssServerAuth, LoopbackTransport]:
    srv = GssServerAuth(GssapiProvider(realm.service_name, keytab=realm.keytab))
    t = LoopbackTransport(srv, prog=PROG, vers=VERS)
    c = GssClientAuth(
        GssapiProvider(ccache=realm.users["alice"].ccache), realm.service_name, service=request.param
    )
    asyncio.run(c.establish(t.call))
    return c, srv, t


def one_call(data: bytes) -> bytes:
    """The call message of one single-fragment record."""
    (mark,) = struct.unpack_from(">I", data)
    assert mark & LAST_FRAGMENT and len(data) == 4 + (mark & ~LAST_FRAGMENT)
    return data[4:]


def seq_of(call: bytes) -> tuple[int, int]:
    msg = decode_message(call)
    assert isinstance(msg, CallMessage)
    return msg.xid, GssCred.decode(msg.cred.body).seq_num


def server_mic(c: GssClientAuth, srv: GssServerAuth, seq: int) -> OpaqueAuth:
    """MIC(seq_num) with the server's end of the context: what a genuine reply carries."""
    server_gss = srv.gss_context(c.handle or b"")
    assert server_gss is not None
    return OpaqueAuth(AuthFlavor.RPCSEC_GSS, server_gss.get_mic(be32(seq)))


def forged(xid: int, stat: AcceptStat, verf: OpaqueAuth) -> bytes:
    mismatch = (1, 1) if stat is AcceptStat.PROG_MISMATCH else None
    return AcceptedReply(xid, verf, stat, mismatch=mismatch).encode()


@pytest.mark.parametrize("stat", ERRORS, ids=[s.name for s in ERRORS])
def test_stream_client_rejects_unauthenticated_accepted_errors(
    gss: tuple[GssClientAuth, GssServerAuth, LoopbackTransport], stat: AcceptStat
) -> None:
    c, srv, t = gss
    conn = RpcClientConnection(c)
    for verf in ("none", "other-seq", "genuine"):
        h = conn.send_call(PROG, VERS, 1, b"args", None, 0.0)
        xid, seq = seq_of(one_call(conn.data_to_send()))
        reply_verf = {
            "none": NULL_AUTH,
            "other-seq": server_mic(c, srv, seq + 1),
            "genuine": server_mic(c, srv, seq),
        }[verf]
        [event] = conn.receive_data(encode_record(forged(xid, stat, reply_verf)))
        assert isinstance(event, CallFailed) and event.handle is h
        if verf == "genuine":  # the server's own error: surfaced as such
            assert isinstance(event.error, RpcAcceptError) and event.error.stat is stat
        else:  # not the server's: a verifier error, never the forged status
            assert isinstance(event.error, AuthVerifierError), (verf, event.error)
            assert "MIC(seq_num)" in str(event.error) or "not RPCSEC_GSS" in str(event.error)
    # the legitimate server still answers on the same connection
    h = conn.send_call(PROG, VERS, 1, b"after the forgeries", None, 0.0)
    reply = t.serve(one_call(conn.data_to_send()))
    assert reply is not None
    assert conn.receive_data(encode_record(reply)) == [CallCompleted(h, b"after the forgeries")]


def test_datagram_client_checks_error_verifiers_against_every_transmission(
    gss: tuple[GssClientAuth, GssServerAuth, LoopbackTransport],
) -> None:
    """UDP: a retransmitted call has one seq_num per transmission (RFC 2203 §5.3.3.1); an accepted
    error signed for the first one is genuine, an unsigned one is not."""
    c, srv, _t = gss
    udp = RpcDatagramClient(c, retransmit_initial=1.0)
    for verf in ("none", "first-transmission"):
        h = udp.send_call(PROG, VERS, 1, b"x", None, 0.0)
        udp.handle_timer(1.0)
        first, second = udp.datagrams_to_send()
        xid, seq1 = seq_of(first)
        assert seq_of(second) == (xid, seq1 + 1)
        reply_verf = NULL_AUTH if verf == "none" else server_mic(c, srv, seq1)
        [event] = udp.receive_datagram(forged(xid, AcceptStat.SYSTEM_ERR, reply_verf))
        assert isinstance(event, CallFailed) and event.handle is h
        if verf == "none":
            assert isinstance(event.error, AuthVerifierError)
        else:
            assert isinstance(event.error, RpcAcceptError) and event.error.stat is AcceptStat.SYSTEM_ERR
