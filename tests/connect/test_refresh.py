"""Context refresh on a protected connection (RFC 2203 §5.3.3.3; RFC 5403 §3.4, §9 (a)).

A server that caps the requests per context (RFC 5403 §9 (a)), expires a context or forgets it
answers CTXPROBLEM / CREDPROBLEM and expects a new context. The connection refreshes through the
flavor's one refresh path, binds the new context again to its channel when it was bound, and its
security record says what protects the calls afterwards -- never channel_prot on an unbound context.
"""

from __future__ import annotations

import pytest

from rpclatch.connect import (
    BindingRequired,
    BindOutcome,
    ConnectPolicy,
    LatchOutcome,
    ProtectedConnection,
)
from rpclatch.connect.sim import SimLink
from rpclatch.demo.testbed import DemoTestbed, build_testbed
from rpclatch.demo.wiretap import SeenCall, WireView
from rpclatch.gss.realm import ThrowawayRealm
from rpclatch.gss.server import GssServerAuth
from rpclatch.gss.wire import GssProc, Service
from rpclatch.netsim.ike import IkeMode
from rpclatch.rpc.messages import AuthFlavor
from rpclatch.rpc.testprog import (
    PROC_ECHO,
    RPCLATCH_TEST_PROG,
    RPCLATCH_TEST_VERS,
    decode_opaque,
    encode_opaque,
)

PAYLOAD = b"refresh-test-payload:" * 20
CAP = 3


def echo(pc: ProtectedConnection) -> None:
    reply = pc.call(RPCLATCH_TEST_PROG, RPCLATCH_TEST_VERS, PROC_ECHO, encode_opaque(PAYLOAD))
    assert decode_opaque(reply) == PAYLOAD


def gss_server(bed: DemoTestbed) -> GssServerAuth:
    flavor = bed.endpoint.dispatcher.flavors[int(AuthFlavor.RPCSEC_GSS)]
    assert isinstance(flavor, GssServerAuth)
    return flavor


def capped_testbed(realm: ThrowawayRealm, **setup: object) -> DemoTestbed:
    bed = build_testbed(realm, **setup)  # type: ignore[arg-type]
    gss_server(bed).max_requests_per_context = CAP  # RFC 5403 §9 (a), as `rpc serve` runs it
    return bed


def client_calls(view: WireView, proc: GssProc, after: float = -1.0) -> list[SeenCall]:
    return [c for c in view.calls if c.gss_proc is proc and c.sender == "client" and c.time > after]


def conn_id(pc: ProtectedConnection) -> int:
    assert isinstance(pc.link, SimLink)
    return pc.link.conn_id


def test_capped_server_unbound_krb5p_connection_refreshes_and_keeps_working(realm: ThrowawayRealm) -> None:
    """No IPsec (BYPASS clone), krb5p: ten calls against a cap of three all succeed on the one
    connection; the server saw a new INIT each time the cap was reached and holds one context."""
    bed = capped_testbed(realm, server_ike=IkeMode.ABSENT)
    pc = bed.connection(ConnectPolicy(ike_timeout=0.5))
    first = pc.connect()
    assert first.latch_outcome is LatchOutcome.NOT_LATCHED and first.gss_service is Service.PRIVACY
    for _ in range(10):
        echo(pc)
    view = bed.wire_view()
    # contexts: calls 1-3, 4-6, 7-9, 10 -> four INITs on the same connection
    assert len(client_calls(view, GssProc.RPCSEC_GSS_INIT)) == 4
    assert view.data_services("client") == ["krb5p"]
    assert conn_id(pc) == first.conn_id and pc.security == first and pc.history == [first]
    assert gss_server(bed).context_count() == 1  # every capped context was forgotten
    refreshed = [text for _, kind, text in bed.policy_events if kind == "policy" and "refreshed" in text]
    assert len(refreshed) == 3


def test_bound_connection_rebinds_its_refreshed_context(realm: ThrowawayRealm) -> None:
    """Latched and bound, channel_prot: those calls carry no MIC, so the cap never counts them
    (ten calls, one context). When the server forgets the context (a restart, a revoke) the flavor
    refreshes it and the new context is bound again to the connection's channel: BIND_CHANNEL on
    the wire again, the server's context bound to this connection, channel_prot again."""
    bed = capped_testbed(realm)
    pc = bed.connection(ConnectPolicy(ike_timeout=2.0))
    first = pc.connect()
    assert first.bound and first.gss_service is Service.CHANNEL_PROT
    for _ in range(10):
        echo(pc)
    view = bed.wire_view()
    assert len(client_calls(view, GssProc.RPCSEC_GSS_INIT)) == 1
    assert view.data_services("client") == ["channel_prot"]
    for round_ in range(2):
        t_drop = bed.net.now
        assert gss_server(bed).drop_all_contexts() == 1
        echo(pc)
        view = bed.wire_view()
        assert len(client_calls(view, GssProc.RPCSEC_GSS_INIT, t_drop)) == 1
        binds = client_calls(view, GssProc.RPCSEC_GSS_BIND_CHANNEL, t_drop)
        assert len(binds) == 1 and binds[0].protected
        [ctx] = gss_server(bed).contexts()
        assert ctx.bound_conn_id is not None and ctx.bound_prefix is not None
        t_bound = binds[0].time
        echo(pc)
        echo(pc)
        assert bed.wire_view().data_services("client", after=t_bound) == ["channel_prot"]
        assert pc.security.bound and pc.security.gss_service is Service.CHANNEL_PROT
        assert pc.security.bind_outcome is BindOutcome.BOUND and pc.security.conn_id == first.conn_id, round_
    assert pc.history == [first]  # nothing changed: no new records
    assert not [text for _, kind, text in bed.policy_events if kind == "warning"]


def _unbound_after(bed: DemoTestbed, pc: ProtectedConnection, t: float, outcome: BindOutcome) -> None:
    rec = pc.security
    assert not rec.bound and rec.bind_outcome is outcome
    assert rec.gss_service is Service.PRIVACY  # the policy's configured protection
    assert rec.bind_detail and rec.warnings and "re-binding" in rec.warnings[-1]
    assert pc.history[-1] is rec and len(pc.history) == 2 and pc.history[0].bound
    warnings = [text for _, kind, text in bed.policy_events if kind == "warning"]
    assert warnings and warnings[-1] == rec.warnings[-1]
    binds = client_calls(bed.wire_view(), GssProc.RPCSEC_GSS_BIND_CHANNEL, t)
    assert binds  # the re-bind was attempted
    for _ in range(4):
        echo(pc)
    # after the failed bind: the policy's GSS protection only, never channel_prot
    assert bed.wire_view().data_services("client", after=binds[-1].time) == ["krb5p"]
    auth = pc._auth
    assert auth is not None and auth.effective_service().name == "PRIVACY"  # type: ignore[attr-defined]
    assert pc.security is rec


def test_failed_rebind_after_refresh_is_recorded_and_falls_back(realm: ThrowawayRealm) -> None:
    """The re-bind after a refresh gets an authenticated "no channel here" (PREF_NOTSUPP with an
    empty list): UNSUPPORTED by the table, but the connection was bound, so it is a warning; the
    record says unbound and the calls go on with krb5p."""
    bed = capped_testbed(realm)
    pc = bed.connection(ConnectPolicy(ike_timeout=2.0))
    assert pc.connect().bound
    echo(pc)
    server = gss_server(bed)
    server.prefixes = ()  # the server no longer binds (reconfigured)
    t_drop = bed.net.now
    server.drop_all_contexts()
    echo(pc)
    _unbound_after(bed, pc, t_drop, BindOutcome.UNSUPPORTED)
    # the capped server keeps refreshing the (now MIC-counted) context; no re-bind is attempted
    t_after = bed.net.now
    for _ in range(2 * CAP):
        echo(pc)
    view = bed.wire_view()
    assert len(client_calls(view, GssProc.RPCSEC_GSS_INIT, t_after)) >= 2
    assert not client_calls(view, GssProc.RPCSEC_GSS_BIND_CHANNEL, t_after)
    assert not pc.security.bound and len(pc.history) == 2


def test_require_binding_closes_a_connection_whose_rebind_failed(realm: ThrowawayRealm) -> None:
    bed = capped_testbed(realm)
    pc = bed.connection(ConnectPolicy(ike_timeout=2.0, require_binding=True))
    assert pc.connect().bound
    old = pc.link
    server = gss_server(bed)
    server.prefixes = ()
    server.drop_all_contexts()
    with pytest.raises(BindingRequired, match="re-binding"):
        echo(pc)
    assert old is not None and not old.is_open  # no more calls on the unbound context
    assert not pc.security.bound and pc.security.bind_outcome is BindOutcome.UNSUPPORTED
