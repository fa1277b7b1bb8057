"""The datapath backend interface: where SAs and per-flow policies are pushed.

The engine (:mod:`rpclatch.ipsec.engine`) is the policy brain; a :class:`Backend` is the datapath
that must mirror its decisions (RFC 4301 SAD and SPD, plus the per-flow policies of approach 2 in
docs/design.md). Two implementations: :class:`InProcessBackend` here, for the simulated network,
and :class:`rpclatch.ipsec.xfrm.backend.XfrmBackend`, the Linux kernel via xfrm_user netlink,
whose docstring maps every call onto XFRM.
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
    """Datapath interface (what each call is in the Linux kernel: :class:`XfrmBackend
    <rpclatch.ipsec.xfrm.backend.XfrmBackend>`)."""

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
