"""Approach 2 of docs/design.md: the latch recorded in the PAD/SPD ("PAD-based latching").

Template PAD entries are cloned into actual, exact-5-tuple entries by a flow's first packet; each
clone belongs to one latch of the Latch Database (:mod:`rpclatch.ipsec.latch`), so state, INQUIRE
and ALERT work as in the normative model (RFC 5660 §2.3). :class:`PadLatchLayer` holds the
templates, clones and holds; the engine drives it.

The layer never touches the configured PAD entries (RFC 5660 §1): clones only narrow what those
entries already authorize. Only connection-like flows (TCP, connected UDP, SCTP) can be latched
this way: an unconnected UDP socket has no 5-tuple to clone an entry for.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

from rpclatch.ipsec.latch import LatchRequest
from rpclatch.ipsec.model import FiveTuple, IPAddress, PeerIdentity, Selector, ThreeTuple


@dataclass(frozen=True, slots=True)
class TimeWaitPolicy:
    """Length of the TIME_WAIT-like hold, from local latencies only.

    hold = ``multiplier`` x (``local_stack_latency`` + ``key_manager_latency``): long enough for
    every packet of the flow already inside this host (queues, the key manager's pending work) to
    drain, and no longer: it does not depend on the network or the peer.
    """

    local_stack_latency: float = 0.010
    key_manager_latency: float = 0.040
    multiplier: float = 4.0

    @property
    def hold(self) -> float:
        return self.multiplier * (self.local_stack_latency + self.key_manager_latency)


@dataclass(frozen=True, slots=True)
class PadTemplate:
    """A template PAD entry: a listener's 3-tuple or an initiator's 5-tuple."""

    key: ThreeTuple | FiveTuple
    request: LatchRequest
    latch: int  # the LISTENER latch (3-tuple) or the connection latch (5-tuple)


@dataclass(frozen=True, slots=True)
class PadClone:
    """An actual PAD entry cloned from a template by a packet of ``flow``."""

    flow: FiveTuple
    peer: PeerIdentity
    peer_addr: IPAddress
    latch: int
    template: ThreeTuple | FiveTuple

    @property
    def child_sa(self) -> Selector:
        """The child-SA constraint: exactly the flow (populated from the packet)."""
        return Selector.for_flow(self.flow)


class PadLatchLayer:
    """Templates, clones and TIME_WAIT holds.

    - Listeners create a 3-tuple *template* PAD entry, initiators a 5-tuple one
      (:meth:`add_template`).
    - A packet that matches a template causes an *actual* (cloned) PAD entry to be created: its
      child-SA constraint is populated from the packet (exactly that 5-tuple) and its peer ID from
      the SA that protected the packet (:meth:`clone`).
    - On teardown the clone is not removed at once: it is *held* (:meth:`hold`) for a
      TIME_WAIT-like period whose length comes only from local latencies
      (:class:`TimeWaitPolicy`), during which late packets of the flow are still judged against
      it. A new flow trigger for the same 5-tuple during the hold replaces the held clone in one
      step, so there is no instant at which the 5-tuple is governed by neither (atomic w.r.t. new
      flow triggers). RFC 5660 never names TIME_WAIT; the hold follows from §2.3 (a latch goes
      only when no further packets are expected) and §5.1 (a TCP latch closes when TCP reaches
      CLOSED, which is after TIME_WAIT).
    """

    def __init__(self, time_wait: TimeWaitPolicy | None = None) -> None:
        self.time_wait = time_wait or TimeWaitPolicy()
        self.listener_templates: dict[ThreeTuple, PadTemplate] = {}
        self.flow_templates: dict[FiveTuple, PadTemplate] = {}
        self.clones: dict[FiveTuple, PadClone] = {}
        self.holds: dict[FiveTuple, float] = {}
        self._heap: list[tuple[float, int, FiveTuple]] = []
        self._seq = 0

    def add_template(self, template: PadTemplate) -> None:
        if isinstance(template.key, ThreeTuple):
            self.listener_templates[template.key] = template
        else:
            self.flow_templates[template.key] = template

    def remove_template(self, key: ThreeTuple | FiveTuple) -> None:
        if isinstance(key, ThreeTuple):
            self.listener_templates.pop(key, None)
        else:
            self.flow_templates.pop(key, None)

    def template_for(self, flow: FiveTuple) -> PadTemplate | None:
        t = self.flow_templates.get(flow)
        if t is not None:
            return t
        t = self.listener_templates.get(flow.listener_key)
        if t is not None:
            return t
        for key, tmpl in self.listener_templates.items():
            if (
                key.local_addr.is_unspecified
                and key.proto == flow.proto
                and key.local_port == flow.local_port
            ):
                return tmpl
        return None

    def clone(
        self, template: PadTemplate, flow: FiveTuple, peer: PeerIdentity, peer_addr: IPAddress, latch: int
    ) -> PadClone:
        """Create (or atomically replace) the actual entry for ``flow``."""
        self.holds.pop(flow, None)
        c = PadClone(flow, peer, peer_addr, latch, template.key)
        self.clones[flow] = c
        return c

    def hold(self, flow: FiveTuple, now: float) -> float:
        """Start the TIME_WAIT-like hold of ``flow``'s clone; returns when it ends."""
        until = now + self.time_wait.hold
        self.holds[flow] = until
        self._seq += 1
        heapq.heappush(self._heap, (until, self._seq, flow))
        return until

    def drop(self, flow: FiveTuple) -> PadClone | None:
        self.holds.pop(flow, None)
        self.flow_templates.pop(flow, None)
        return self.clones.pop(flow, None)

    def due(self, now: float) -> list[FiveTuple]:
        """Flows whose hold has ended by ``now`` (each returned once)."""
        out = []
        while self._heap and self._heap[0][0] <= now:
            until, _, flow = heapq.heappop(self._heap)
            if self.holds.get(flow) == until:
                out.append(flow)
        return out

    def next_deadline(self) -> float | None:
        while self._heap and self.holds.get(self._heap[0][2]) != self._heap[0][0]:
            heapq.heappop(self._heap)
        return self._heap[0][0] if self._heap else None

    def clear(self) -> None:
        self.listener_templates.clear()
        self.flow_templates.clear()
        self.clones.clear()
        self.holds.clear()
        self._heap.clear()
