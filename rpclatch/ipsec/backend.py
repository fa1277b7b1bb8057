"""The datapath backend interface: where SAs and per-flow policies are pushed.

The engine (rpclatch.ipsec.engine) is the policy brain; a :class:`Backend` is the datapath that
must mirror its decisions. Two implementations: the in-process one here (used by the simulated
network, where the engine itself answers every packet, so the backend only records the tables a
kernel would hold) and the XFRM one (:class:`rpclatch.ipsec.xfrm.backend.XfrmBackend`: the Linux
kernel via xfrm_user netlink, sockets made in a namespace without fork, every request with a timeout).

Mapping onto Linux XFRM (approach 2 of docs/design.md; the kernel interface is ``<linux/xfrm.h>``):

=====================================  ========================================================
Backend call                           xfrm_user netlink
=====================================  ========================================================
``install_sa(sa)``                     two XFRM_MSG_NEWSA (in: daddr=local, spi=spi_in; out:
                                       daddr=remote, spi=spi_out), ``reqid=sa.reqid``, selector =
                                       the SA's traffic selector (one SA pair per selector),
                                       mode transport/tunnel, aead rfc4106(gcm(aes)) etc.
``remove_sa(sa)``                      XFRM_MSG_DELSA for both SPIs
``install_flow_policy(flow, entry,     XFRM_MSG_NEWPOLICY dir OUT and IN (and FWD in tunnel
reqid)``                               mode) with an exact 5-tuple selector (prefixlen 32/128,
                                       sport/dport masks 0xffff, proto), priority above the
                                       configured policies; PROTECT: one ``xfrm_user_tmpl`` with
                                       ``reqid`` = the latched SA's reqid (pins the flow to that
                                       peer's SAs: no other SA matches the template); BYPASS:
                                       action ALLOW without templates; DISCARD: action BLOCK
``remove_flow_policy(flow)``           XFRM_MSG_DELPOLICY for the same selectors/directions
``install_spd(entries)``               the configured SPD mirrored as policies below the flow
                                       policies (first match wins: priority by position), so a
                                       flow whose flow policy goes away falls back to it
``flow_policies``                      (query) the flow policies installed, as the engine gave them
``install_socket_policy(policy)``      setsockopt(IP_XFRM_POLICY / IPV6_XFRM_POLICY) on the
                                       socket, in and out, with an ``xfrm_userpolicy_info`` + one
                                       template (reqid pinned if given); BYPASS = a per-socket
                                       ALLOW policy without templates. Used for a flow decided
                                       before the socket is bound/connected (the kernel's
                                       ACQUIRE has sport 0 until then)
``remove_socket_policy(socket_id)``    setsockopt with an empty policy, or close the socket
events: ACQUIRE -> engine              XFRMNLGRP_ACQUIRE multicast (XFRM_MSG_ACQUIRE): call
                                       ``IPsecEngine.backend_acquire(flow, now)``; note the kernel
                                       reports sport 0 unless the socket was bound first
events: EXPIRE -> engine               XFRMNLGRP_EXPIRE (XFRM_MSG_EXPIRE, hard flag): call
                                       ``IPsecEngine.backend_expire(sa_id, hard, now)``
=====================================  ========================================================

What XFRM cannot do and how approach 2 copes: there is no per-packet SA tag delivered to TCP
sockets (approach 1 needs one), so on Linux the latch is enforced by the pinned per-5-tuple policy
(inbound: the template reqid check drops packets from other peers' SAs; XfrmInTmplMismatch drops
plaintext), and BROKEN is acted on in two steps: the engine replaces the flow's pinned policy by
an exact-5-tuple DISCARD one in both directions (XFRM action BLOCK: nothing of the flow is sent or
accepted, RFC 5660 §2.3) before the holder is ALERTed -- re-pinned if the latch is ESTABLISHED
again, removed when it ends -- and the ULP resets the TCP connection from user space (RFC 5660
§5.5 disposition).
"""

from __future__ import annotations

import abc
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from rpclatch.ipsec.model import FiveTuple
from rpclatch.ipsec.sad import SecurityAssociation
from rpclatch.ipsec.spd import SpdEntry


@dataclass(frozen=True, slots=True)
class SocketPolicy:
    """A per-socket policy (RFC 4301 §4.4.1.2 end: a native host may bind SAs to a socket):
    ``socket_id`` names the socket in the host stack; ``flow`` is its (possibly still partial)
    5-tuple; ``entry`` PROTECT or BYPASS; ``reqid`` pins PROTECT to one peer's SAs."""

    socket_id: int
    flow: FiveTuple
    entry: SpdEntry
    reqid: int | None


@dataclass(frozen=True, slots=True)
class FlowPolicy:
    """One per-5-tuple policy as the backend holds it: the SPD entry and, for PROTECT, the reqid
    of the SAs the flow is pinned to (None = any SA satisfying the entry)."""

    flow: FiveTuple
    entry: SpdEntry
    reqid: int | None


class Backend(abc.ABC):
    """Datapath interface; see the module docstring for the XFRM mapping."""

    @abc.abstractmethod
    def install_sa(self, sa: SecurityAssociation) -> None:
        """Install both directions of a child-SA pair."""

    @abc.abstractmethod
    def remove_sa(self, sa: SecurityAssociation) -> None:
        """Remove both directions of a child-SA pair."""

    @abc.abstractmethod
    def install_flow_policy(self, policy: FlowPolicy) -> None:
        """Install (or replace) the exact-5-tuple policy of one flow, above configured policies."""

    @abc.abstractmethod
    def remove_flow_policy(self, flow: FiveTuple) -> None:
        """Remove the flow's exact-5-tuple policy (no error if absent)."""

    @property
    @abc.abstractmethod
    def flow_policies(self) -> Mapping[FiveTuple, FlowPolicy]:
        """The per-flow policies installed (by flow), as the engine gave them."""

    @abc.abstractmethod
    def install_spd(self, entries: Iterable[SpdEntry]) -> None:
        """Install the configured SPD (replacing the previous table), in order: what a flow
        without a flow policy gets (RFC 4301 §4.4.1 first match)."""

    @abc.abstractmethod
    def install_socket_policy(self, policy: SocketPolicy) -> None:
        """Attach a per-socket policy (replacing the socket's previous one)."""

    @abc.abstractmethod
    def remove_socket_policy(self, socket_id: int) -> None:
        """Detach the socket's policy (no error if absent)."""

    @abc.abstractmethod
    def reset(self) -> None:
        """Forget every SA and dynamic policy (key-manager restart / reboot)."""


@dataclass
class InProcessBackend(Backend):
    """Backend for the in-process (simulated) datapath: the engine answers every packet itself,
    so this keeps the tables a kernel would hold (for inspection by the sim, demos and tests):
    ``sas``, ``flow_policies``, ``socket_policies`` and ``spd`` (the configured entries)."""

    sas: dict[int, SecurityAssociation] = field(default_factory=dict)
    socket_policies: dict[int, SocketPolicy] = field(default_factory=dict)
    spd: tuple[SpdEntry, ...] = ()
    _flows: dict[FiveTuple, FlowPolicy] = field(default_factory=dict, repr=False)

    @property
    def flow_policies(self) -> dict[FiveTuple, FlowPolicy]:
        return self._flows

    def install_spd(self, entries: Iterable[SpdEntry]) -> None:
        self.spd = tuple(entries)

    def install_sa(self, sa: SecurityAssociation) -> None:
        self.sas[sa.sa_id] = sa

    def remove_sa(self, sa: SecurityAssociation) -> None:
        self.sas.pop(sa.sa_id, None)

    def install_flow_policy(self, policy: FlowPolicy) -> None:
        self._flows[policy.flow] = policy

    def remove_flow_policy(self, flow: FiveTuple) -> None:
        self._flows.pop(flow, None)

    def install_socket_policy(self, policy: SocketPolicy) -> None:
        self.socket_policies[policy.socket_id] = policy

    def remove_socket_policy(self, socket_id: int) -> None:
        self.socket_policies.pop(socket_id, None)

    def reset(self) -> None:
        self.sas.clear()
        self._flows.clear()
        self.socket_policies.clear()
