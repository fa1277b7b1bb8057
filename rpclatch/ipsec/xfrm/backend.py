"""The Linux kernel datapath: :class:`XfrmBackend` mirrors the engine's decisions into XFRM.

Approach 2 of docs/design.md (RFC 5660 §2.3 "logical SPD update" done by the kernel): every
latched flow gets exact-5-tuple policies (in and out) above the configured ones, whose single ESP
template carries the reqid of the peer's SAs, so no other peer's SA can carry the flow and
plaintext on it is dropped inbound (XfrmInTmplMismatch). It implements
:class:`rpclatch.ipsec.backend.Backend` on :mod:`rpclatch.ipsec.xfrm.netlink` (the kernel
interface is ``<linux/xfrm.h>``); :class:`XfrmEventReader` feeds the kernel's ACQUIRE and EXPIRE
events back to the engine.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import logging
import os
import socket
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import IntEnum
from types import MappingProxyType
from typing import Protocol

from rpclatch.ipsec.backend import Backend, FlowPolicy, SocketPolicy
from rpclatch.ipsec.model import (
    AddressRange,
    FiveTuple,
    IPAddress,
    Mode,
    PortRange,
    ProtectionPolicy,
    SecurityProtocol,
)
from rpclatch.ipsec.model import Selector as TrafficSelector
from rpclatch.ipsec.sad import SecurityAssociation, narrow_flow
from rpclatch.ipsec.spd import EntryOrigin, SpdAction, SpdEntry
from rpclatch.ipsec.xfrm.netlink import (
    AF_INET,
    AF_INET6,
    DEFAULT_TIMEOUT,
    IP_XFRM_POLICY,
    IPPROTO_AH,
    IPPROTO_ESP,
    IPV6_XFRM_POLICY,
    Acquire,
    Action,
    AeadAlgo,
    Dir,
    Expire,
    Lifetime,
    PolicyId,
    PolicyInfo,
    Sa,
    SaId,
    SaInfo,
    Selector,
    Template,
    XfrmError,
    XfrmEventSocket,
    XfrmId,
    XfrmSocket,
    XMode,
    encode_templates,
    family_of,
)

log = logging.getLogger(__name__)

#: kernel priority of per-flow policies (lower value = preferred): 0, the highest there is, so that
#: no policy of a lower precedence takes a latched 5-tuple out of its SAs (RFC 5660 §2.3: a latched
#: flow stays pinned or breaks, never goes to the clear). Another policy at 0 (``ip xfrm policy
#: add``'s default) ties, and kernels differ on which of equals wins: nothing here watches for it
FLOW_PRIORITY = 0
#: kernel priority of a narrow SA's own policies (the same: they pin the latched 5-tuple too)
SA_PRIORITY = 0
#: kernel priority of the first mirrored configured SPD entry
SPD_PRIORITY = 1000
AEAD_NAME = "rfc4106(gcm(aes))"
#: the kernel's ESP ChaCha20-Poly1305 (RFC 7634)
CHACHA_AEAD_NAME = "rfc7539esp(chacha20,poly1305)"
#: suite encryption -> (kernel AEAD template, ICV bits)
_AEADS = {
    "aes-gcm-8": (AEAD_NAME, 64),
    "aes-gcm-12": (AEAD_NAME, 96),
    "aes-gcm-16": (AEAD_NAME, 128),
    "chacha20-poly1305": (CHACHA_AEAD_NAME, 128),
}
#: RFC 4106 §8.1, RFC 7634 §2: the key material carries a 4-byte salt after the cipher key
_SALT = 4
_SA_PROTECTION = ProtectionPolicy()  # ESP transport: what a narrow SA's own policies ask for


class XfrmUnsupported(XfrmError):
    """The engine asked for something this backend cannot express in XFRM."""


class KeySource(Protocol):
    def key(self, sa: SecurityAssociation, spi: int, dst: IPAddress, nbytes: int) -> bytes:
        """``nbytes`` of key material for the SA direction (``spi``, ``dst``)."""


@dataclass(frozen=True, slots=True)
class DerivedKeys:
    """Static keying for tests and demos: key = HMAC-SHA256 expansion of ``secret`` over the SA
    direction's (destination, SPI). Both ends derive the same key for the same direction, as long
    as one end's outbound SPI is the other's inbound SPI."""

    secret: bytes

    def key(self, sa: SecurityAssociation, spi: int, dst: IPAddress, nbytes: int) -> bytes:
        label = b"rpclatch-xfrm" + dst.packed + spi.to_bytes(4, "big")
        out = b""
        block = b""
        counter = 1
        while len(out) < nbytes:
            block = hmac.new(self.secret, block + label + bytes([counter]), hashlib.sha256).digest()
            out += block
            counter += 1
        return out[:nbytes]


class EngineEvents(Protocol):
    """What :class:`XfrmEventReader` calls (``IPsecEngine`` has both)."""

    def backend_acquire(self, flow: FiveTuple, now: float) -> None: ...

    def backend_expire(self, sa_id: int, hard: bool, now: float) -> None: ...


# ---------------------------------------------------------------------------------------------
# selector translation


def _prefix(rng: AddressRange | None, family: int) -> list[tuple[IPAddress, int]]:
    """An address range as (network address, prefix length) pairs; None = any."""
    if rng is None:
        zero: IPAddress = ipaddress.IPv4Address(0) if family == AF_INET else ipaddress.IPv6Address(0)
        return [(zero, 0)]
    return [(n.network_address, n.prefixlen) for n in ipaddress.summarize_address_range(rng.first, rng.last)]


def _port(rng: PortRange) -> tuple[int, int]:
    if rng.is_any:
        return 0, 0
    if rng.is_single:
        return rng.low, 0xFFFF
    raise XfrmUnsupported(f"port range {rng} has no XFRM selector (single port or any only)")


def _families(sel: TrafficSelector) -> list[int]:
    for rng in (sel.local, sel.remote):
        if rng is not None:
            return [AF_INET if rng.version == 4 else AF_INET6]
    return [AF_INET, AF_INET6]


def xfrm_selectors(sel: TrafficSelector, *, outbound: bool) -> list[Selector]:
    """The XFRM selectors (src -> dst) covering a local-oriented traffic selector exactly, for
    outbound (src = local) or inbound (src = remote) packets. Raises XfrmUnsupported."""
    out: list[Selector] = []
    lport, lmask = _port(sel.local_ports)
    rport, rmask = _port(sel.remote_ports)
    for fam in _families(sel):
        for laddr, lplen in _prefix(sel.local, fam):
            for raddr, rplen in _prefix(sel.remote, fam):
                if outbound:
                    out.append(
                        Selector(raddr, laddr, fam, rplen, lplen, sel.proto or 0, rport, rmask, lport, lmask)
                    )
                else:
                    out.append(
                        Selector(laddr, raddr, fam, lplen, rplen, sel.proto or 0, lport, lmask, rport, rmask)
                    )
    return out


def flow_selector(flow: FiveTuple, *, outbound: bool) -> Selector:
    """The exact selector of a flow's outbound or inbound packets (port 0 = any port)."""
    if outbound:
        return Selector.exact(
            flow.local_addr, flow.local_port, flow.remote_addr, flow.remote_port, flow.proto
        )
    return Selector.exact(flow.remote_addr, flow.remote_port, flow.local_addr, flow.local_port, flow.proto)


def acquire_flow(acq: Acquire) -> FiveTuple:
    """The local-oriented 5-tuple of an ACQUIRE (outbound policies: local = source)."""
    sel = acq.sel
    if acq.policy.dir == Dir.IN:
        return FiveTuple(sel.daddr, sel.dport, sel.saddr, sel.sport, sel.proto)
    return FiveTuple(sel.saddr, sel.sport, sel.daddr, sel.dport, sel.proto)


def _sa_selector(sa: SecurityAssociation, *, outbound: bool) -> Selector:
    fam = family_of(sa.local_addr)
    if len(sa.traffic_selectors) == 1:
        try:
            sels = xfrm_selectors(sa.traffic_selectors[0], outbound=outbound)
        except XfrmUnsupported:
            sels = []
        if len(sels) == 1 and sels[0].family == fam:
            return sels[0]
    return Selector.any(fam)


# ---------------------------------------------------------------------------------------------
# the backend


class _Layer(IntEnum):
    """Who wants a kernel policy on a (selector, direction); the lowest value wins."""

    FLOW = 0
    SA = 1
    SPD = 2


_Key = tuple[Selector, int]
_Want = tuple[PolicyInfo, tuple[Template, ...]]


@dataclass(frozen=True, slots=True)
class _InstalledSa:
    out: SaId
    inb: SaId
    policies: tuple[_Key, ...]


@dataclass(frozen=True, slots=True)
class _SocketRecord:
    fd: int
    inode: int
    ipv6: bool


@dataclass
class _Tracked:
    sas: dict[int, _InstalledSa] = field(default_factory=dict)
    by_spi: dict[tuple[IPAddress, int], int] = field(default_factory=dict)
    flows: dict[FiveTuple, tuple[_Key, ...]] = field(default_factory=dict)
    flow_policies: dict[FiveTuple, FlowPolicy] = field(default_factory=dict)
    spd: list[_Key] = field(default_factory=list)
    sockets: dict[int, _SocketRecord] = field(default_factory=dict)
    #: sequence number of the kernel's last ACQUIRE per flow (see XfrmBackend.acquired)
    acquire_seq: dict[FiveTuple, int] = field(default_factory=dict)
    #: wanted policies by (selector, dir) and (layer, owner): owner is the SA's -sa_id in the SA
    #: layer (newest SA first), else 0; ``in_kernel`` is what the kernel holds (from us)
    want: dict[_Key, dict[tuple[_Layer, int], _Want]] = field(default_factory=dict)
    in_kernel: dict[_Key, _Want] = field(default_factory=dict)


class XfrmBackend(Backend):
    """The engine's datapath in the Linux kernel of network namespace ``netns`` (a name under
    /var/run/netns, a path, or None for the caller's). Not thread-safe: use from one thread at a
    time. Each kernel request waits at most ``netlink_timeout`` seconds for an answer, then raises
    XfrmTimeout (an XfrmError).

    How each :class:`~rpclatch.ipsec.backend.Backend` call maps onto xfrm_user netlink:

    =====================================  ====================================================
    Backend call                           xfrm_user netlink
    =====================================  ====================================================
    ``install_sa(sa)``                     two XFRM_MSG_NEWSA (in: daddr=local, spi=spi_in;
                                           out: daddr=remote, spi=spi_out), ``reqid=sa.reqid``,
                                           selector = the SA's traffic selector (one SA pair
                                           per selector), mode transport, aead
                                           rfc4106(gcm(aes))
    ``remove_sa(sa)``                      XFRM_MSG_DELSA for both SPIs
    ``install_flow_policy(policy)``        XFRM_MSG_NEWPOLICY dir OUT and IN with an exact
                                           5-tuple selector (prefixlen 32/128, sport/dport
                                           masks 0xffff, proto), priority 0 (above the
                                           configured policies and any of lower precedence);
                                           PROTECT: one ``xfrm_user_tmpl`` with
                                           ``reqid`` = the latched SA's reqid (pins the flow to
                                           that peer's SAs: no other SA matches the template);
                                           BYPASS: action ALLOW without templates; DISCARD:
                                           action BLOCK
    ``remove_flow_policy(flow)``           XFRM_MSG_DELPOLICY for the same selectors and
                                           directions
    ``install_spd(entries)``               the configured SPD mirrored as policies below the
                                           flow policies (first match wins: priority by
                                           position), so a flow whose flow policy goes away
                                           falls back to it
    ``install_socket_policy(policy)``      setsockopt(IP_XFRM_POLICY / IPV6_XFRM_POLICY) on
                                           the socket, in and out, with an
                                           ``xfrm_userpolicy_info`` + one template (reqid
                                           pinned if given); BYPASS = a per-socket ALLOW
                                           policy without templates. Used for a flow decided
                                           before the socket is bound/connected (the kernel's
                                           ACQUIRE has sport 0 until then)
    ``remove_socket_policy(socket_id)``    setsockopt with an empty policy, or close the socket
    =====================================  ====================================================

    Scope and choices:

    - SAs are ESP transport mode with an AEAD suite ``aes-gcm-8/12/16`` -> ``rfc4106(gcm(aes))``
      or ``chacha20-poly1305`` -> ``rfc7539esp(chacha20,poly1305)``;
      the keys come from a :class:`KeySource` (the engine's SAs carry no key material);
    - the SA's XFRM selector is its traffic selector when it has exactly one that XFRM can
      express (prefixes, single or any port), else "any" (the pinned per-flow policies still
      decide);
    - like an IKE daemon, a *narrow* SA pair (RFC 5660 §2.1: one 5-tuple) also gets that
      5-tuple's policies pinned to its reqid (``sa_priority``), so the responder answers the flow
      (SYN-ACK) before its ULP latches it: the kernel's outbound SA lookup needs the template's
      reqid to equal the SA's (reqid 0 in a template means "any" only inbound);
    - the kernel keys policies by selector and direction, not priority: a per-flow policy on the
      same selector as a narrow SA's (or a mirrored SPD entry's) replaces it. The backend keeps
      the layers (flow > SA > configured SPD) per (selector, direction) and puts the top one in
      the kernel, so removing a flow policy restores what lies below it;
    - everything it installs is tracked, and :meth:`reset` removes exactly that (never a flush:
      other daemons' state in the namespace stays);
    - :meth:`install_spd` mirrors configured SPD entries as kernel policies at ``spd_priority +
      position`` (first match wins like RFC 4301 §4.4.1), so that a flow whose per-flow policy
      goes away falls back to the configured treatment, never to the kernel default (no policy =
      clear text);
    - socket policies: ``SocketPolicy.socket_id`` is the socket's file descriptor in this process.

    What XFRM cannot do and how approach 2 copes: there is no per-packet SA tag delivered to TCP
    sockets (approach 1 needs one), so on Linux the latch is enforced by the pinned per-5-tuple
    policy (inbound: the template reqid check drops packets from other peers' SAs;
    XfrmInTmplMismatch drops plaintext), and BROKEN is acted on in two steps: the engine replaces
    the flow's pinned policy by an exact-5-tuple DISCARD one in both directions (XFRM action
    BLOCK: nothing of the flow is sent or accepted, RFC 5660 §2.3) before the holder is ALERTed
    -- re-pinned if the latch is ESTABLISHED again, removed when it ends -- and the ULP resets
    the TCP connection from user space (RFC 5660 §5.5 disposition).
    """

    def __init__(
        self,
        netns: str | None,
        keys: KeySource,
        *,
        flow_priority: int = FLOW_PRIORITY,
        sa_priority: int = SA_PRIORITY,
        spd_priority: int = SPD_PRIORITY,
        netlink_timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self.netns = netns
        self.keys = keys
        self.flow_priority = flow_priority
        self.sa_priority = sa_priority
        self.spd_priority = spd_priority
        self.nl = XfrmSocket(netns, timeout=netlink_timeout)
        self._t = _Tracked()

    def close(self) -> None:
        """Remove everything this backend installed (dynamic state and the SPD mirror)."""
        try:
            self.reset()
            self.clear_spd()
        finally:
            self.nl.close()

    # -- queries -----------------------------------------------------------------------------

    def acquired(self, flow: FiveTuple, seq: int) -> None:
        """The kernel ACQUIREd ``flow`` with sequence number ``seq`` (XfrmEventReader calls this
        before the engine hears of it). The outbound SA of the narrow SA pair later installed for
        the flow carries ``seq``, so the kernel replaces its larval (acquire) state with it at once;
        otherwise the larval state would swallow the flow's next ACQUIREs for
        net.core.xfrm_acq_expires seconds (e.g. after the SA expires)."""
        if len(self._t.acquire_seq) >= 4096:  # bounded: flows that never got an SA
            self._t.acquire_seq.clear()
        self._t.acquire_seq[flow] = seq

    def sa_id_for(self, daddr: IPAddress, spi: int) -> int | None:
        """The engine's sa_id of an installed SA direction (daddr, SPI)."""
        return self._t.by_spi.get((daddr, spi))

    @property
    def installed_sas(self) -> frozenset[int]:
        return frozenset(self._t.sas)

    @property
    def installed_flows(self) -> frozenset[FiveTuple]:
        return frozenset(self._t.flows)

    @property
    def flow_policies(self) -> Mapping[FiveTuple, FlowPolicy]:
        """The per-flow policies installed, as the engine gave them (a read-only live view)."""
        return MappingProxyType(self._t.flow_policies)

    @property
    def installed_sockets(self) -> frozenset[int]:
        return frozenset(self._t.sockets)

    # -- layered kernel policies ---------------------------------------------------------------

    def _sync(self, key: _Key) -> None:
        layers = self._t.want.get(key)
        top = layers[min(layers)] if layers else None
        current = self._t.in_kernel.get(key)
        if not layers:
            self._t.want.pop(key, None)
        if top == current:
            return
        if top is None:
            self._t.in_kernel.pop(key, None)
            self.nl.delete_policy(PolicyId(key[0], key[1]))
        else:
            self.nl.add_policy(top[0], top[1], update=True)
            self._t.in_kernel[key] = top

    def _put(self, layer: _Layer, info: PolicyInfo, tmpls: Iterable[Template], owner: int = 0) -> _Key:
        key = (info.sel, info.dir)
        self._t.want.setdefault(key, {})[(layer, owner)] = (info, tuple(tmpls))
        self._sync(key)
        return key

    def _drop(self, layer: _Layer, key: _Key, owner: int = 0) -> None:
        layers = self._t.want.get(key)
        if layers is not None:
            layers.pop((layer, owner), None)
        self._sync(key)

    # -- SAs ---------------------------------------------------------------------------------

    def install_sa(self, sa: SecurityAssociation) -> None:
        params = sa.params
        if params.protocol is not SecurityProtocol.ESP or params.mode is not Mode.TRANSPORT:
            raise XfrmUnsupported(f"{sa}: only ESP transport mode is supported")
        suite = params.suite
        aead = _AEADS.get(suite.encryption or "")
        if aead is None or suite.integrity is not None:
            raise XfrmUnsupported(
                f"{sa}: suite {suite} (only AES-GCM, RFC 4106, or ChaCha20-Poly1305, RFC 7634)"
            )
        aead_name, icv = aead
        nbytes = suite.encryption_key_bits // 8 + _SALT
        lft = Lifetime(
            soft_add_expires_seconds=int(sa.lifetime.soft_seconds or 0),
            hard_add_expires_seconds=int(sa.lifetime.hard_seconds or 0),
        )
        fam = family_of(sa.local_addr)
        window = min(params.replay_window, 32)
        if sa.sa_id in self._t.sas:
            self.remove_sa(sa)
        flow = narrow_flow(sa)
        seq = 0 if flow is None else self._t.acquire_seq.pop(flow, 0)
        out = SaInfo(
            _sa_selector(sa, outbound=True),
            XfrmId(sa.remote_addr, sa.spi_out),
            sa.local_addr,
            fam,
            sa.reqid,
            XMode.TRANSPORT,
            window,
            seq=seq,
            lft=lft,
        )
        inb = SaInfo(
            _sa_selector(sa, outbound=False),
            XfrmId(sa.local_addr, sa.spi_in),
            sa.remote_addr,
            fam,
            sa.reqid,
            XMode.TRANSPORT,
            window,
            lft=lft,
        )
        key_out = self.keys.key(sa, sa.spi_out, sa.remote_addr, nbytes)
        key_in = self.keys.key(sa, sa.spi_in, sa.local_addr, nbytes)
        # The order never lets a packet of the flow out in the clear nor trips an ACQUIRE: the
        # outbound SA first (nothing uses it yet), then the pinned policies (OUT finds its SA;
        # IN refuses cleartext), the inbound SA last (until then the peer's ESP is dropped as
        # an unknown SPI). Removal runs in the opposite order.
        self.nl.add_sa(out, AeadAlgo(aead_name, key_out, icv))
        keys: list[_Key] = []
        try:
            if flow is not None:
                entry = SpdEntry.flow_entry(flow, SpdAction.PROTECT, _SA_PROTECTION, EntryOrigin.CONFIGURED)
                for direction, outbound in ((Dir.OUT, True), (Dir.IN, False)):
                    sel = flow_selector(flow, outbound=outbound)
                    info, tmpls = self._entry_policy(entry, sa.reqid, sel, direction, self.sa_priority)
                    keys.append(self._put(_Layer.SA, info, tmpls, -sa.sa_id))
            self.nl.add_sa(inb, AeadAlgo(aead_name, key_in, icv))
        except XfrmError:
            for key in keys:
                self._drop(_Layer.SA, key, -sa.sa_id)
            self.nl.delete_sa(SaId(sa.remote_addr, sa.spi_out))
            raise
        self._t.sas[sa.sa_id] = _InstalledSa(
            SaId(sa.remote_addr, sa.spi_out), SaId(sa.local_addr, sa.spi_in), tuple(keys)
        )
        self._t.by_spi[(sa.remote_addr, sa.spi_out)] = sa.sa_id
        self._t.by_spi[(sa.local_addr, sa.spi_in)] = sa.sa_id

    def remove_sa(self, sa: SecurityAssociation) -> None:
        rec = self._t.sas.pop(sa.sa_id, None)
        if rec is None:
            return
        for sid in (rec.out, rec.inb):
            self._t.by_spi.pop((sid.daddr, sid.spi), None)
        self.nl.delete_sa(rec.inb)
        for key in rec.policies:
            self._drop(_Layer.SA, key, -sa.sa_id)
        self.nl.delete_sa(rec.out)

    # -- per-flow policies ---------------------------------------------------------------------

    def _entry_policy(
        self, entry: SpdEntry, reqid: int | None, sel: Selector, direction: Dir, priority: int
    ) -> tuple[PolicyInfo, list[Template]]:
        tmpls: list[Template] = []
        action = Action.ALLOW
        if entry.action is SpdAction.DISCARD:
            action = Action.BLOCK
        elif entry.action in (SpdAction.PROTECT, SpdAction.BYPASS_OR_PROTECT):
            prot = entry.protection
            assert prot is not None
            if prot.mode is not Mode.TRANSPORT:
                raise XfrmUnsupported(f"SPD entry {entry.name!r}: only transport mode is supported")
            proto = IPPROTO_ESP if prot.protocol is SecurityProtocol.ESP else IPPROTO_AH
            optional = entry.action is SpdAction.BYPASS_OR_PROTECT
            tmpl = Template.esp(sel.saddr, sel.daddr, reqid or 0, optional=optional)
            tmpls.append(
                Template(
                    XfrmId(sel.daddr, 0, proto), tmpl.family, tmpl.saddr, tmpl.reqid, optional=tmpl.optional
                )
            )
        return PolicyInfo(sel, direction, action, priority), tmpls

    def install_flow_policy(self, policy: FlowPolicy) -> None:
        flow = policy.flow
        keys: list[_Key] = []
        for direction, outbound in ((Dir.OUT, True), (Dir.IN, False)):
            sel = flow_selector(flow, outbound=outbound)
            info, tmpls = self._entry_policy(policy.entry, policy.reqid, sel, direction, self.flow_priority)
            keys.append(self._put(_Layer.FLOW, info, tmpls))
        self._t.flows[flow] = tuple(keys)
        self._t.flow_policies[flow] = policy

    def remove_flow_policy(self, flow: FiveTuple) -> None:
        self._t.flow_policies.pop(flow, None)
        for key in self._t.flows.pop(flow, ()):
            self._drop(_Layer.FLOW, key)

    # -- configured SPD mirror ------------------------------------------------------------------

    def install_spd(self, entries: Iterable[SpdEntry]) -> None:
        """Mirror configured SPD entries (replacing the previous mirror), in order. Raises
        XfrmUnsupported (before touching the kernel) for an entry XFRM cannot express."""
        wanted: dict[_Key, tuple[PolicyInfo, list[Template]]] = {}
        prio = self.spd_priority
        for entry in entries:
            for tsel in entry.selectors:
                for direction, outbound in ((Dir.OUT, True), (Dir.IN, False)):
                    for sel in xfrm_selectors(tsel, outbound=outbound):
                        if (sel, direction) in wanted:
                            continue  # an earlier entry has this selector: first match wins
                        wanted[(sel, direction)] = self._entry_policy(entry, None, sel, direction, prio)
            prio += 1
        self.clear_spd()
        for info, tmpls in wanted.values():
            self._t.spd.append(self._put(_Layer.SPD, info, tmpls))

    def clear_spd(self) -> None:
        spd, self._t.spd = self._t.spd, []
        for key in spd:
            self._drop(_Layer.SPD, key)

    # -- per-socket policies ---------------------------------------------------------------------

    def install_socket_policy(self, policy: SocketPolicy) -> None:
        fd = policy.socket_id
        flow = policy.flow
        ipv6 = flow.local_addr.version == 6
        with socket.socket(fileno=os.dup(fd)) as sock:
            level, opt = (
                (socket.IPPROTO_IPV6, IPV6_XFRM_POLICY) if ipv6 else (socket.IPPROTO_IP, IP_XFRM_POLICY)
            )
            for direction, outbound in ((Dir.IN, False), (Dir.OUT, True)):
                # socket policies apply to every packet of the socket: the selector is "any"
                tsel = flow_selector(flow, outbound=outbound)
                info, tmpls = self._entry_policy(policy.entry, policy.reqid, tsel, direction, 0)
                any_sel = Selector.any(tsel.family)
                raw = PolicyInfo(any_sel, direction, info.action).encode() + encode_templates(tmpls)
                sock.setsockopt(level, opt, raw)
            inode = os.fstat(fd).st_ino
        self._t.sockets[fd] = _SocketRecord(fd, inode, ipv6)

    def remove_socket_policy(self, socket_id: int) -> None:
        rec = self._t.sockets.pop(socket_id, None)
        if rec is None:
            return
        try:
            if os.fstat(rec.fd).st_ino != rec.inode:
                return  # the socket was closed (its policy went with it); the fd is reused
            with socket.socket(fileno=os.dup(rec.fd)) as sock:
                level, opt = (
                    (socket.IPPROTO_IPV6, IPV6_XFRM_POLICY)
                    if rec.ipv6
                    else (socket.IPPROTO_IP, IP_XFRM_POLICY)
                )
                sock.setsockopt(level, opt, None, 0)  # NULL/0 clears both directions
        except OSError as exc:
            log.info("socket policy of fd %d not removed (socket gone?): %s", rec.fd, exc)

    # -- reset -------------------------------------------------------------------------------

    def reset(self) -> None:
        """Remove every SA, per-flow and per-socket policy this backend installed (and nothing
        else). The configured SPD mirror stays (see :meth:`clear_spd`)."""
        for flow in list(self._t.flows):
            self.remove_flow_policy(flow)
        for fd in list(self._t.sockets):
            self.remove_socket_policy(fd)
        for sa_id, rec in list(self._t.sas.items()):
            for key in rec.policies:
                self._drop(_Layer.SA, key, -sa_id)
            for sid in (rec.out, rec.inb):
                self.nl.delete_sa(sid)
        self._t.sas.clear()
        self._t.by_spi.clear()


# ---------------------------------------------------------------------------------------------
# captures


_WIRESHARK_GCM = {
    64: "AES-GCM with 8 octet ICV [RFC4106]",
    96: "AES-GCM with 12 octet ICV [RFC4106]",
    128: "AES-GCM with 16 octet ICV [RFC4106]",
}


def esp_sa_uat_rows(sas: Iterable[Sa]) -> list[str]:
    """Wireshark ``esp_sa`` UAT rows for kernel SAs (from :meth:`XfrmSocket.sas`, whose dump carries
    the keys), so a capture of our ESP can be decrypted: ``tshark -o
    esp.enable_encryption_decode:TRUE -o uat:esp_sa:<row> ...``. SAs without AES-GCM are skipped
    (the Wireshark 4.0 of Debian 12 cannot decrypt ESP ChaCha20-Poly1305)."""
    rows = []
    for sa in sas:
        if sa.aead is None or sa.aead.name != AEAD_NAME or sa.aead.icv_bits not in _WIRESHARK_GCM:
            continue
        info = sa.info
        proto = "IPv4" if info.family == AF_INET else "IPv6"
        rows.append(
            f'"{proto}","{info.saddr}","{info.id.daddr}","0x{info.id.spi:08x}",'
            f'"{_WIRESHARK_GCM[sa.aead.icv_bits]}","0x{sa.aead.key.hex()}","NULL",""'
        )
    return rows


# ---------------------------------------------------------------------------------------------
# kernel events


class XfrmEventReader:
    """Reads XFRM ACQUIRE / EXPIRE multicasts in the backend's namespace and calls the engine.
    ``clock`` gives the engine's ``now``. Call :meth:`pump` when :meth:`fileno` is readable (or
    :meth:`attach` it to an asyncio loop). Malformed messages are logged and skipped.

    XFRMNLGRP_ACQUIRE (XFRM_MSG_ACQUIRE) becomes ``engine.backend_acquire(flow, now)``; the kernel
    reports sport 0 unless the socket was bound first. XFRMNLGRP_EXPIRE (XFRM_MSG_EXPIRE, hard
    flag) becomes ``engine.backend_expire(sa_id, hard, now)``."""

    def __init__(self, backend: XfrmBackend, engine: EngineEvents, clock: Callable[[], float]) -> None:
        self.backend = backend
        self.engine = engine
        self.clock = clock
        self.events = XfrmEventSocket(backend.netns)
        self.delivered = 0

    def fileno(self) -> int:
        return self.events.fileno()

    def close(self) -> None:
        self.events.close()

    def pump(self) -> int:
        """Deliver what is queued; returns how many events reached the engine."""
        notes = self.events.receive()
        count = 0
        for note in notes:
            now = self.clock()
            if isinstance(note, Acquire):
                try:
                    flow = acquire_flow(note)
                except ValueError as exc:
                    log.warning("xfrm ACQUIRE with an unusable selector dropped: %s", exc)
                    continue
                self.backend.acquired(flow, note.seq)
                self.engine.backend_acquire(flow, now)
                count += 1
            elif isinstance(note, Expire):
                sa_id = self.backend.sa_id_for(note.state.id.daddr, note.state.id.spi)
                if sa_id is not None:
                    self.engine.backend_expire(sa_id, note.hard, now)
                    count += 1
        self.delivered += count
        return count

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        loop.add_reader(self.fileno(), self.pump)

    def detach(self, loop: asyncio.AbstractEventLoop) -> None:
        loop.remove_reader(self.fileno())
