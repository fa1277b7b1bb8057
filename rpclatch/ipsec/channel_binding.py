"""Channel bindings for a latched IPsec connection — a NON-STANDARD, project-private type.

No channel-binding type for IPsec is specified or registered (RFC 5056 §4; RFC 5660 §1, §6.4
leave it to the expired draft-williams-ipsec-channel-binding). This module defines the project's
own end-point channel bindings, following RFC 5387 §1.2 ("the pair of public keys used (one for
each peer) suffices for channel binding") and RFC 5403 §2's illustration:

    prefix  = "rpclatch-ipsec-latch-v1"      ; RFC 5056 §7 charset (US-ASCII alnum, '.', '-');
                                             ; private, NOT registered with IANA, not interoperable
    data    = BE32(len(spki_client)) || spki_client || BE32(len(spki_server)) || spki_server
    bindings = prefix ":" data               ; RFC 5056 §2.1 canonical form

- ``spki_*`` is the DER SubjectPublicKeyInfo of the key that signed the IKE AUTH payload of the
  currently latched SAs: the raw key (RFC 7670 CERT encoding 15 / RFC 5386 PUBLICKEY) or the
  end-entity certificate's key.
- The keys are ordered by **RPC role** (client first, then server), never by IKE role: who
  initiated IKE is not deterministic (RFC 5660 §2.1), so both ends compute identical bytes.
- Each key is length-prefixed so the encoding is canonical and unambiguous (RFC 5056 §2.1).
- Unavailable for NULL-authenticated (RFC 7619) and PSK peers: there is no public key that was
  bound into the channel's negotiation (RFC 5056 §2.1 end-point CB requirement). Callers then use
  RPCSEC_GSS integrity or privacy instead of channel_prot (RFC 7619 §2.2: a NULL-authenticated
  peer's identification data is empty, so there is nothing to bind to).

It is an end-point binding, not unique in time (RFC 5056 §2): re-bind on every connection.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from enum import Enum

from rpclatch.channel import BreakCallback, Channel, Protection
from rpclatch.ipsec.errors import ChannelBindingUnavailable
from rpclatch.ipsec.latch import Alert, LatchDatabase, LatchParams, LatchState, params_from_sa
from rpclatch.ipsec.model import LocalIdentity, NullAuthPeer, PeerIdentity, PskPeer
from rpclatch.ipsec.ulp import UlpLatch, UlpLatchState

#: the project-private binding type name (RFC 5056 §7 characters only; not IANA-registered)
CB_PREFIX = "rpclatch-ipsec-latch-v1"
#: refuse absurd keys when decoding (an SPKI of an RSA-16384 key is ~2.1 KB)
MAX_SPKI_LEN = 16384

_LEN = struct.Struct(">I")


class RpcRole(Enum):
    CLIENT = "client"
    SERVER = "server"


def encode_binding_data(client_spki: bytes, server_spki: bytes) -> bytes:
    """``BE32 len || client SPKI || BE32 len || server SPKI``."""
    for key in (client_spki, server_spki):
        if not key:
            raise ValueError("an SPKI must not be empty")
        if len(key) > MAX_SPKI_LEN:
            raise ValueError(f"SPKI of {len(key)} bytes exceeds {MAX_SPKI_LEN}")
    return _LEN.pack(len(client_spki)) + client_spki + _LEN.pack(len(server_spki)) + server_spki


class BindingDecodeError(ValueError):
    """Binding data that is not two length-prefixed SPKIs."""


def decode_binding_data(data: bytes) -> tuple[bytes, bytes]:
    """Inverse of :func:`encode_binding_data`; raises :class:`BindingDecodeError`."""
    keys: list[bytes] = []
    pos = 0
    for _ in range(2):
        if len(data) - pos < 4:
            raise BindingDecodeError("truncated length prefix")
        (n,) = _LEN.unpack_from(data, pos)
        pos += 4
        if n == 0 or n > MAX_SPKI_LEN:
            raise BindingDecodeError(f"SPKI length {n} out of range 1..{MAX_SPKI_LEN}")
        if len(data) - pos < n:
            raise BindingDecodeError("truncated SPKI")
        keys.append(data[pos : pos + n])
        pos += n
    if pos != len(data):
        raise BindingDecodeError(f"{len(data) - pos} trailing bytes")
    return keys[0], keys[1]


def _peer_key(peer: PeerIdentity) -> bytes:
    if isinstance(peer, NullAuthPeer):
        raise ChannelBindingUnavailable(
            "peer used IKEv2 NULL authentication (RFC 7619): it has no public key bound into the "
            "channel, so no end-point channel binding exists; use RPCSEC_GSS integrity/privacy"
        )
    if isinstance(peer, PskPeer):
        raise ChannelBindingUnavailable(
            "peer authenticated with a pre-shared key: no public key is bound into the channel, so "
            "no end-point channel binding exists; use RPCSEC_GSS integrity/privacy"
        )
    key = peer.public_key
    if not key:
        raise ChannelBindingUnavailable(f"peer {peer} has no public key")
    return key


def _local_key(local: LocalIdentity) -> bytes:
    if local.spki_der is None:
        raise ChannelBindingUnavailable(
            f"we authenticated as {local} without a public key (NULL or PSK): no end-point binding"
        )
    return local.spki_der


def binding_data_for(params: LatchParams, role: RpcRole) -> bytes:
    """Channel-binding data of a latch seen by the end playing RPC ``role`` (raises
    :class:`ChannelBindingUnavailable` with the reason for NULL-auth / PSK peers)."""
    peer = _peer_key(params.peer)
    local = _local_key(params.local)
    if role is RpcRole.CLIENT:
        return encode_binding_data(local, peer)
    return encode_binding_data(peer, local)


def channel_bindings_for(params: LatchParams, role: RpcRole) -> bytes:
    """``prefix ":" data`` (RFC 5056 §2.1)."""
    return CB_PREFIX.encode("ascii") + b":" + binding_data_for(params, role)


def binding_unavailable_reason(params: LatchParams) -> str | None:
    """None if a binding can be made for these parameters, else the reason why not."""
    try:
        _peer_key(params.peer)
        _local_key(params.local)
    except ChannelBindingUnavailable as exc:
        return str(exc)
    return None


class LatchChannel(Channel):
    """The RPCSEC_GSS view (rpclatch.channel.Channel) of one latched connection.

    - binding prefix/data: computed once from the latched parameters (they never change while the
      latch lives, RFC 5660 §2); construction raises :class:`ChannelBindingUnavailable` for NULL-auth
      or PSK peers.
    - protection: integrity, plus confidentiality if the latched SAs encrypt (ESP with a cipher;
      never AH or ESP-NULL).
    - is_up(): the latch is ESTABLISHED and has never been BROKEN or CLOSED since the channel was
      made (a latch that recovers from BROKEN needs a new binding: the bound GSS handle must not
      silently continue: an end-point binding does not name one connection, RFC 5056 §2).
    - on_break(cb): fired once, on the first ALERT to BROKEN or CLOSED (or the owner's release).

    Build it with :meth:`for_latch` (approach 2, latch in the LD), :meth:`for_ulp_latch` (approach
    1, latch in a UlpLatch), or :meth:`for_params` with an ``is_established`` probe (call
    :meth:`mark_broken` on break).
    """

    def __init__(self, params: LatchParams, role: RpcRole, is_established: Callable[[], bool]) -> None:
        self._params = params
        self._role = role
        self._data = binding_data_for(params, role)
        self._protection = params.protection  # integrity always: every suite authenticates
        self._is_established = is_established
        self._broken = False
        self._callbacks: list[BreakCallback] = []

    @classmethod
    def for_latch(cls, latches: LatchDatabase, handle: int, role: RpcRole) -> LatchChannel:
        info = latches.inquire_latch(handle)
        if info.params is None or info.state is not LatchState.ESTABLISHED:
            raise ChannelBindingUnavailable(f"latch {handle} is {info.state.value}, not ESTABLISHED")

        def established() -> bool:
            latch = latches.get(handle)
            return latch is not None and latch.state is LatchState.ESTABLISHED

        channel = cls(info.params, role, established)
        latches.add_observer(handle, channel.handle_alert)
        return channel

    @classmethod
    def for_ulp_latch(cls, ulp: UlpLatch, role: RpcRole) -> LatchChannel:
        """Approach 1: the channel of a TCB-held latch. Its parameters come from the SA that
        protected the flow's first packet (it must still be in the SAD); the channel goes down
        when the UlpLatch breaks or closes."""
        tag = ulp.tag
        if ulp.state is not UlpLatchState.LATCHED or tag is None or not tag.protected:
            raise ChannelBindingUnavailable(f"{ulp.flow} is not latched to an SA ({ulp.state.value})")
        assert tag.sa_id is not None
        sa = ulp.engine.sad.get(tag.sa_id)
        if sa is None:
            raise ChannelBindingUnavailable(f"the SA that latched {ulp.flow} is gone; no parameters to bind")
        channel = cls(params_from_sa(sa, ulp.flow, None), role, lambda: ulp.state is UlpLatchState.LATCHED)
        ulp.add_observer(lambda _latch: channel.mark_broken())
        return channel

    @classmethod
    def for_params(
        cls, params: LatchParams, role: RpcRole, is_established: Callable[[], bool]
    ) -> LatchChannel:
        return cls(params, role, is_established)

    @property
    def params(self) -> LatchParams:
        return self._params

    @property
    def role(self) -> RpcRole:
        return self._role

    @property
    def binding_prefix(self) -> str:
        return CB_PREFIX

    @property
    def binding_data(self) -> bytes:
        return self._data

    @property
    def protection(self) -> Protection:
        return self._protection

    def is_up(self) -> bool:
        return not self._broken and self._is_established()

    def on_break(self, callback: BreakCallback) -> None:
        if self._broken or not self._is_established():
            self._broken = True
            callback(self)
            return
        self._callbacks.append(callback)

    def handle_alert(self, alert: Alert) -> None:
        """ALERT receiver: BROKEN or CLOSED takes the channel down for good."""
        if alert.new_state in (LatchState.BROKEN, LatchState.CLOSED):
            self.mark_broken()

    def mark_broken(self) -> None:
        if self._broken:
            return
        self._broken = True
        callbacks, self._callbacks = self._callbacks, []
        for cb in callbacks:
            cb(self)
