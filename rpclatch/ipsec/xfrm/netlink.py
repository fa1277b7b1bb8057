"""xfrm_user (NETLINK_XFRM) messages and sockets.

pyroute2 0.9.7 has no xfrm_user support, so the C structs of ``<linux/xfrm.h>`` are written here as
frozen dataclasses with ``encode()`` / ``decode()`` (layouts of the LP64 ABI; sizes asserted at
import). :class:`XfrmSocket` sends them as requests on a plain netlink socket (sequence numbers,
ACKs, multi-part dumps, kernel errnos as :class:`XfrmKernelError`, a timeout per request as
:class:`XfrmTimeout`). Multicast events (ACQUIRE, EXPIRE) are read by :class:`XfrmEventSocket` and
decoded by :func:`decode_datagram`, which takes any bytes and either decodes them or raises
:class:`XfrmDecodeError`. Both sockets are made in their network namespace by
:func:`rpclatch.ipsec.xfrm.netns.open_socket` (no fork()).

Reference: include/uapi/linux/xfrm.h, include/uapi/linux/netlink.h; net/xfrm/xfrm_user.c.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import math
import socket
import struct
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, TypeVar

from rpclatch.ipsec.model import IPAddress
from rpclatch.ipsec.xfrm.errors import XfrmDecodeError as XfrmDecodeError
from rpclatch.ipsec.xfrm.errors import XfrmError as XfrmError
from rpclatch.ipsec.xfrm.errors import XfrmKernelError as XfrmKernelError
from rpclatch.ipsec.xfrm.errors import XfrmTimeout as XfrmTimeout
from rpclatch.ipsec.xfrm.netns import open_socket

log = logging.getLogger(__name__)
_T = TypeVar("_T")

AF_INET = socket.AF_INET
AF_INET6 = socket.AF_INET6
#: "no limit" for lifetime byte/packet counters (XFRM_INF)
XFRM_INF = 2**64 - 1
IPPROTO_ESP = 50
IPPROTO_AH = 51
#: <linux/in.h> / <linux/in6.h> socket options for per-socket policies
IP_XFRM_POLICY = 17
IPV6_XFRM_POLICY = 35
NLMSG_HDR = struct.Struct("=IHHII")
NLA_HDR = struct.Struct("=HH")
#: <linux/netlink.h>
NETLINK_XFRM = 6
NLMSG_NOOP = 1
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLMSG_OVERRUN = 4
NLM_F_REQUEST = 0x1
NLM_F_MULTI = 0x2
NLM_F_ACK = 0x4
NLM_F_DUMP = 0x300
NLM_F_CREATE = 0x400
_NLMSGERR = struct.Struct("=i")
#: seconds the kernel may stay silent during one request before XfrmTimeout (see XfrmSocket)
DEFAULT_TIMEOUT = 5.0
#: receive buffer for one datagram: netlink dumps use at most 32 KiB skbs, replies are smaller
_RECV_SIZE = 65536
#: bound on attributes decoded from one message (bad input must not cost unbounded work)
MAX_NLAS = 64


class MsgType(IntEnum):
    """XFRM_MSG_* (xfrm.h)."""

    NEWSA = 0x10
    DELSA = 0x11
    GETSA = 0x12
    NEWPOLICY = 0x13
    DELPOLICY = 0x14
    GETPOLICY = 0x15
    ALLOCSPI = 0x16
    ACQUIRE = 0x17
    EXPIRE = 0x18
    UPDPOLICY = 0x19
    UPDSA = 0x1A
    POLEXPIRE = 0x1B
    FLUSHSA = 0x1C
    FLUSHPOLICY = 0x1D


class Group(IntEnum):
    """XFRMNLGRP_* multicast groups."""

    ACQUIRE = 1
    EXPIRE = 2
    SA = 3
    POLICY = 4


class Dir(IntEnum):
    IN = 0
    OUT = 1
    FWD = 2


class Action(IntEnum):
    ALLOW = 0
    BLOCK = 1


class XMode(IntEnum):
    TRANSPORT = 0
    TUNNEL = 1


class Attr(IntEnum):
    """XFRMA_* attribute types used here."""

    ALG_AUTH = 1
    ALG_CRYPT = 2
    TMPL = 5
    ALG_AEAD = 18
    MARK = 21


# ---------------------------------------------------------------------------------------------
# addresses


def _addr_bytes(addr: IPAddress | None) -> bytes:
    return bytes(16) if addr is None else addr.packed.ljust(16, b"\0")


def _addr_from(raw: bytes, family: int) -> IPAddress:
    if family == AF_INET:
        return ipaddress.IPv4Address(raw[:4])
    return ipaddress.IPv6Address(raw)


def family_of(addr: IPAddress) -> int:
    return AF_INET if addr.version == 4 else AF_INET6


def _unpack(st: struct.Struct, data: bytes, offset: int, what: str) -> tuple[Any, ...]:
    if len(data) < offset + st.size:
        raise XfrmDecodeError(f"{what}: {len(data) - offset} bytes, need {st.size}")
    return st.unpack_from(data, offset)


# ---------------------------------------------------------------------------------------------
# structs


_SEL_A = struct.Struct("!16s16sHHHH")  # daddr, saddr, dport, dport_mask, sport, sport_mask (be16)
_SEL_B = struct.Struct("=HBBB3xiI")  # family, prefixlen_d, prefixlen_s, proto, ifindex, user


@dataclass(frozen=True, slots=True)
class Selector:
    """``struct xfrm_selector`` (56 bytes). Addresses in the selector's family."""

    daddr: IPAddress
    saddr: IPAddress
    family: int
    prefixlen_d: int = 0
    prefixlen_s: int = 0
    proto: int = 0
    dport: int = 0
    dport_mask: int = 0
    sport: int = 0
    sport_mask: int = 0
    ifindex: int = 0
    user: int = 0

    SIZE = 56

    @classmethod
    def exact(cls, src: IPAddress, sport: int, dst: IPAddress, dport: int, proto: int) -> Selector:
        """An exact 5-tuple selector (full prefixes, ports masked 0xffff when non-zero)."""
        plen = 32 if src.version == 4 else 128
        return cls(
            dst,
            src,
            family_of(src),
            plen,
            plen,
            proto,
            dport,
            0xFFFF if dport else 0,
            sport,
            0xFFFF if sport else 0,
        )

    @classmethod
    def any(cls, family: int = AF_INET) -> Selector:
        zero: IPAddress = ipaddress.IPv4Address(0) if family == AF_INET else ipaddress.IPv6Address(0)
        return cls(zero, zero, family)

    def encode(self) -> bytes:
        return _SEL_A.pack(
            _addr_bytes(self.daddr),
            _addr_bytes(self.saddr),
            self.dport,
            self.dport_mask,
            self.sport,
            self.sport_mask,
        ) + _SEL_B.pack(self.family, self.prefixlen_d, self.prefixlen_s, self.proto, self.ifindex, self.user)

    @classmethod
    def decode(cls, data: bytes, offset: int = 0) -> Selector:
        d, s, dp, dpm, sp, spm = _unpack(_SEL_A, data, offset, "xfrm_selector")
        fam, pld, pls, proto, ifindex, user = _unpack(_SEL_B, data, offset + _SEL_A.size, "xfrm_selector")
        return cls(
            _addr_from(d, fam), _addr_from(s, fam), fam, pld, pls, proto, dp, dpm, sp, spm, ifindex, user
        )


_LFT = struct.Struct("=12Q")  # xfrm_lifetime_cfg (8 x u64) + xfrm_lifetime_cur (4 x u64)


@dataclass(frozen=True, slots=True)
class Lifetime:
    """``struct xfrm_lifetime_cfg`` + ``xfrm_lifetime_cur`` (64 + 32 bytes)."""

    soft_byte_limit: int = XFRM_INF
    hard_byte_limit: int = XFRM_INF
    soft_packet_limit: int = XFRM_INF
    hard_packet_limit: int = XFRM_INF
    soft_add_expires_seconds: int = 0
    hard_add_expires_seconds: int = 0
    soft_use_expires_seconds: int = 0
    hard_use_expires_seconds: int = 0
    cur_bytes: int = 0
    cur_packets: int = 0
    cur_add_time: int = 0
    cur_use_time: int = 0

    SIZE = 96

    def encode(self) -> bytes:
        return _LFT.pack(
            self.soft_byte_limit,
            self.hard_byte_limit,
            self.soft_packet_limit,
            self.hard_packet_limit,
            self.soft_add_expires_seconds,
            self.hard_add_expires_seconds,
            self.soft_use_expires_seconds,
            self.hard_use_expires_seconds,
            self.cur_bytes,
            self.cur_packets,
            self.cur_add_time,
            self.cur_use_time,
        )

    @classmethod
    def decode(cls, data: bytes, offset: int = 0) -> Lifetime:
        return cls(*_unpack(_LFT, data, offset, "xfrm_lifetime"))


_ID = struct.Struct("!16sIB3x")  # xfrm_id: daddr, spi (be32), proto


@dataclass(frozen=True, slots=True)
class XfrmId:
    """``struct xfrm_id`` (24 bytes)."""

    daddr: IPAddress
    spi: int
    proto: int = IPPROTO_ESP

    SIZE = 24

    def encode(self) -> bytes:
        return _ID.pack(_addr_bytes(self.daddr), self.spi, self.proto)

    @classmethod
    def decode(cls, data: bytes, offset: int, family: int) -> XfrmId:
        d, spi, proto = _unpack(_ID, data, offset, "xfrm_id")
        return cls(_addr_from(d, family), spi, proto)


_POL_TAIL = struct.Struct("=IIBBBB4x")


@dataclass(frozen=True, slots=True)
class PolicyInfo:
    """``struct xfrm_userpolicy_info`` (168 bytes)."""

    sel: Selector
    dir: int
    action: int = Action.ALLOW
    priority: int = 0
    index: int = 0
    flags: int = 0
    share: int = 0
    lft: Lifetime = field(default_factory=Lifetime)

    SIZE = 168

    def encode(self) -> bytes:
        return (
            self.sel.encode()
            + self.lft.encode()
            + _POL_TAIL.pack(self.priority, self.index, self.dir, self.action, self.flags, self.share)
        )

    @classmethod
    def decode(cls, data: bytes, offset: int = 0) -> PolicyInfo:
        sel = Selector.decode(data, offset)
        lft = Lifetime.decode(data, offset + Selector.SIZE)
        prio, index, d, act, flags, share = _unpack(_POL_TAIL, data, offset + 152, "xfrm_userpolicy_info")
        return cls(sel, d, act, prio, index, flags, share, lft)


_POLID_TAIL = struct.Struct("=IB3x")


@dataclass(frozen=True, slots=True)
class PolicyId:
    """``struct xfrm_userpolicy_id`` (64 bytes): DELPOLICY / GETPOLICY by selector+dir or index."""

    sel: Selector
    dir: int
    index: int = 0

    SIZE = 64

    def encode(self) -> bytes:
        return self.sel.encode() + _POLID_TAIL.pack(self.index, self.dir)


_TMPL_TAIL = struct.Struct("=H2x16sIBBBxIII")
ALL_ALGOS = 0xFFFFFFFF


@dataclass(frozen=True, slots=True)
class Template:
    """``struct xfrm_user_tmpl`` (64 bytes). ``optional`` 1 = level use, 0 = level required."""

    id: XfrmId
    family: int
    saddr: IPAddress
    reqid: int = 0
    mode: int = XMode.TRANSPORT
    share: int = 0
    optional: int = 0
    aalgos: int = ALL_ALGOS
    ealgos: int = ALL_ALGOS
    calgos: int = ALL_ALGOS

    SIZE = 64

    @classmethod
    def esp(cls, src: IPAddress, dst: IPAddress, reqid: int, *, optional: bool = False) -> Template:
        """An ESP transport template ``src`` -> ``dst`` pinned to ``reqid`` (0 = any SA)."""
        return cls(XfrmId(dst, 0, IPPROTO_ESP), family_of(src), src, reqid, optional=int(optional))

    def encode(self) -> bytes:
        return self.id.encode() + _TMPL_TAIL.pack(
            self.family,
            _addr_bytes(self.saddr),
            self.reqid,
            self.mode,
            self.share,
            self.optional,
            self.aalgos,
            self.ealgos,
            self.calgos,
        )

    @classmethod
    def decode(cls, data: bytes, offset: int = 0) -> Template:
        fam, saddr, reqid, mode, share, opt, aa, ea, ca = _unpack(
            _TMPL_TAIL, data, offset + XfrmId.SIZE, "xfrm_user_tmpl"
        )
        return cls(
            XfrmId.decode(data, offset, fam), fam, _addr_from(saddr, fam), reqid, mode, share, opt, aa, ea, ca
        )


def encode_templates(tmpls: Sequence[Template]) -> bytes:
    return b"".join(t.encode() for t in tmpls)


def decode_templates(data: bytes) -> tuple[Template, ...]:
    if len(data) % Template.SIZE:
        raise XfrmDecodeError(f"XFRMA_TMPL of {len(data)} bytes is not a multiple of {Template.SIZE}")
    return tuple(Template.decode(data, off) for off in range(0, len(data), Template.SIZE))


_SA_STATS = struct.Struct("=III")
_SA_TAIL = struct.Struct("=IIHBBB7x")


@dataclass(frozen=True, slots=True)
class SaInfo:
    """``struct xfrm_usersa_info`` (224 bytes)."""

    sel: Selector
    id: XfrmId
    saddr: IPAddress
    family: int
    reqid: int = 0
    mode: int = XMode.TRANSPORT
    replay_window: int = 0
    flags: int = 0
    seq: int = 0
    lft: Lifetime = field(default_factory=Lifetime)
    stats_replay_window: int = 0
    stats_replay: int = 0
    stats_integrity_failed: int = 0

    SIZE = 224

    def encode(self) -> bytes:
        return (
            self.sel.encode()
            + self.id.encode()
            + _addr_bytes(self.saddr)
            + self.lft.encode()
            + _SA_STATS.pack(self.stats_replay_window, self.stats_replay, self.stats_integrity_failed)
            + _SA_TAIL.pack(self.seq, self.reqid, self.family, self.mode, self.replay_window, self.flags)
        )

    @classmethod
    def decode(cls, data: bytes, offset: int = 0) -> SaInfo:
        seq, reqid, fam, mode, rw, flags = _unpack(_SA_TAIL, data, offset + 204, "xfrm_usersa_info")
        sel = Selector.decode(data, offset)
        xid = XfrmId.decode(data, offset + 56, fam)
        saddr = _addr_from(data[offset + 80 : offset + 96], fam)
        lft = Lifetime.decode(data, offset + 96)
        st = _unpack(_SA_STATS, data, offset + 192, "xfrm_stats")
        return cls(sel, xid, saddr, fam, reqid, mode, rw, flags, seq, lft, *st)


_SAID = struct.Struct("!16sI")
_SAID_TAIL = struct.Struct("=HBx")


@dataclass(frozen=True, slots=True)
class SaId:
    """``struct xfrm_usersa_id`` (24 bytes): DELSA / GETSA."""

    daddr: IPAddress
    spi: int
    proto: int = IPPROTO_ESP

    SIZE = 24

    def encode(self) -> bytes:
        return _SAID.pack(_addr_bytes(self.daddr), self.spi) + _SAID_TAIL.pack(
            family_of(self.daddr), self.proto
        )


_SPI_RANGE = struct.Struct("=II")


@dataclass(frozen=True, slots=True)
class SpiInfo:
    """``struct xfrm_userspi_info`` (232 bytes): ALLOCSPI in [min, max]."""

    info: SaInfo
    min: int
    max: int

    SIZE = 232

    def encode(self) -> bytes:
        return self.info.encode() + _SPI_RANGE.pack(self.min, self.max)


_ACQ_TAIL = struct.Struct("=IIII")


@dataclass(frozen=True, slots=True)
class Acquire:
    """``struct xfrm_user_acquire`` (280 bytes) + its templates: the kernel needs an SA."""

    id: XfrmId
    saddr: IPAddress
    sel: Selector
    policy: PolicyInfo
    seq: int
    templates: tuple[Template, ...] = ()

    SIZE = 280

    @classmethod
    def decode(cls, data: bytes, offset: int = 0) -> Acquire:
        sel = Selector.decode(data, offset + 40)
        xid = XfrmId.decode(data, offset, sel.family)
        saddr = _addr_from(data[offset + 24 : offset + 40], sel.family)
        pol = PolicyInfo.decode(data, offset + 96)
        _aa, _ea, _ca, seq = _unpack(_ACQ_TAIL, data, offset + 264, "xfrm_user_acquire")
        return cls(xid, saddr, sel, pol, seq)


_EXP_TAIL = struct.Struct("=B7x")


@dataclass(frozen=True, slots=True)
class Expire:
    """``struct xfrm_user_expire`` (232 bytes): an SA reached a soft or hard limit."""

    state: SaInfo
    hard: bool

    SIZE = 232

    @classmethod
    def decode(cls, data: bytes, offset: int = 0) -> Expire:
        (hard,) = _unpack(_EXP_TAIL, data, offset + SaInfo.SIZE, "xfrm_user_expire")
        return cls(SaInfo.decode(data, offset), bool(hard))


_AEAD = struct.Struct("=64sII")


@dataclass(frozen=True, slots=True)
class AeadAlgo:
    """``struct xfrm_algo_aead``: name, key (bits counted by the kernel), ICV length in bits."""

    name: str
    key: bytes
    icv_bits: int

    def encode(self) -> bytes:
        return _AEAD.pack(self.name.encode("ascii"), len(self.key) * 8, self.icv_bits) + self.key

    @classmethod
    def decode(cls, data: bytes) -> AeadAlgo:
        name, key_bits, icv = _unpack(_AEAD, data, 0, "xfrm_algo_aead")
        key = data[_AEAD.size : _AEAD.size + (key_bits + 7) // 8]
        return cls(name.rstrip(b"\0").decode("ascii", "replace"), key, icv)


for _cls, _size in (
    (Selector, 56),
    (Lifetime, 96),
    (XfrmId, 24),
    (PolicyInfo, 168),
    (PolicyId, 64),
    (Template, 64),
    (SaInfo, 224),
    (SaId, 24),
    (SpiInfo, 232),
    (Acquire, 280),
    (Expire, 232),
):
    assert _size == _cls.SIZE  # the C layouts (xfrm.h, LP64)
assert _SEL_A.size + _SEL_B.size == Selector.SIZE and _LFT.size == Lifetime.SIZE
assert _ID.size == XfrmId.SIZE and Selector.SIZE + Lifetime.SIZE + _POL_TAIL.size == PolicyInfo.SIZE
assert Selector.SIZE + _POLID_TAIL.size == PolicyId.SIZE and _ID.size + _TMPL_TAIL.size == Template.SIZE
assert 56 + 24 + 16 + 96 + _SA_STATS.size + _SA_TAIL.size == SaInfo.SIZE
assert _SAID.size + _SAID_TAIL.size == SaId.SIZE and SaInfo.SIZE + _SPI_RANGE.size == SpiInfo.SIZE
assert 24 + 16 + 56 + 168 + _ACQ_TAIL.size == Acquire.SIZE and SaInfo.SIZE + _EXP_TAIL.size == Expire.SIZE


# ---------------------------------------------------------------------------------------------
# attributes


def encode_nla(attr: int, payload: bytes) -> bytes:
    length = NLA_HDR.size + len(payload)
    return NLA_HDR.pack(length, attr) + payload + bytes(-length % 4)


def decode_nlas(data: bytes) -> dict[int, bytes]:
    """Attributes ``type -> payload`` (the last one wins); raises on truncation or too many."""
    out: dict[int, bytes] = {}
    off = 0
    count = 0
    while off + NLA_HDR.size <= len(data):
        length, attr = NLA_HDR.unpack_from(data, off)
        if length < NLA_HDR.size or off + length > len(data):
            raise XfrmDecodeError(f"attribute length {length} at offset {off} of {len(data)}")
        count += 1
        if count > MAX_NLAS:
            raise XfrmDecodeError(f"more than {MAX_NLAS} attributes")
        out[attr & 0x3FFF] = data[off + NLA_HDR.size : off + length]
        off += (length + 3) & ~3
    return out


# ---------------------------------------------------------------------------------------------
# decoded messages


@dataclass(frozen=True, slots=True)
class Policy:
    """A policy from a dump (or a NEWPOLICY notification) with its templates."""

    info: PolicyInfo
    templates: tuple[Template, ...]


@dataclass(frozen=True, slots=True)
class Sa:
    """An SA from a dump; ``aead`` when it has one (keys included, as the kernel reports them)."""

    info: SaInfo
    aead: AeadAlgo | None


Notification = Acquire | Expire | Policy | Sa


def decode_payload(msg_type: int, payload: bytes) -> Notification | None:
    """Decode one xfrm_user message body; None for types this module does not decode."""
    if msg_type == MsgType.ACQUIRE:
        acq = Acquire.decode(payload)
        tmpl = decode_nlas(payload[Acquire.SIZE :]).get(Attr.TMPL, b"")
        return Acquire(acq.id, acq.saddr, acq.sel, acq.policy, acq.seq, decode_templates(tmpl))
    if msg_type == MsgType.EXPIRE:
        return Expire.decode(payload)
    if msg_type in (MsgType.NEWPOLICY, MsgType.UPDPOLICY):
        info = PolicyInfo.decode(payload)
        nlas = decode_nlas(payload[PolicyInfo.SIZE :])
        return Policy(info, decode_templates(nlas.get(Attr.TMPL, b"")))
    if msg_type in (MsgType.NEWSA, MsgType.UPDSA):
        sa = SaInfo.decode(payload)
        raw = decode_nlas(payload[SaInfo.SIZE :]).get(Attr.ALG_AEAD)
        return Sa(sa, None if raw is None else AeadAlgo.decode(raw))
    return None


def split_messages(data: bytes) -> list[tuple[int, int, int, bytes]]:
    """The netlink messages of a datagram as ``(type, flags, seq, payload)``; raises
    XfrmDecodeError on a truncated or inconsistent header."""
    out: list[tuple[int, int, int, bytes]] = []
    off = 0
    while off < len(data):
        if len(data) - off < NLMSG_HDR.size:
            raise XfrmDecodeError(f"{len(data) - off} trailing bytes, not a netlink header")
        length, msg_type, flags, seq, _pid = NLMSG_HDR.unpack_from(data, off)
        if length < NLMSG_HDR.size or off + length > len(data):
            raise XfrmDecodeError(f"netlink message length {length} at offset {off} of {len(data)}")
        out.append((msg_type, flags, seq, data[off + NLMSG_HDR.size : off + length]))
        off += (length + 3) & ~3
    return out


def decode_datagram(data: bytes) -> list[tuple[int, Notification | None]]:
    """Split a netlink datagram into ``(type, decoded or None)``; raises XfrmDecodeError on any
    malformed header or body. NLMSG_ERROR/NLMSG_DONE give ``(type, None)``."""
    return [(t, decode_payload(t, payload)) for t, _flags, _seq, payload in split_messages(data)]


def _error_code(what: str, payload: bytes) -> int:
    """The positive errno of an NLMSG_ERROR / NLMSG_DONE payload (0 = success / ACK)."""
    if len(payload) < _NLMSGERR.size:
        raise XfrmDecodeError(f"{what}: netlink error message of {len(payload)} bytes")
    return -int(_NLMSGERR.unpack_from(payload)[0])


# ---------------------------------------------------------------------------------------------
# requests


class XfrmSocket:
    """Requests to the kernel's xfrm_user in network namespace ``netns`` (a name under
    /var/run/netns or a path; None = the caller's namespace), on a plain NETLINK_XFRM socket.

    Every request (and dump) waits at most ``timeout`` seconds for the kernel's next message that
    answers it (each one restarts the wait, so a long dump is fine); then it raises XfrmTimeout
    instead of blocking forever. A late answer to such a request is recognised by its sequence
    number and dropped by later requests. ``peer_port``: the netlink port id requests go to and
    answers are accepted from; 0 (the default) is the kernel, another port lets a process stand in
    for it (tests of this transport). Messages from anyone else are ignored. Requests are
    serialised by a lock, so threads may share a socket."""

    def __init__(
        self, netns: str | None = None, *, timeout: float = DEFAULT_TIMEOUT, peer_port: int = 0
    ) -> None:
        if not 0 < timeout < math.inf:
            raise ValueError(f"XfrmSocket timeout must be > 0 seconds and finite, not {timeout!r}")
        self.netns = netns
        self.timeout = timeout
        self.peer_port = peer_port
        self._sock = open_socket(netns, socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_XFRM)
        try:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            self._sock.bind((0, 0))  # the kernel picks our port id
        except BaseException:
            self._sock.close()
            raise
        self._seq = 0
        self._lock = threading.Lock()

    @property
    def port(self) -> int:
        """This socket's netlink port id."""
        return int(self._sock.getsockname()[0])

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> XfrmSocket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _do(self, what: str, msg_type: MsgType, body: bytes, flags: int) -> list[bytes]:
        """Send one request and collect the bodies of its answers: until the ACK (NLM_F_ACK),
        NLMSG_DONE (dumps) or the first answer (others). Raises XfrmKernelError for a kernel
        errno, XfrmTimeout when the kernel stays silent for ``timeout`` seconds."""
        with self._lock:
            self._seq = self._seq % 0xFFFFFFFF + 1  # never 0: kernel notifications carry 0
            seq = self._seq
            request = NLMSG_HDR.pack(NLMSG_HDR.size + len(body), int(msg_type), flags, seq, 0) + body
            try:
                self._sock.settimeout(self.timeout)  # a user-space peer's full queue blocks sends
                self._sock.sendto(request, (self.peer_port, 0))
            except TimeoutError as exc:
                raise XfrmTimeout(f"{what}: request not accepted within {self.timeout:g} s") from exc
            except OSError as exc:
                raise XfrmError(f"{what}: netlink socket: {exc}") from exc
            try:
                return self._collect(what, seq, flags)
            except OSError as exc:
                raise XfrmError(f"{what}: netlink socket: {exc}") from exc

    def _collect(self, what: str, seq: int, flags: int) -> list[bytes]:
        bodies: list[bytes] = []
        deadline = time.monotonic() + self.timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                where = f"network namespace {self.netns!r}" if self.netns else "this namespace"
                raise XfrmTimeout(
                    f"{what}: no answer from xfrm_user in {where} within {self.timeout:g} s "
                    f"(netlink port {self.peer_port}, seq {seq})"
                )
            self._sock.settimeout(remaining)
            try:
                data, _anc, dgram_flags, addr = self._sock.recvmsg(_RECV_SIZE)
            except TimeoutError:
                continue
            if addr[0] != self.peer_port:
                log.debug("netlink datagram from port %s ignored (not port %d)", addr[0], self.peer_port)
                continue
            if dgram_flags & socket.MSG_TRUNC:
                raise XfrmDecodeError(f"{what}: netlink datagram longer than {_RECV_SIZE} bytes")
            mine = [m for m in split_messages(data) if m[2] == seq]
            if not mine:
                log.debug("netlink datagram for another request ignored (%d bytes)", len(data))
                continue
            deadline = time.monotonic() + self.timeout
            for msg_type, msg_flags, _seq, payload in mine:
                if msg_type == NLMSG_ERROR:
                    code = _error_code(what, payload)
                    if code:
                        raise XfrmKernelError(what, code)
                    return bodies  # the ACK
                if msg_type == NLMSG_DONE:
                    code = _error_code(what, payload) if payload else 0
                    if code > 0:
                        raise XfrmKernelError(what, code)
                    return bodies
                if msg_type == NLMSG_OVERRUN:
                    raise XfrmError(f"{what}: netlink overrun")
                if msg_type == NLMSG_NOOP:
                    continue
                bodies.append(payload)
                if not flags & (NLM_F_ACK | NLM_F_DUMP) and not msg_flags & NLM_F_MULTI:
                    return bodies  # a plain answer (ALLOCSPI) ends the request

    def _dump(self, what: str, get: MsgType, new: MsgType, cls: type[_T]) -> list[_T]:
        """A ``get`` dump, each reply decoded as a ``new`` message (an instance of ``cls``)."""
        out = []
        for body in self._do(what, get, b"", NLM_F_REQUEST | NLM_F_DUMP):
            item = decode_payload(new, body)
            assert isinstance(item, cls)
            out.append(item)
        return out

    # -- SPD ---------------------------------------------------------------------------------

    def add_policy(
        self, info: PolicyInfo, templates: Sequence[Template] = (), *, update: bool = True
    ) -> None:
        """NEWPOLICY (fails with EEXIST on the same selector/dir/priority) or UPDPOLICY."""
        body = info.encode() + (encode_nla(Attr.TMPL, encode_templates(templates)) if templates else b"")
        mtype = MsgType.UPDPOLICY if update else MsgType.NEWPOLICY
        self._do("add policy", mtype, body, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE)

    def delete_policy(self, pid: PolicyId) -> bool:
        """DELPOLICY; False if no such policy."""
        try:
            self._do("delete policy", MsgType.DELPOLICY, pid.encode(), NLM_F_REQUEST | NLM_F_ACK)
        except XfrmKernelError as exc:
            if exc.errno == errno.ENOENT:
                return False
            raise
        return True

    def policies(self) -> list[Policy]:
        """GETPOLICY dump of the main SPD (socket policies are not dumped)."""
        return self._dump("dump policies", MsgType.GETPOLICY, MsgType.NEWPOLICY, Policy)

    def flush_policies(self) -> None:
        """FLUSHPOLICY: removes every policy of the namespace (never used by the backend)."""
        self._do("flush policies", MsgType.FLUSHPOLICY, b"", NLM_F_REQUEST | NLM_F_ACK)

    # -- SAD ---------------------------------------------------------------------------------

    def add_sa(self, info: SaInfo, aead: AeadAlgo, *, update: bool = False) -> None:
        body = info.encode() + encode_nla(Attr.ALG_AEAD, aead.encode())
        mtype = MsgType.UPDSA if update else MsgType.NEWSA
        self._do("add SA", mtype, body, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE)

    def delete_sa(self, sid: SaId) -> bool:
        """DELSA; False if no such SA."""
        try:
            self._do("delete SA", MsgType.DELSA, sid.encode(), NLM_F_REQUEST | NLM_F_ACK)
        except XfrmKernelError as exc:
            if exc.errno in (errno.ENOENT, errno.ESRCH):
                return False
            raise
        return True

    def sas(self) -> list[Sa]:
        return self._dump("dump SAs", MsgType.GETSA, MsgType.NEWSA, Sa)

    def alloc_spi(self, info: SaInfo, low: int, high: int) -> int:
        """ALLOCSPI: the kernel picks a free SPI in [low, high] and holds a larval SA for it."""
        bodies = self._do("allocate SPI", MsgType.ALLOCSPI, SpiInfo(info, low, high).encode(), NLM_F_REQUEST)
        if not bodies:
            raise XfrmError("ALLOCSPI: no reply")
        return SaInfo.decode(bodies[0]).id.spi


class XfrmEventSocket:
    """A netlink socket subscribed to xfrm multicast ``groups`` in ``netns``; non-blocking.
    ``fileno()`` suits selectors / ``loop.add_reader``; :meth:`receive` decodes what is queued."""

    def __init__(
        self, netns: str | None = None, groups: Iterable[Group] = (Group.ACQUIRE, Group.EXPIRE)
    ) -> None:
        self.sock = open_socket(netns, socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_XFRM)
        mask = 0
        for g in groups:
            mask |= 1 << (int(g) - 1)
        self.sock.bind((0, mask))
        self.sock.setblocking(False)
        self.malformed = 0
        self.overruns = 0

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        self.sock.close()

    def receive(self, max_datagrams: int = 64) -> list[Notification]:
        """Decode queued datagrams (at most ``max_datagrams``). A malformed datagram is logged and
        skipped; so is a receive-buffer overrun (ENOBUFS: events were lost, the kernel says so)."""
        out: list[Notification] = []
        for _ in range(max_datagrams):
            try:
                data = self.sock.recv(65536)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    raise
                self.overruns += 1
                log.warning("xfrm event socket overrun: kernel events were lost")
                continue
            try:
                out += [n for _t, n in decode_datagram(data) if n is not None]
            except XfrmDecodeError as exc:
                self.malformed += 1
                log.warning("malformed xfrm event datagram (%d bytes) dropped: %s", len(data), exc)
        return out
