"""The demo scenarios (the sixth in four variants). Each builds its testbed, acts, then computes its
checks from what actually happened: the recorded wire (decoded like tshark with the ESP keys), the
latch states at both ends (INQUIRE_LATCH), the RPCSEC_GSS service on the wire, and what the
attacker could read.
"""

from __future__ import annotations

import hashlib
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from rpclatch.connect.client import ProtectedConnection
from rpclatch.connect.policy import BindOutcome, ConnectPolicy, LatchOutcome
from rpclatch.connect.record import SecurityRecord, latch_state_name
from rpclatch.connect.sim import SimLink, latch_params
from rpclatch.connect.world import ConnectError
from rpclatch.demo.bindrelay import REWRITTEN_PREFIX, UNKNOWN_HASH_OID, BindAttack, BindRelayEditor
from rpclatch.demo.diagram import render_html, render_svg
from rpclatch.demo.model import Check, ScenarioResult, TraceEvent
from rpclatch.demo.rundir import slug
from rpclatch.demo.testbed import CLIENT_ADDR, NFS_PORT, SERVER_ADDR, DemoTestbed, build_testbed, ike_message
from rpclatch.demo.wiretap import FrameView, WireView
from rpclatch.gss.realm import ThrowawayRealm
from rpclatch.gss.wire import BindChanStatus, GssProc, Service
from rpclatch.ipsec import examples
from rpclatch.ipsec.engine import Approach, EngineConfig
from rpclatch.ipsec.ike.wire import ExchangeType
from rpclatch.ipsec.latch import LatchState
from rpclatch.ipsec.model import FiveTuple, IpProto, Selector, ip, spki_fingerprint
from rpclatch.ipsec.spd import EntryOrigin, SpdAction
from rpclatch.netsim.ike import IkeMode
from rpclatch.netsim.stack import ConnLatch, IpsecStack
from rpclatch.netsim.stream import StreamConnection, StreamEventKind
from rpclatch.rpc.errors import RpcError
from rpclatch.rpc.testprog import (
    PROC_ECHO,
    RPCLATCH_TEST_PROG,
    RPCLATCH_TEST_VERS,
    decode_opaque,
    encode_opaque,
)

#: The secret the client sends in every ECHO; attackers must never read it.
MARKER = b"rpclatch-demo-SECRET:" + hashlib.sha256(b"rpclatch demo payload").hexdigest().encode()
PAYLOAD = MARKER * 16
LANES = ("client", "mitm", "rogue", "mitm-b", "server", "(nobody)")


@dataclass
class Observation:
    """What a scenario script observed (the columns of its row) and the checks it computed from
    that; :func:`run_scenario` adds the wire evidence and makes a :class:`ScenarioResult` of it."""

    title: str
    latched: str
    peer: str
    binding: str
    gss_service: str
    checks: list[Check] = field(default_factory=list)
    reason: str = ""

    def check(self, name: str, passed: bool, detail: str) -> None:
        self.checks.append(Check(name, bool(passed), detail))


@dataclass(frozen=True)
class ScenarioSpec:
    """One row of the demo. Variants of one scenario share its ``number`` and differ in
    ``variant`` (``6a`` .. ``6d``); ``--scenario 6`` runs them all."""

    number: int
    name: str
    title: str
    run: Callable[[ThrowawayRealm, Approach], tuple[DemoTestbed, Observation]]
    variant: str = ""

    @property
    def label(self) -> str:
        return f"{self.number}{self.variant}"


# -- helpers ----------------------------------------------------------------------------------------


def echo(pc: ProtectedConnection, payload: bytes = PAYLOAD) -> bool:
    reply = pc.call(RPCLATCH_TEST_PROG, RPCLATCH_TEST_VERS, PROC_ECHO, encode_opaque(payload))
    return decode_opaque(reply) == payload


def link_of(pc: ProtectedConnection) -> SimLink:
    link = pc.link
    assert isinstance(link, SimLink)
    return link


def stack_of(host_security: object) -> IpsecStack:
    assert isinstance(host_security, IpsecStack)
    return host_security


def server_conn(bed: DemoTestbed, client_flow: FiveTuple) -> StreamConnection | None:
    for conn, _rpc in bed.endpoint.server.connections:
        if (
            conn.flow.remote_port == client_flow.local_port
            and conn.flow.local_port == client_flow.remote_port
        ):
            return conn
    return None


class EchoRun(NamedTuple):
    """One connection, connected and four ECHO calls made, with both ends' latch state after."""

    pc: ProtectedConnection
    rec: SecurityRecord
    ok: bool
    view: WireView
    link: SimLink
    sconn: StreamConnection | None
    cstate: LatchState | None
    sstate: LatchState | None


def connect_and_echo(bed: DemoTestbed) -> EchoRun:
    pc = bed.connection(ConnectPolicy(ike_timeout=2.0))
    rec = pc.connect()
    ok = all(echo(pc) for _ in range(4))
    view = bed.wire_view()
    link = link_of(pc)
    sconn = server_conn(bed, link.conn.flow)
    cstate = bed.client_stack.latch_state(link.conn)
    sstate = bed.server_stack.latch_state(sconn) if sconn else None
    return EchoRun(pc, rec, ok, view, link, sconn, cstate, sstate)


def peer_key(stack: IpsecStack, conn: StreamConnection) -> bytes | None:
    params = latch_params(stack, conn)
    return None if params is None else params.peer.public_key


def fp(key: bytes | None) -> str:
    return "-" if key is None else spki_fingerprint(key)[:16]


def alerts_of(conn: StreamConnection) -> list[str]:
    """The latch states ``conn``'s latch was alerted into: the LD's ALERTs (approach 2), or the
    TCB latch's breaks (approach 1: "BROKEN" per break, RFC 5660 §2.4 "inform the application")."""
    cl = conn.latch_info
    if not isinstance(cl, ConnLatch):
        return []
    return [a.new_state.value for a in cl.alerts] + ["BROKEN" for _ in cl.ulp_breaks]


def check_latch_home(o: Observation, stack: IpsecStack, conn: StreamConnection, approach: Approach) -> None:
    """Where the connection's latch lives must be what ``--approach`` asked for: the TCB (approach
    1, RFC 5660 §2.4; the latch database holds nothing for the flow) or the LD (approach 2, §2.3)."""
    cl = conn.latch_info
    in_tcb = isinstance(cl, ConnLatch) and cl.ulp is not None
    in_ld = stack.engine.latches.latch_for(conn.flow) is not None or (
        isinstance(cl, ConnLatch) and cl.handle is not None
    )
    if approach is Approach.ULP:
        o.check(
            "latch held in the TCB (approach 1)",
            in_tcb and not in_ld,
            f"TCB latch: {in_tcb}, latch database entry: {in_ld}",
        )
    else:
        o.check(
            "latch held in the latch database (approach 2)",
            in_ld and not in_tcb,
            f"latch database entry: {in_ld}, TCB latch: {in_tcb}",
        )


def binding_word(rec: SecurityRecord) -> str:
    return {
        BindOutcome.BOUND: "bound",
        BindOutcome.MISMATCH: "FAILED (mismatch)",
        BindOutcome.UNSUPPORTED: "unsupported",
        BindOutcome.NOT_ATTEMPTED: "unavailable" if rec.latched else "-",
    }[rec.bind_outcome]


def state_word(state: LatchState | None) -> str:
    """One end's latch state as a table word: ``yes`` when ESTABLISHED, else the state in lower
    case (``none`` = never latched)."""
    return "yes" if state is LatchState.ESTABLISHED else latch_state_name(state).lower()


def end_word(state: LatchState | None) -> str:
    """One end's latch state in scenarios 1 and 3's ``latched?`` cell: ``yes`` when ESTABLISHED,
    else the state's name (``none`` = never latched)."""
    return "yes" if state is LatchState.ESTABLISHED else latch_state_name(state)


def latch_cell(cstate: LatchState | None, sstate: LatchState | None) -> str:
    """The ``latched?`` cell from the observed client/server latch states; ``no`` when neither
    end ever latched."""
    if cstate is None and sstate is None:
        return "no"
    return f"{state_word(cstate)}/{state_word(sstate)}"


def rogue_cell(client_alerts: list[str], relatched: bool) -> str:
    """Scenario 4's ``latched?`` cell: what the first latch went to, then whether the next
    connection latched."""
    first = "broken" if "BROKEN" in client_alerts else "kept"
    return f"{first}->{'yes' if relatched else 'no'}"


def rogue_reason(
    client_alerts: list[str], reset: bool, reconnected: bool, relatched: bool, rebound: bool
) -> str:
    """Scenario 4's reason text, one clause per observation."""
    return (
        f"latch {'BROKEN' if 'BROKEN' in client_alerts else 'not broken'} on conflicting SA, "
        f"{'reset' if reset else 'no reset'}; "
        f"{'reconnected' if reconnected else 'same connection'}, "
        f"{'re-latched' if relatched else 'not re-latched'}, {'re-bound' if rebound else 'not re-bound'}"
    )


def server_change_word(sstate_after: LatchState | None, pinned_origin: EntryOrigin | None) -> str:
    """The server's side after its SPD change: ``pinned`` when its latch stayed ESTABLISHED under a
    pinned 5-tuple entry (RFC 5660 §2.3), else its latch state."""
    if sstate_after is LatchState.ESTABLISHED and pinned_origin is EntryOrigin.PINNED_LATCH:
        return "pinned"
    return state_word(sstate_after)


def client_change_word(broke: bool, cstate_after: LatchState | None) -> str:
    """The client's side after its SPD change: ``broken`` when the change broke its latch."""
    return "broken" if broke else state_word(cstate_after)


def policy_reason(
    server_word: str, client_word: str, reset: bool, reconnected: bool, service: str, rec_reason: str
) -> str:
    """Scenario 5's reason text from what each end did."""

    def did(word: str) -> str:
        return {
            "pinned": "pinned its latch (optional, RFC 5660 §2.3)",
            "broken": "broke its latch (default)",
            "yes": "kept its latch unpinned",
        }.get(word, f"left its latch {word}")

    tail = (
        f"{'reset' if reset else 'no reset'} and "
        f"{'reconnected' if reconnected else 'did not reconnect'}: {service}, {rec_reason}"
    )
    return (
        f"2049 was PROTECT at both ends; admin switched it to BYPASS: the server {did(server_word)}, "
        f"the client {did(client_word)}; {tail}"
    )


def marker_bytes(data: bytes) -> int:
    return data.count(MARKER) * len(MARKER)


def frames_with_marker(bed: DemoTestbed) -> int:
    return sum(1 for r in bed.wire() if MARKER in r.frame)


def flow_views(view: WireView, flow: FiveTuple, after: float, receiver: str | None = None) -> list[FrameView]:
    """Frames of ``flow`` (either direction, ESP or clear) after ``after``, optionally only those
    delivered to ``receiver``."""
    out = []
    ports = {flow.local_port, flow.remote_port}
    for fv in view.frames:
        if fv.record.time <= after or fv.inner is None:
            continue
        if {fv.inner.src_port, fv.inner.dst_port} != ports:
            continue
        if receiver is not None and fv.record.receiver != receiver:
            continue
        out.append(fv)
    return out


def flow_frames(view: WireView, flow: FiveTuple, after: float, receiver: str | None = None) -> list[int]:
    """Sizes of frames of ``flow`` (either direction, ESP or clear) after ``after``."""
    return [len(fv.record.frame) for fv in flow_views(view, flow, after, receiver)]


# -- scenario 1 -------------------------------------------------------------------------------------


def ipsec_available(
    realm: ThrowawayRealm, approach: Approach = Approach.POLICY
) -> tuple[DemoTestbed, Observation]:
    bed = build_testbed(realm, seed=1, approach=approach)
    _pc, rec, ok, view, link, sconn, cstate, sstate = connect_and_echo(bed)
    o = Observation(
        "IPsec available",
        f"{end_word(cstate)}/{end_word(sstate)}",
        rec.peer or "-",
        binding_word(rec),
        ",".join(view.data_services()) or "-",
        reason=rec.reason,
    )
    o.check(
        "client latch ESTABLISHED",
        cstate is LatchState.ESTABLISHED,
        f"client latch {latch_state_name(cstate)}",
    )
    o.check(
        "server latch ESTABLISHED",
        sstate is LatchState.ESTABLISHED,
        f"server latch {latch_state_name(sstate)}",
    )
    ckey = bed.client_stack.ike.credentials.spki
    skey = bed.server_stack.ike.credentials.spki
    o.check(
        "latched to each other's keys",
        sconn is not None
        and peer_key(bed.client_stack, link.conn) == skey
        and peer_key(bed.server_stack, sconn) == ckey,
        f"client sees {fp(peer_key(bed.client_stack, link.conn))} (server key {fp(skey)}), server sees "
        f"{fp(peer_key(bed.server_stack, sconn) if sconn else None)} (client key {fp(ckey)})",
    )
    binds = view.bind_calls("client")
    o.check(
        "BIND_CHANNEL sent inside ESP",
        bool(binds) and all(b.protected for b in binds),
        f"{len(binds)} BIND_CHANNEL call(s) on the wire",
    )
    o.check(
        "DATA calls are channel_prot on the wire",
        view.data_services() == ["channel_prot"],
        f"services on the wire: {view.data_services()}",
    )
    o.check(
        "security record says bound + channel_prot",
        rec.bound and rec.gss_service is Service.CHANNEL_PROT,
        rec.summary(),
    )
    o.check(
        "no cleartext on port 2049",
        view.cleartext_bytes(NFS_PORT) == 0,
        f"{view.cleartext_bytes(NFS_PORT)} cleartext TCP payload bytes",
    )
    o.check(
        "payload never visible on the wire",
        frames_with_marker(bed) == 0,
        f"{frames_with_marker(bed)} frames contain the payload in the clear",
    )
    o.check("ECHO replies intact", ok, "4 ECHO calls of 1.6 KB")
    check_latch_home(o, bed.client_stack, link.conn, approach)
    return bed, o


# -- scenario 2 -------------------------------------------------------------------------------------


def no_ike(realm: ThrowawayRealm, approach: Approach = Approach.POLICY) -> tuple[DemoTestbed, Observation]:
    bed = build_testbed(realm, seed=2, server_ike=IkeMode.ABSENT, approach=approach)
    _pc, rec, ok, view, link, _sconn, cstate, sstate = connect_and_echo(bed)
    flow = link.conn.flow
    overlay = bed.client_stack.engine.spd.overlay_entry(flow)
    o = Observation(
        "no IKE on the server",
        latch_cell(cstate, sstate),
        rec.peer or "-",
        binding_word(rec),
        ",".join(view.data_services()) or "-",
        reason=rec.reason + (f" ({rec.protection_error})" if rec.protection_error else ""),
    )
    o.check(
        "protection attempt failed",
        rec.latch_outcome is LatchOutcome.NOT_LATCHED and rec.protection_error is not None,
        f"protection error: {rec.protection_error}",
    )
    ike_frames = sum(1 for e in bed.trace(view) if e.kind.value == "ike")
    o.check("IKE was tried first", ike_frames > 0, f"{ike_frames} IKEv2 frames (UDP 500) sent, none answered")
    o.check(
        "BYPASS clone for exactly this 5-tuple",
        overlay is not None and overlay.action is SpdAction.BYPASS,
        f"client SPD overlay for {flow}: {overlay.action.value if overlay else None}",
    )
    o.check(
        "client and server unlatched",
        cstate in (None, LatchState.CLOSED) and sstate is None,
        f"client {latch_state_name(cstate)}, server {latch_state_name(sstate)}",
    )
    o.check("no BIND_CHANNEL attempted", not view.bind_calls(), f"{len(view.bind_calls())} BIND_CHANNEL")
    o.check(
        "DATA calls are krb5p on the wire",
        view.data_services() == ["krb5p"],
        f"services on the wire: {view.data_services()}",
    )
    o.check(
        "payload never visible on the wire",
        frames_with_marker(bed) == 0,
        f"{frames_with_marker(bed)} frames contain the payload in the clear",
    )
    o.check("ECHO replies intact", ok, "4 ECHO calls over cleartext TCP, krb5p")
    return bed, o


# -- scenario 3 -------------------------------------------------------------------------------------


def btns_mitm(realm: ThrowawayRealm, approach: Approach = Approach.POLICY) -> tuple[DemoTestbed, Observation]:
    bed = build_testbed(realm, seed=3, mitm=True, approach=approach)
    _pc, rec, ok, view, link, sconn, cstate, sstate = connect_and_echo(bed)
    front, back = bed.attackers[0], bed.attackers[1]
    stolen = bed.attacker_plaintext(view)
    o = Observation(
        "BTNS man in the middle",
        f"{end_word(cstate)}/{end_word(sstate)}",
        rec.peer or "-",
        binding_word(rec),
        ",".join(view.data_services()) or "-",
        reason=rec.reason,
    )
    mkey1 = stack_of(front.security).ike.credentials.spki
    mkey2 = stack_of(back.security).ike.credentials.spki
    o.check(
        "both ends latched (to the attacker)",
        cstate is LatchState.ESTABLISHED
        and sstate is LatchState.ESTABLISHED
        and peer_key(bed.client_stack, link.conn) == mkey1
        and sconn is not None
        and peer_key(bed.server_stack, sconn) == mkey2,
        f"client latched to {fp(peer_key(bed.client_stack, link.conn))} (mitm {fp(mkey1)}), server to "
        f"{fp(peer_key(bed.server_stack, sconn) if sconn else None)} (mitm-b {fp(mkey2)})",
    )
    o.check(
        "BIND_CHANNEL attempted and failed",
        bool(view.bind_calls("client")) and rec.bind_outcome is BindOutcome.MISMATCH,
        f"bind outcome {rec.bind_outcome.name}",
    )
    o.check(
        "failure reported loudly",
        bool(rec.warnings) and any(k == "warning" for _, k, _ in bed.policy_events),
        rec.warnings[0] if rec.warnings else "no warning",
    )
    o.check(
        "no channel_prot anywhere on the wire",
        "channel_prot" not in view.data_services(),
        f"services on the wire: {view.data_services()}",
    )
    o.check(
        "fell back to krb5p (both segments)",
        view.data_services("client") == ["krb5p"] and view.data_services("mitm-b") == ["krb5p"],
        f"client segment {view.data_services('client')}, server segment {view.data_services('mitm-b')}",
    )
    check_relay_learned_nothing(o, stolen, ok)
    return bed, o


def check_relay_learned_nothing(o: Observation, stolen: bytes, ok: bool) -> None:
    """The checks every relaying man in the middle ends with (scenarios 3 and 6): it was in the
    path, it decrypted none of the payload (GSS privacy end to end), and the calls came through."""
    o.check(
        "attacker sat in the path",
        len(stolen) > len(PAYLOAD),
        f"the attacker decrypted {len(stolen)} bytes of relayed stream under its own SAs",
    )
    o.check(
        "attacker learned nothing",
        marker_bytes(stolen) == 0,
        f"{marker_bytes(stolen)} payload bytes in the attacker's plaintext",
    )
    o.check("ECHO replies intact", ok, "4 ECHO calls through the relay, krb5p end to end")


# -- scenario 4 -------------------------------------------------------------------------------------


def rogue_claims_address(
    realm: ThrowawayRealm, approach: Approach = Approach.POLICY
) -> tuple[DemoTestbed, Observation]:
    bed = build_testbed(realm, seed=4, rogue=True, approach=approach)
    pc = bed.connection(ConnectPolicy(ike_timeout=2.0))
    first = pc.connect()
    ok_before = echo(pc)
    link = link_of(pc)
    flow = link.conn.flow
    rogue = bed.attackers[0]
    rstack = stack_of(rogue.security)
    attack_at = bed.net.now
    bed.mark("rogue", f"rogue claims {SERVER_ADDR} and keys the client's flow")
    rogue.claim_address(SERVER_ADDR)
    sel = Selector.for_flow(
        FiveTuple(ip(SERVER_ADDR), NFS_PORT, ip(CLIENT_ADDR), flow.local_port, IpProto.TCP)
    )
    rstack.ike.initiate(ip(SERVER_ADDR), ip(CLIENT_ADDR), (sel,))
    # the next call leaves once the rogue's IKE_AUTH request (which carries its CHILD_SA for the
    # client's flow) is on its way, so that SA reaches the client while the call is in flight
    bed.net.run_until(
        lambda: any(
            r.sender == rogue.name and ike_message(r) == (ExchangeType.IKE_AUTH, False) for r in bed.wire()
        ),
        timeout=1.0,
    )
    reset_seen = ""
    try:
        echo(pc)
    except (ConnectError, RpcError) as exc:
        reset_seen = f"{type(exc).__name__}: {exc}"
    client_alerts = alerts_of(link.conn)
    reset = StreamEventKind.RESET in link.conn.kinds()
    # the real server announces its address again (gratuitous ARP); the client reconnects
    bed.net.run_for(0.01)
    bed.mark("server", f"server re-announces {SERVER_ADDR}")
    bed.server.claim_address(SERVER_ADDR)
    ok_after = echo(pc)
    second = pc.security
    view = bed.wire_view()
    stolen = bed.attacker_plaintext(view)
    to_rogue = flow_views(view, flow, attack_at, receiver=rogue.name)
    rogue_spis = {k.spi for k in bed.attacker_keys()}
    readable = [fv for fv in to_rogue if fv.esp_spi is None or fv.esp_spi in rogue_spis]
    skey = bed.server_stack.ike.credentials.spki
    new_link = link_of(pc)
    o = Observation(
        "rogue claims server address",
        rogue_cell(client_alerts, second.latched),
        second.peer or "-",
        binding_word(second),
        ",".join(view.data_services()) or "-",
        reason=rogue_reason(
            client_alerts, reset, second.conn_id != first.conn_id, second.latched, second.bound
        ),
    )
    o.check("first connection latched and bound", first.bound and ok_before, first.summary())
    check_latch_home(o, bed.client_stack, new_link.conn, approach)
    o.check("client latch went BROKEN", "BROKEN" in client_alerts, f"client latch alerts: {client_alerts}")
    o.check(
        "connection reset (RFC 5660 §5.5 default)",
        reset and bool(reset_seen),
        reset_seen or "the in-flight call did not fail",
    )
    # until the client has the rogue's SA, what it sends to the server's address goes to the rogue,
    # as ESP under the client/server SA: ciphertext the rogue cannot open (IPsec's promise at layer 2)
    o.check(
        "the rogue could read no frame of the flow",
        not readable,
        f"{len(readable)} cleartext or rogue-keyed frames of {flow} delivered to the rogue; "
        f"{len(to_rogue) - len(readable)} under the client/server SA it has no keys for",
    )
    o.check("rogue read no payload", marker_bytes(stolen) == 0, f"{marker_bytes(stolen)} payload bytes")
    o.check(
        "reconnected on a new 5-tuple",
        second.conn_id != first.conn_id and new_link.conn.flow != flow,
        f"new connection {new_link.five_tuple}",
    )
    o.check(
        "re-latched to the real server and re-bound",
        second.bound and peer_key(bed.client_stack, new_link.conn) == skey and ok_after,
        second.summary(),
    )
    new_server = server_conn(bed, new_link.conn.flow)
    ckey = bed.client_stack.ike.credentials.spki
    new_server_state = bed.server_stack.latch_state(new_server) if new_server else None
    o.check(
        "server latched the new connection to the client's key",
        new_server is not None
        and new_server_state is LatchState.ESTABLISHED
        and peer_key(bed.server_stack, new_server) == ckey,
        f"server latch {latch_state_name(new_server_state)}, peer "
        f"{fp(peer_key(bed.server_stack, new_server) if new_server else None)} (client {fp(ckey)})",
    )
    return bed, o


# -- scenario 5 -------------------------------------------------------------------------------------


def policy_change(
    realm: ThrowawayRealm, approach: Approach = Approach.POLICY
) -> tuple[DemoTestbed, Observation]:
    bed = build_testbed(
        realm,
        seed=5,
        spd_action=SpdAction.PROTECT,
        server_config=EngineConfig(pin_on_spd_change=True),
        approach=approach,
    )
    pc = bed.connection(ConnectPolicy(ike_timeout=2.0))
    first = pc.connect()
    ok_before = echo(pc)
    link = link_of(pc)
    flow = link.conn.flow
    sconn = server_conn(bed, flow)
    t_server = bed.net.now
    bed.mark("server", "admin: server SPD 2049 -> BYPASS (latches pinned)")
    broken_server = bed.server_stack.engine.update_spd(examples.nfs_spd(SpdAction.BYPASS))
    broken_server_tcbs = bed.server_stack.engine.last_spd_breaks  # approach 1: TCB latches broken
    sstate_after = bed.server_stack.latch_state(sconn) if sconn else None
    pinned = bed.server_stack.engine.spd.overlay_entry(sconn.flow) if sconn else None
    ok_pinned = echo(pc)
    t_client = bed.net.now
    bed.mark("client", "admin: client SPD 2049 -> BYPASS (default: break)")
    broken_client = bed.client_stack.engine.update_spd(examples.nfs_spd(SpdAction.BYPASS))
    broken_client_tcbs = bed.client_stack.engine.last_spd_breaks
    bed.net.run_for(0.01)
    cstate_after = bed.client_stack.latch_state(link.conn)
    reset = StreamEventKind.RESET in link.conn.kinds()
    after_reset = ""
    try:
        ok_after = echo(pc)
    except (ConnectError, RpcError) as exc:
        ok_after, after_reset = False, f"{type(exc).__name__}: {exc}"
    second = pc.security
    view = bed.wire_view()
    clear_old_flow = [
        fv
        for fv in view.frames
        if fv.record.time > t_server
        and fv.inner is not None
        and fv.esp_spi is None
        and fv.inner.payload
        and {fv.inner.src_port, fv.inner.dst_port} == {flow.local_port, flow.remote_port}
    ]
    old_after = flow_frames(view, flow, t_client + 1e-9)
    sword = server_change_word(sstate_after, pinned.origin if pinned else None)
    cword = client_change_word(bool(broken_client) or flow in broken_client_tcbs, cstate_after)
    o = Observation(
        "policy changed mid-flow",
        f"{sword}/{cword}",
        first.peer or "-",
        binding_word(first),
        ",".join(view.data_services()) or "-",
        reason=policy_reason(
            sword, cword, reset, second.conn_id != first.conn_id, second.gss_service.sec_name, second.reason
        ),
    )
    o.check("first connection latched and bound", first.bound and ok_before, first.summary())
    if sconn is not None:
        check_latch_home(o, bed.server_stack, sconn, approach)
    o.check(
        "server latch pinned, still ESTABLISHED",
        not broken_server
        and not broken_server_tcbs
        and sstate_after is LatchState.ESTABLISHED
        and pinned is not None
        and pinned.origin is EntryOrigin.PINNED_LATCH,
        f"server latches broken: {broken_server or broken_server_tcbs}, "
        f"state after change {latch_state_name(sstate_after)}, "
        f"5-tuple entry {pinned.origin.value if pinned else None}",
    )
    o.check(
        "channel_prot still accepted after the server change",
        ok_pinned and view.data_services(after=t_server)[:1] == ["channel_prot"],
        f"services after the server change: {view.data_services(after=t_server)}",
    )
    o.check(
        "client latch BROKEN by its policy change",
        (bool(broken_client) or flow in broken_client_tcbs)
        and cstate_after in (LatchState.BROKEN, LatchState.CLOSED),
        f"client latches broken: {broken_client or broken_client_tcbs}, "
        f"state {latch_state_name(cstate_after)}",
    )
    o.check("client connection reset", reset, f"stream events: {[k.value for k in link.conn.kinds()][-3:]}")
    o.check(
        "never cleartext on the latched flow",
        not clear_old_flow,
        f"{len(clear_old_flow)} cleartext data segments of {flow} after the change",
    )
    o.check(
        "old flow silent after the break", not old_after, f"{len(old_after)} frames of {flow} after the break"
    )
    o.check(
        "next call reconnects protected",
        ok_after
        and second.conn_id != first.conn_id
        and second.gss_service in (Service.CHANNEL_PROT, Service.PRIVACY, Service.INTEGRITY),
        after_reset or second.summary(),
    )
    o.check(
        "payload never visible on the wire",
        frames_with_marker(bed) == 0,
        f"{frames_with_marker(bed)} frames contain the payload in the clear",
    )
    return bed, o


# -- scenario 6 -------------------------------------------------------------------------------------

BIND_ATTACK_TITLES = {
    BindAttack.PREFIX: "BIND_CHANNEL relay: prefix rewritten",
    BindAttack.V2_REFUSED: "BIND_CHANNEL relay: forged v2 refusal",
    BindAttack.HASH_NOTSUPP: "BIND_CHANNEL relay: forged HASH_NOTSUPP",
    BindAttack.REPLAY: "BIND_CHANNEL relay: replays to the server",
}


def relay_edit_check(o: Observation, attack: BindAttack, view: WireView, editor: BindRelayEditor) -> None:
    """Did the relay's edit happen, as seen on the two segments' wire (client <-> mitm, mitm-b <->
    server)? One check per variant."""
    xid = editor.target_xid
    if attack is BindAttack.V2_REFUSED:
        inits = [c for c in view.gss_calls(GssProc.RPCSEC_GSS_INIT, "client") if c.gss_version == 2]
        forged = view.replies_to(inits[0].xid, "mitm") if inits else []
        reached = [c for c in view.calls if inits and c.xid == inits[0].xid and c.sender == "mitm-b"]
        o.check(
            "relay refused the v2 INIT itself (AUTH_BADCRED)",
            bool(forged) and forged[0].stat == "AUTH_BADCRED" and not reached,
            f"client's first v2 INIT answered by the relay with {[r.stat for r in forged]}; "
            f"{len(reached)} copies reached the server",
        )
        return
    sent = view.bind_calls("client")
    to_server = view.bind_calls("mitm-b")
    if attack is BindAttack.HASH_NOTSUPP:
        forged = view.replies_to(xid, "mitm") if xid is not None else []
        o.check(
            "relay answered BIND_CHANNEL itself (HASH_NOTSUPP, unknown OID, zero MIC)",
            bool(sent)
            and bool(forged)
            and forged[0].bind_status is BindChanStatus.RGSS2_BIND_CHAN_HASH_NOTSUPP
            and forged[0].bind_oids[:1] == (UNKNOWN_HASH_OID,)
            and not to_server,
            f"{len(sent)} BIND_CHANNEL from the client, answered by the relay with "
            f"{[r.bind_status.name if r.bind_status else r.stat for r in forged]}; "
            f"{len(to_server)} reached the server",
        )
        return
    prefixes_in = sorted({c.bind_prefix.decode("ascii", "replace") for c in sent if c.bind_prefix})
    prefixes_out = sorted({c.bind_prefix.decode("ascii", "replace") for c in to_server if c.bind_prefix})
    copies = [c for c in to_server if c.xid == xid]
    want = 1 + editor.replays if attack is BindAttack.REPLAY else 1
    o.check(
        "relay rewrote the prefix" + (f" and sent the request {want} times" if want > 1 else ""),
        bool(sent)
        and prefixes_out == [REWRITTEN_PREFIX.decode()]
        and prefixes_in != prefixes_out
        and len(copies) == want,
        f"client sent prefix {prefixes_in}, the server received {prefixes_out} x{len(copies)}",
    )


def bind_relay(
    realm: ThrowawayRealm, approach: Approach = Approach.POLICY, attack: BindAttack = BindAttack.PREFIX
) -> tuple[DemoTestbed, Observation]:
    """Scenario 6: the BTNS man in the middle of scenario 3 edits the BIND_CHANNEL exchange to turn
    the loud binding failure into a quiet "server cannot bind" (RFC 5403 §2,
    §3.3, §9). Whatever it edits, the client must still end with MISMATCH, warn, not keep the
    context, and fall back to krb5p; the server must not answer a replayed request twice."""
    editor = BindRelayEditor(attack)
    bed = build_testbed(realm, seed=6, mitm=True, approach=approach, editor=editor)
    editor.on_action = lambda text: bed.mark("mitm", text)  # the relay acts once traffic flows
    _pc, rec, ok, view, link, sconn, cstate, sstate = connect_and_echo(bed)
    front, back = bed.attackers[0], bed.attackers[1]
    stolen = bed.attacker_plaintext(view)
    attack_at = next((t for t, lane, _ in bed.marks if lane == "mitm"), None)
    o = Observation(
        BIND_ATTACK_TITLES[attack],
        latch_cell(cstate, sstate),
        rec.peer or "-",
        binding_word(rec),
        ",".join(view.data_services()) or "-",
        reason=rec.reason,
    )
    o.check("relay acted", attack_at is not None, f"relay action at t={attack_at}")
    mkey1 = stack_of(front.security).ike.credentials.spki
    mkey2 = stack_of(back.security).ike.credentials.spki
    o.check(
        "both ends latched (to the attacker)",
        cstate is LatchState.ESTABLISHED
        and sstate is LatchState.ESTABLISHED
        and peer_key(bed.client_stack, link.conn) == mkey1
        and sconn is not None
        and peer_key(bed.server_stack, sconn) == mkey2,
        f"client latched to {fp(peer_key(bed.client_stack, link.conn))} (mitm {fp(mkey1)}), server to "
        f"{fp(peer_key(bed.server_stack, sconn) if sconn else None)} (mitm-b {fp(mkey2)})",
    )
    relay_edit_check(o, attack, view, editor)
    o.check(
        "binding failed as MISMATCH, not UNSUPPORTED",
        rec.bind_outcome is BindOutcome.MISMATCH,
        f"bind outcome {rec.bind_outcome.name}: {rec.bind_detail or '-'}",
    )
    o.check(
        "failure reported loudly",
        bool(rec.warnings) and any(k == "warning" for _, k, _ in bed.policy_events),
        rec.warnings[0] if rec.warnings else "no warning",
    )
    destroyed = view.gss_calls(GssProc.RPCSEC_GSS_DESTROY, "client", after=attack_at or 0.0)
    o.check(
        "context destroyed, never used for channel_prot",
        bool(destroyed) and "channel_prot" not in view.data_services(),
        f"{len(destroyed)} DESTROY from the client after the attack; services on the wire: "
        f"{view.data_services()}",
    )
    o.check(
        "fell back to krb5p (both segments)",
        view.data_services("client") == ["krb5p"] and view.data_services("mitm-b") == ["krb5p"],
        f"client segment {view.data_services('client')}, server segment {view.data_services('mitm-b')}",
    )
    if attack is BindAttack.REPLAY and editor.target_xid is not None:
        # The oracle to deny is a *signed* PREF_NOTSUPP/HASH_NOTSUPP per copy: a server
        # MIC over seq_num || ... that doubles as a krb5i reply checksum. A request whose MIC
        # verifies is answered once and its replays dropped; copies whose MIC cannot verify (as
        # here: the relay's channel is not the client's) each get an unsigned CREDPROBLEM.
        answers = view.replies_to(editor.target_xid, "server")
        signed = [r for r in answers if r.signed]
        o.check(
            "server signed at most one answer to the copies (no MIC oracle)",
            len(signed) <= 1,
            f"{len(answers)} answers to {1 + editor.replays} copies, {len(signed)} with a server MIC: "
            f"{sorted({r.bind_status.name if r.bind_status else r.stat for r in answers})}",
        )
    check_relay_learned_nothing(o, stolen, ok)
    return bed, o


def _bind_relay_variant(
    attack: BindAttack,
) -> Callable[[ThrowawayRealm, Approach], tuple[DemoTestbed, Observation]]:
    def run(realm: ThrowawayRealm, approach: Approach) -> tuple[DemoTestbed, Observation]:
        return bind_relay(realm, approach, attack)

    return run


SCENARIOS: tuple[ScenarioSpec, ...] = (
    ScenarioSpec(1, "ipsec-available", "IPsec available: latched, bound, channel_prot", ipsec_available),
    ScenarioSpec(2, "no-ike", "no IKE on the server: BYPASS clone, krb5p", no_ike),
    ScenarioSpec(3, "btns-mitm", "BTNS man in the middle: binding fails, krb5p", btns_mitm),
    ScenarioSpec(4, "rogue-address", "rogue claims the server's address mid-flow", rogue_claims_address),
    ScenarioSpec(
        5, "policy-change", "policy changed mid-flow: pinned or broken, never cleartext", policy_change
    ),
    *(
        ScenarioSpec(
            6,
            f"bind-relay-{slug}",
            BIND_ATTACK_TITLES[attack] + ": still MISMATCH",
            _bind_relay_variant(attack),
            attack.value,
        )
        for attack, slug in (
            (BindAttack.PREFIX, "prefix"),
            (BindAttack.V2_REFUSED, "v2-refused"),
            (BindAttack.HASH_NOTSUPP, "hash-notsupp"),
            (BindAttack.REPLAY, "replay"),
        )
    ),
)


def run_scenario(
    spec: ScenarioSpec, realm: ThrowawayRealm, run_dir: Path, approach: Approach = Approach.POLICY
) -> ScenarioResult:
    """Run one scenario under ``approach`` (where latches live: 1 = in the TCB, RFC 5660 §2.4;
    2 = in the latch database, §2.3), write its artefacts, and return its result (errors become
    FAIL)."""
    bed: DemoTestbed | None = None
    try:
        bed, o = spec.run(realm, approach)
        error = None
    except Exception as exc:  # a crash is a FAIL with its reason, never a traceback for the user
        error = f"{type(exc).__name__}: {exc}"
        o = Observation(spec.title, "?", "?", "?", "?", reason=traceback.format_exc(limit=3).splitlines()[-1])
    events: list[TraceEvent] = []
    view: WireView | None = None
    files: dict[str, str] = {}
    attacker_bytes = attacker_plain = 0
    security: tuple[dict[str, Any], ...] = ()
    if bed is not None:
        security = tuple(r.to_json() for pc in bed.connections for r in pc.history)
        view = bed.wire_view()
        events = bed.trace(view)
        attacker_bytes = bed.attacker_bytes(view)
        attacker_plain = marker_bytes(bed.attacker_plaintext(view))
        base = f"{spec.label}-{slug(spec.name)}"
        pcap = run_dir / f"{base}.pcapng"
        keys = run_dir / f"{base}.esp_sa"
        ike_keys = run_dir / f"{base}.ikev2_decryption_table"
        bed.export(pcap, keys, ike_keys)
        files["pcapng"] = str(pcap)
        files["esp_sa"] = str(keys)
        files["ikev2_decryption_table"] = str(ike_keys)
    title = f"Scenario {spec.label}: {spec.title} (approach {approach.value})"
    svg = render_svg(title, events, LANES)
    base = f"{spec.label}-{slug(spec.name)}"
    (run_dir / f"{base}.svg").write_text(svg, encoding="utf-8")
    summary = [
        ("latched?", o.latched),
        ("peer", o.peer),
        ("binding", o.binding),
        ("GSS service", o.gss_service),
        ("attacker bytes (readable payload)", f"{attacker_bytes} ({attacker_plain})"),
        ("why", o.reason),
    ] + ([("error", error)] if error else [])
    if "pcapng" in files:
        summary.append(
            (
                "capture",
                f"{Path(files['pcapng']).name}: open in Wireshark; to decrypt the ESP, "
                f"copy {Path(files['esp_sa']).name} to ~/.config/wireshark/esp_sa and enable "
                "'Attempt to detect/decode encrypted ESP payloads'; to decrypt the IKEv2 SK payloads, "
                f"copy {Path(files['ikev2_decryption_table']).name} to "
                "~/.config/wireshark/ikev2_decryption_table",
            )
        )
    summary.append(
        (
            "legend",
            "green ESP, orange cleartext, blue IKE, grey RPC calls (service as seen on the "
            "wire), purple latch state, red drops/warnings/attacks; hover an arrow for details",
        )
    )
    (run_dir / f"{base}.html").write_text(
        render_html(title, svg, o.checks, summary, events), encoding="utf-8"
    )
    files["svg"] = str(run_dir / f"{base}.svg")
    files["html"] = str(run_dir / f"{base}.html")
    return ScenarioResult(
        spec.number,
        spec.name,
        o.title,
        o.latched,
        o.peer,
        o.binding,
        o.gss_service,
        attacker_bytes,
        attacker_plain,
        tuple(o.checks),
        tuple(events),
        files,
        o.reason,
        error,
        security,
        spec.variant,
    )


def timed(
    spec: ScenarioSpec, realm: ThrowawayRealm, run_dir: Path, approach: Approach = Approach.POLICY
) -> tuple[ScenarioResult, float]:
    t0 = time.monotonic()
    result = run_scenario(spec, realm, run_dir, approach)
    return result, time.monotonic() - t0
