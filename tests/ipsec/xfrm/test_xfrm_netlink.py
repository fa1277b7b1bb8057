"""xfrm_user structs: C sizes, encode/decode round trips, and decoders fuzzed with any bytes."""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import os
import socket
import struct
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rpclatch.ipsec.xfrm import netlink as nl
from rpclatch.ipsec.xfrm.netlink import (
    Acquire,
    AeadAlgo,
    Dir,
    Expire,
    MsgType,
    Policy,
    PolicyId,
    PolicyInfo,
    Sa,
    SaId,
    SaInfo,
    Selector,
    SpiInfo,
    Template,
    XfrmDecodeError,
    XfrmId,
    decode_datagram,
    decode_nlas,
    decode_payload,
    encode_nla,
)

u8 = st.integers(0, 255)
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)
v4 = st.integers(0, 2**32 - 1).map(ipaddress.IPv4Address)
v6 = st.integers(0, 2**128 - 1).map(ipaddress.IPv6Address)


@st.composite
def selectors(draw: st.DrawFn) -> Selector:
    fam = draw(st.sampled_from([socket.AF_INET, socket.AF_INET6]))
    addr = v4 if fam == socket.AF_INET else v6
    return Selector(
        draw(addr),
        draw(addr),
        fam,
        draw(u8),
        draw(u8),
        draw(u8),
        draw(u16),
        draw(u16),
        draw(u16),
        draw(u16),
        draw(st.integers(-(2**31), 2**31 - 1)),
        draw(u32),
    )


@st.composite
def templates(draw: st.DrawFn) -> Template:
    sel = draw(selectors())
    return Template(
        XfrmId(sel.daddr, draw(u32), draw(u8)),
        sel.family,
        sel.saddr,
        draw(u32),
        draw(u8),
        draw(u8),
        draw(u8),
        draw(u32),
        draw(u32),
        draw(u32),
    )


@st.composite
def sa_infos(draw: st.DrawFn) -> SaInfo:
    sel = draw(selectors())
    return SaInfo(
        sel,
        XfrmId(sel.daddr, draw(u32), draw(u8)),
        sel.saddr,
        sel.family,
        draw(u32),
        draw(u8),
        draw(u8),
        draw(u8),
        draw(u32),
    )


def nlmsg(msg_type: int, body: bytes) -> bytes:
    return struct.pack("=IHHII", 16 + len(body), msg_type, 0, 0, 0) + body + bytes(-len(body) % 4)


def test_struct_sizes_match_linux_xfrm_h() -> None:
    sel = Selector.any()
    assert len(sel.encode()) == 56
    assert len(PolicyInfo(sel, Dir.OUT).encode()) == 168
    assert len(PolicyId(sel, Dir.OUT).encode()) == 64
    tmpl = Template.esp(ipaddress.IPv4Address("192.0.2.1"), ipaddress.IPv4Address("192.0.2.2"), 7)
    assert len(tmpl.encode()) == 64
    info = SaInfo(sel, XfrmId(sel.daddr, 0x1000), sel.saddr, socket.AF_INET)
    assert len(info.encode()) == 224
    assert len(SaId(sel.daddr, 0x1000).encode()) == 24
    assert len(SpiInfo(info, 0x100, 0x200).encode()) == 232
    assert len(AeadAlgo("rfc4106(gcm(aes))", bytes(36), 128).encode()) == 72 + 36


def test_selector_wire_layout_ports_big_endian() -> None:
    sel = Selector.exact(
        ipaddress.IPv4Address("192.0.2.1"), 40000, ipaddress.IPv4Address("192.0.2.2"), 2049, 6
    )
    raw = sel.encode()
    assert raw[:4] == bytes([192, 0, 2, 2]) and raw[16:20] == bytes([192, 0, 2, 1])
    assert raw[32:40] == struct.pack("!HHHH", 2049, 0xFFFF, 40000, 0xFFFF)
    assert struct.unpack_from("=HBBB", raw, 40) == (socket.AF_INET, 32, 32, 6)


@given(selectors())
def test_selector_round_trip(sel: Selector) -> None:
    assert Selector.decode(sel.encode()) == sel


@given(selectors(), st.sampled_from(list(Dir)), st.integers(0, 1), u32, u32, u8, u8)
def test_policy_round_trip_with_templates(
    sel: Selector, d: Dir, action: int, prio: int, index: int, flags: int, share: int
) -> None:
    info = PolicyInfo(sel, d, action, prio, index, flags, share)
    tmpl = Template.esp(sel.saddr, sel.daddr, 5)
    body = info.encode() + encode_nla(nl.Attr.TMPL, tmpl.encode() * 2)
    assert decode_payload(MsgType.NEWPOLICY, body) == Policy(info, (tmpl, tmpl))


@given(templates())
def test_template_round_trip(t: Template) -> None:
    assert Template.decode(t.encode()) == t


@given(sa_infos(), st.binary(max_size=40))
def test_sa_round_trip_with_aead(info: SaInfo, key: bytes) -> None:
    aead = AeadAlgo("rfc4106(gcm(aes))", key, 128)
    body = info.encode() + encode_nla(nl.Attr.ALG_AEAD, aead.encode())
    assert decode_payload(MsgType.NEWSA, body) == Sa(info, aead)
    assert decode_datagram(nlmsg(MsgType.NEWSA, body)) == [(MsgType.NEWSA, Sa(info, aead))]


@given(sa_infos(), st.booleans())
def test_expire_decodes(info: SaInfo, hard: bool) -> None:
    body = info.encode() + struct.pack("=B7x", hard)
    assert decode_payload(MsgType.EXPIRE, body) == Expire(info, hard)


@given(selectors(), templates(), u32)
def test_acquire_decodes(sel: Selector, tmpl: Template, seq: int) -> None:
    pol = PolicyInfo(sel, Dir.OUT, priority=9)
    xid = XfrmId(sel.daddr, 0, 50)
    body = (
        xid.encode()
        + sel.saddr.packed.ljust(16, b"\0")
        + sel.encode()
        + pol.encode()
        + struct.pack("=IIII", 1, 2, 3, seq)
        + encode_nla(nl.Attr.TMPL, tmpl.encode())
    )
    acq = decode_payload(MsgType.ACQUIRE, body)
    assert acq == Acquire(xid, sel.saddr, sel, pol, seq, (tmpl,))


def test_truncated_and_malformed_raise_module_error() -> None:
    sel = Selector.any()
    body = PolicyInfo(sel, Dir.OUT).encode()
    with pytest.raises(XfrmDecodeError):
        decode_payload(MsgType.NEWPOLICY, body[:-1])
    with pytest.raises(XfrmDecodeError):  # XFRMA_TMPL not a multiple of 64
        decode_payload(MsgType.NEWPOLICY, body + encode_nla(nl.Attr.TMPL, bytes(63)))
    with pytest.raises(XfrmDecodeError):  # attribute longer than the message
        decode_nlas(struct.pack("=HH", 200, 5) + bytes(8))
    with pytest.raises(XfrmDecodeError):  # too many attributes
        decode_nlas(encode_nla(1, b"") * (nl.MAX_NLAS + 1))
    with pytest.raises(XfrmDecodeError):  # netlink length beyond the datagram
        decode_datagram(struct.pack("=IHHII", 100, MsgType.ACQUIRE, 0, 0, 0))
    assert decode_datagram(nlmsg(nl.NLMSG_DONE, struct.pack("=i", 0))) == [(nl.NLMSG_DONE, None)]


@given(st.binary(max_size=700))
def test_decode_datagram_any_bytes(data: bytes) -> None:
    with contextlib.suppress(XfrmDecodeError):
        decode_datagram(data)


@given(st.sampled_from([t.value for t in MsgType]), st.binary(max_size=600))
def test_decode_payload_any_bytes(msg_type: int, body: bytes) -> None:
    with contextlib.suppress(XfrmDecodeError):
        decode_payload(msg_type, body)


@given(st.sampled_from([MsgType.ACQUIRE, MsgType.EXPIRE, MsgType.NEWPOLICY, MsgType.NEWSA]), st.data())
def test_decode_payload_mutated_valid_messages(msg_type: MsgType, data: st.DataObject) -> None:
    """Valid bodies with random byte flips / truncations still decode or raise the module error."""
    sel = Selector.any(socket.AF_INET6)
    tmpl = Template.esp(sel.saddr, sel.daddr, 3)
    info = SaInfo(sel, XfrmId(sel.daddr, 0x1234), sel.saddr, socket.AF_INET6)
    bodies = {
        MsgType.ACQUIRE: XfrmId(sel.daddr, 0).encode()
        + bytes(16)
        + sel.encode()
        + PolicyInfo(sel, Dir.OUT).encode()
        + bytes(16)
        + encode_nla(nl.Attr.TMPL, tmpl.encode()),
        MsgType.EXPIRE: info.encode() + bytes(8),
        MsgType.NEWPOLICY: PolicyInfo(sel, Dir.IN).encode() + encode_nla(nl.Attr.TMPL, tmpl.encode()),
        MsgType.NEWSA: info.encode() + encode_nla(nl.Attr.ALG_AEAD, AeadAlgo("x", bytes(20), 64).encode()),
    }
    body = bytearray(bodies[msg_type])
    for _ in range(data.draw(st.integers(0, 8))):
        pos = data.draw(st.integers(0, len(body) - 1))
        body[pos] = data.draw(u8)
    body = body[: data.draw(st.integers(0, len(body)))]
    with contextlib.suppress(XfrmDecodeError):
        decode_payload(msg_type, bytes(body))


# -- XfrmSocket's transport against a netlink peer that stands in for the kernel -----------------
# A process with CAP_NET_ADMIN may unicast NETLINK_XFRM datagrams to another socket's port id, so a
# second socket of this test plays the kernel: it sees the real request bytes and answers (or not).


class FakeKernel:
    """A NETLINK_XFRM socket bound to its own port id; XfrmSocket(peer_port=kernel.port)."""

    def __init__(self) -> None:
        if os.geteuid() != 0:
            pytest.skip("netlink unicast between sockets needs CAP_NET_ADMIN (root)")
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, nl.NETLINK_XFRM)
        self.sock.bind((0, 0))
        self.sock.settimeout(10)

    @property
    def port(self) -> int:
        return int(self.sock.getsockname()[0])

    def request(self) -> tuple[int, int, int, bytes, int]:
        """The next request: (type, flags, seq, body, sender port)."""
        data, addr = self.sock.recvfrom(65536)
        [(msg_type, flags, seq, body)] = nl.split_messages(data)
        return msg_type, flags, seq, body, addr[0]

    def send(self, port: int, *msgs: bytes) -> None:
        self.sock.sendto(b"".join(msgs), (port, 0))

    def close(self) -> None:
        self.sock.close()


def nl_msg(msg_type: int, seq: int, body: bytes = b"", flags: int = 0) -> bytes:
    return struct.pack("=IHHII", 16 + len(body), msg_type, flags, seq, 0) + body + bytes(-len(body) % 4)


def nl_error(seq: int, code: int) -> bytes:
    """NLMSG_ERROR with -code (0 = ACK) and a dummy copy of the request header."""
    return nl_msg(nl.NLMSG_ERROR, seq, struct.pack("=i", -code) + bytes(16))


@contextlib.contextmanager
def fake_kernel(timeout: float) -> Iterator[tuple[FakeKernel, nl.XfrmSocket]]:
    kernel = FakeKernel()
    try:
        with nl.XfrmSocket(timeout=timeout, peer_port=kernel.port) as xs:
            yield kernel, xs
    finally:
        kernel.close()


# The peer's answers are queued on the XfrmSocket before the request is sent (a new socket's
# requests carry seq 1, 2, ...): the transport reads them in order, with no race against a thread.


def test_request_to_a_peer_that_never_answers_times_out() -> None:
    with fake_kernel(0.3) as (kernel, xs):
        timeout = r"^flush policies: no answer from xfrm_user in this namespace within 0\.3 s"
        with pytest.raises(nl.XfrmTimeout, match=timeout):
            xs.flush_policies()
        # the request did reach the peer: it just never answered
        msg_type, flags, seq, body, sender = kernel.request()
        assert (msg_type, flags, seq, body, sender) == (MsgType.FLUSHPOLICY, 0x5, 1, b"", xs.port)
        with pytest.raises(nl.XfrmTimeout, match="dump policies"):
            xs.policies()
        assert kernel.request()[:3] == (MsgType.GETPOLICY, nl.NLM_F_REQUEST | nl.NLM_F_DUMP, 2)


def test_answers_to_other_requests_and_from_other_ports_do_not_count() -> None:
    """A stale ACK (another seq) and a right-looking ACK from a stranger's port are ignored: the
    request still times out, as nothing from its peer answered it."""
    with fake_kernel(0.3) as (kernel, xs):
        stranger = FakeKernel()
        try:
            kernel.send(xs.port, nl_error(8, 0))
            stranger.send(xs.port, nl_error(1, 0))
            with pytest.raises(nl.XfrmTimeout):
                xs.flush_policies()
            assert kernel.request()[2] == 1
        finally:
            stranger.close()


def test_a_peer_that_answers_is_heard_and_late_answers_are_dropped() -> None:
    """The control for the timeout tests: the same setup succeeds when the peer answers (ACK, an
    errno, a multi-part dump); a late answer to a timed-out request does not leak into the next."""
    pol = PolicyInfo(Selector.any(), Dir.OUT, priority=77)
    with fake_kernel(0.3) as (kernel, xs):
        kernel.send(xs.port, nl_error(1, 0))
        xs.flush_policies()

        kernel.send(xs.port, nl_error(2, errno.EPERM))
        with pytest.raises(nl.XfrmKernelError) as err:
            xs.flush_policies()
        assert err.value.errno == errno.EPERM

        part = nl_msg(MsgType.NEWPOLICY, 3, pol.encode(), nl.NLM_F_MULTI)
        kernel.send(xs.port, part, part)
        kernel.send(xs.port, nl_msg(nl.NLMSG_DONE, 3, struct.pack("=i", 0), nl.NLM_F_MULTI))
        assert [p.info for p in xs.policies()] == [pol, pol]

        with pytest.raises(nl.XfrmTimeout):
            xs.flush_policies()  # seq 4: no answer yet
        kernel.send(xs.port, nl_error(4, errno.EPERM))  # its answer, late
        kernel.send(xs.port, nl_error(5, 0))
        xs.flush_policies()  # seq 5: the late EPERM belongs to seq 4, no error here
        assert [kernel.request()[2] for _ in range(5)] == [1, 2, 3, 4, 5]


def test_a_dump_whose_peer_goes_silent_midway_times_out() -> None:
    pol = PolicyInfo(Selector.any(), Dir.IN)
    with fake_kernel(0.3) as (kernel, xs):
        kernel.send(xs.port, nl_msg(MsgType.NEWPOLICY, 1, pol.encode(), nl.NLM_F_MULTI))
        with pytest.raises(nl.XfrmTimeout, match="dump policies"):
            xs.policies()


def test_timeout_must_be_positive() -> None:
    for bad in (0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="timeout must be > 0"):
            nl.XfrmSocket(timeout=bad)


def test_a_peer_port_nobody_holds_is_a_layer_error() -> None:
    kernel = FakeKernel()
    with nl.XfrmSocket(timeout=0.5) as xs:  # made while the port is taken: it cannot get it
        xs.peer_port = kernel.port
        kernel.close()
        with pytest.raises(nl.XfrmError, match=r"flush policies: netlink socket: .*refused"):
            xs.flush_policies()


@given(st.binary(max_size=400))
def test_split_messages_any_bytes(data: bytes) -> None:
    """Any bytes split into messages that cover the datagram, or raise the module error."""
    try:
        msgs = nl.split_messages(data)
    except XfrmDecodeError:
        return
    assert sum(16 + len(payload) for _t, _f, _s, payload in msgs) <= len(data)


def test_a_peer_whose_queue_stays_full_times_out_the_send() -> None:
    with fake_kernel(0.3) as (kernel, xs):
        kernel.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        flood = FakeKernel()
        try:
            flood.sock.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                for _ in range(10_000):
                    flood.send(kernel.port, nl_error(99, 0))
            with pytest.raises(nl.XfrmTimeout, match=r"flush policies: request not accepted within 0\.3 s"):
                xs.flush_policies()
        finally:
            flood.close()
