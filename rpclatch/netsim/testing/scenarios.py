"""Named latching scenarios (the attacks of docs/design.md) runnable under either design, for the side-by-side
comparison test (tests/conformance) and ``benchmarks/sim_network.py``. Each returns a
:class:`LatchScenarioResult` measured on the wire.

::

    for name in SCENARIOS:
        for approach in (Approach.ULP, Approach.POLICY):
            print(run_scenario(name, approach))
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rpclatch.ipsec import examples
from rpclatch.ipsec.engine import Approach
from rpclatch.ipsec.latch import LatchState
from rpclatch.ipsec.model import Selector
from rpclatch.ipsec.spd import SpdAction
from rpclatch.netsim.ike import IkeMode
from rpclatch.netsim.stream import StreamConnection, StreamEventKind, StreamState
from rpclatch.netsim.tcp import Flags
from rpclatch.netsim.testing.lab import Lab
from rpclatch.netsim.testing.wireview import cleartext_after, leaked


@dataclass(frozen=True, slots=True)
class LatchScenarioResult:
    """What happened, as the wire and the application saw it.

    ``outcome``: the client application's view (``ok``: data flowed end to end; ``reset``;
    ``refused``/``failed``: never connected; ``stalled``: open but nothing delivered).
    ``cleartext_after_latch``: cleartext segments of the latched flow sent by the two ends after
    the latch existed (must be 0). ``leaked``: payload segments readable by a third host (must be 0).
    ``latch_state``: the client's latch at the end (RFC 5660 §2.2), None if it never had one.
    """

    name: str
    approach: Approach
    outcome: str
    latch_state: LatchState | None
    cleartext_after_latch: int
    leaked: int
    delivered_to_server: bytes
    notes: str = ""

    @property
    def safe(self) -> bool:
        return self.cleartext_after_latch == 0 and self.leaked == 0

    def __str__(self) -> str:
        latch = self.latch_state.value if self.latch_state else "none"
        return (
            f"{self.name:<22} approach{self.approach.value}  outcome={self.outcome:<8} "
            f"latch={latch:<11} cleartext={self.cleartext_after_latch} leaked={self.leaked}"
            f"{'  ' + self.notes if self.notes else ''}"
        )


def _outcome(conn: StreamConnection) -> str:
    kinds = conn.kinds()
    if StreamEventKind.FAILED in kinds:
        return "failed"
    if StreamEventKind.REFUSED in kinds:
        return "refused"
    if StreamEventKind.RESET in kinds:
        return "reset"
    if StreamEventKind.TIMEOUT in kinds:
        return "timeout"
    return "open" if conn.state is not StreamState.CLOSED else "closed"


def _finish(
    name: str,
    lab: Lab,
    client: StreamConnection,
    server: StreamConnection | None,
    t_latch: float,
    notes: str = "",
    pcap_dir: Path | None = None,
) -> LatchScenarioResult:
    hub = lab.net.hub
    if pcap_dir is not None:
        lab.export(pcap_dir, f"{name}-approach{lab.approach.value}")
    received = bytes(server.received) if server is not None else b""
    outcome = _outcome(client)
    if outcome == "open":
        outcome = "ok" if received.endswith(b"probe") else "stalled"
    return LatchScenarioResult(
        name,
        lab.approach,
        outcome,
        lab.stack(lab.a).latch_state(client),
        len(cleartext_after(hub, client.flow, t_latch, {"a", "b"})),
        len(leaked(hub, client.flow, {"a", "b"})),
        received,
        notes,
    )


def _latched(approach: Approach, seed: int) -> tuple[Lab, StreamConnection, StreamConnection, float]:
    lab = Lab.build(approach=approach, seed=seed)
    client, server = lab.open(local_port=32800)
    if server is None or client.state is not StreamState.ESTABLISHED:
        raise RuntimeError("scenario setup: the connection did not latch")
    return lab, client, server, lab.net.now


def _probe(lab: Lab, client: StreamConnection) -> None:
    if client.is_open:
        client.send(b"probe")
    lab.net.run_for(3.0)


def policy_change(approach: Approach, seed: int = 1, pcap_dir: Path | None = None) -> LatchScenarioResult:
    """A7 / LATCH-02: the admin switches port 2049 to BYPASS on both ends mid-flow."""
    lab, client, server, t0 = _latched(approach, seed)
    for host in (lab.a, lab.b):
        lab.stack(host).engine.update_spd(examples.nfs_spd(SpdAction.BYPASS))
    _probe(lab, client)
    return _finish("policy-change", lab, client, server, t0, pcap_dir=pcap_dir)


def flow_stealing(approach: Approach, seed: int = 1, pcap_dir: Path | None = None) -> LatchScenarioResult:
    """A1: a co-tenant claims the server's address and gets SAs for the latched 5-tuple."""
    lab, client, server, t0 = _latched(approach, seed)
    c = lab.attacker()
    c.claim_address(lab.b.address)
    lab.stack(c).ike.initiate(lab.b.address, lab.a.address, (Selector.for_flow(client.flow.reversed()),))
    lab.net.run_for(0.5)
    c.inject_protected(
        lab.b.address,
        2049,
        lab.a.address,
        32800,
        seq=client.rcv_nxt,
        ack=client.snd_nxt,
        flags=Flags.ACK | Flags.PSH,
        payload=b"FROM-C",
    )
    _probe(lab, client)
    notes = "client got C's bytes!" if b"FROM-C" in bytes(client.received) else "C's bytes dropped"
    return _finish("flow-stealing", lab, client, server, t0, notes, pcap_dir)


def cleartext_injection(
    approach: Approach, seed: int = 1, pcap_dir: Path | None = None
) -> LatchScenarioResult:
    """A8: an on-path attacker injects a cleartext RST and data with the right sequence numbers."""
    lab, client, server, t0 = _latched(approach, seed)
    m = lab.attacker("m", ipsec=False)
    f = server.flow
    m.inject_tcp(
        f.remote_addr,
        f.remote_port,
        f.local_addr,
        f.local_port,
        seq=server.rcv_nxt,
        ack=server.snd_nxt,
        flags=Flags.ACK | Flags.PSH,
        payload=b"FORGED",
    )
    m.inject_tcp(
        f.remote_addr, f.remote_port, f.local_addr, f.local_port, seq=server.rcv_nxt + 6, flags=Flags.RST
    )
    _probe(lab, client)
    notes = "server got forged bytes!" if b"FORGED" in bytes(server.received) else "forgery dropped"
    return _finish("cleartext-injection", lab, client, server, t0, notes, pcap_dir)


def address_reuse(approach: Approach, seed: int = 1, pcap_dir: Path | None = None) -> LatchScenarioResult:
    """A6 seen from the client: the server leaves, a newcomer takes its address and SAs."""
    lab, client, server, t0 = _latched(approach, seed)
    addr = lab.b.address
    lab.b.release_address(addr)
    c = lab.attacker("c", "192.0.2.67")
    c.claim_address(addr)
    lab.stack(c).ike.initiate(addr, lab.a.address, (Selector.for_flow(client.flow.reversed()),))
    lab.net.run_for(0.5)
    _probe(lab, client)
    return _finish("address-reuse", lab, client, server, t0, pcap_dir=pcap_dir)


def km_restart(approach: Approach, seed: int = 1, pcap_dir: Path | None = None) -> LatchScenarioResult:
    """A14: the client's key manager restarts without restoring state."""
    lab, client, server, t0 = _latched(approach, seed)
    lab.stack(lab.a).engine.restart_key_manager(lab.net.now, restore_latches=False)
    _probe(lab, client)
    return _finish("km-restart", lab, client, server, t0, pcap_dir=pcap_dir)


def dpd_blackhole(approach: Approach, seed: int = 1, pcap_dir: Path | None = None) -> LatchScenarioResult:
    """A13: an on-path attacker blackholes the peers until DPD declares the server dead."""
    lab, client, server, t0 = _latched(approach, seed)
    lab.stack(lab.a).ike.start_dpd(interval=1.0, max_misses=3)
    m = lab.attacker("m", ipsec=False)
    m.blackhole(lab.a.address, lab.b.address)
    lab.net.run_for(8.0)
    m.stop_dropping()
    _probe(lab, client)
    return _finish("dpd-blackhole", lab, client, server, t0, pcap_dir=pcap_dir)


def ike_absent(approach: Approach, seed: int = 1, pcap_dir: Path | None = None) -> LatchScenarioResult:
    """LATCH-07: the server runs no key manager; protection is required."""
    lab = Lab.build(approach=approach, seed=seed, server_ike=IkeMode.ABSENT)
    client, server = lab.open(timeout=30.0)
    return _finish("ike-absent", lab, client, server, 0.0, pcap_dir=pcap_dir)


SCENARIOS: dict[str, Callable[..., LatchScenarioResult]] = {
    "policy-change": policy_change,
    "flow-stealing": flow_stealing,
    "cleartext-injection": cleartext_injection,
    "address-reuse": address_reuse,
    "km-restart": km_restart,
    "dpd-blackhole": dpd_blackhole,
    "ike-absent": ike_absent,
}


def run_scenario(
    name: str, approach: Approach, seed: int = 1, pcap_dir: Path | None = None
) -> LatchScenarioResult:
    return SCENARIOS[name](approach, seed, pcap_dir)
