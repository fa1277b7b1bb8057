"""A sans-IO IKEv2 core (RFC 7296) with raw-public-key (RFC 7670, BTNS RFC 5386) and NULL
(RFC 7619) authentication. No sockets, no clock, no threads: datagrams and ``now`` in;
datagrams, events and timer deadlines out (docs/ike.md has the full picture).

Public API (everything a UDP/XFRM shell needs)::

    config = IkeConfig(Credentials.raw_key(ed25519_key), pad, policy=(Selector(...),))
    endpoint = IkeDispatcher(config, (local_ip, 500))
    sa = endpoint.initiate((peer_ip, 500), ChildRequest(Selector.for_flow(flow)), now)
    # loop:
    endpoint.receive_datagram(data, (src_ip, src_port), now)   # every datagram from UDP 500
    for data, dest in endpoint.datagrams_to_send(now): sock.sendto(data, dest)
    while (item := endpoint.next_event()) is not None: sa, event = item ...
    deadline = endpoint.get_timer(); ... endpoint.handle_timer(now)
    # local requests on an established SA, then endpoint.poll(sa, now) to collect their output:
    sa.delete(now); sa.delete_child(spi_in, now); sa.check_liveness(now)
    sa.create_child(ChildRequest(...), now); sa.rekey_child(spi_in, now); sa.rekey(now)

The local endpoint must be the address and port peers really send to (not 0.0.0.0): it goes
into the NAT_DETECTION hashes, and a mismatch makes a peer such as strongSwan believe there is a
NAT and move to UDP 4500, which this core does not speak.

Events: :class:`IkeSaEstablished` (the authenticated peer: ``RawPublicKeyPeer`` with its SPKI,
or ``NullAuthPeer``), :class:`ChildSaEstablished` (a :class:`ChildSa`: SPIs, ESP AES-GCM
key || salt per direction, suite, mode, narrowed local-oriented selector),
:class:`ChildSaFailed`, :class:`ChildSaDeleted`, :class:`IkeSaRekeyed` (the new SA is the old
one's ``successor``; the dispatcher routes to it), :class:`IkeSaRekeyFailed`,
:class:`IkeSaDeleted`, :class:`IkeSaFailed` (a :class:`FailureReason` and the notify code).

Hooks for an owner (``IkeConfig``): ``entropy`` (every random octet, for reproducible runs),
``child_spi`` (our inbound CHILD_SA SPIs), ``child_vetter`` (sees a :class:`ChildProposal` and
accepts, narrows or refuses each CHILD_SA a peer asks for, RFC 5660 §2.3); and on the
dispatcher ``refusing`` and ``cancel(sa, now)``.

Modules: ``wire`` (codec), ``crypto`` (key exchange, PRF, keys, SK payload, AUTH), ``certs``
(X.509 end-entity certificates, trust anchors), ``negotiation`` (proposals, TS narrowing),
``config``, ``events``, ``sa`` (one IKE SA),
``dispatcher`` (SPI routing, cookies, half-open limit), ``errors`` (per layer, with notify codes),
``export`` (Wireshark ``ikev2_decryption_table`` rows: ``ikev2_decryption_row(sa.spi_i, sa.spi_r,
sa.keys)``).
"""

from rpclatch.ipsec.ike.certs import TrustAnchor
from rpclatch.ipsec.ike.config import ChildRequest, Credentials, Endpoint, IkeConfig
from rpclatch.ipsec.ike.crypto import ChildKeys, IkeKeys, IkeSuite
from rpclatch.ipsec.ike.dispatcher import IkeDispatcher
from rpclatch.ipsec.ike.errors import (
    IkeCryptoError,
    IkeDecodeError,
    IkeError,
    IkeExchangeError,
    IkeLocalError,
    NotifyType,
)
from rpclatch.ipsec.ike.events import (
    ChildProposal,
    ChildSa,
    ChildSaDeleted,
    ChildSaEstablished,
    ChildSaFailed,
    FailureReason,
    IkeEvent,
    IkeSaDeleted,
    IkeSaEstablished,
    IkeSaFailed,
    IkeSaRekeyed,
    IkeSaRekeyFailed,
)
from rpclatch.ipsec.ike.negotiation import DEFAULT_ESP_SUITES, DEFAULT_IKE_SUITES
from rpclatch.ipsec.ike.sa import IkeSa, IkeState

__all__ = [
    "DEFAULT_ESP_SUITES",
    "DEFAULT_IKE_SUITES",
    "ChildKeys",
    "ChildProposal",
    "ChildRequest",
    "ChildSa",
    "ChildSaDeleted",
    "ChildSaEstablished",
    "ChildSaFailed",
    "Credentials",
    "Endpoint",
    "FailureReason",
    "IkeConfig",
    "IkeCryptoError",
    "IkeDecodeError",
    "IkeDispatcher",
    "IkeError",
    "IkeEvent",
    "IkeExchangeError",
    "IkeKeys",
    "IkeLocalError",
    "IkeSa",
    "IkeSaDeleted",
    "IkeSaEstablished",
    "IkeSaFailed",
    "IkeSaRekeyFailed",
    "IkeSaRekeyed",
    "IkeState",
    "IkeSuite",
    "NotifyType",
    "TrustAnchor",
]
