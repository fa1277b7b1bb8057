"""A sans-IO IKEv2 core (RFC 7296) with NULL (RFC 7619) and raw-public-key (RFC 7670, BTNS
RFC 5386) authentication.

Modules:

* :mod:`~rpclatch.ipsec.ike.wire` -- the message codec (frozen dataclasses, typed decode errors).
* :mod:`~rpclatch.ipsec.ike.crypto` -- key exchange, PRF/prf+, key derivation, SK payload, AUTH.
* :mod:`~rpclatch.ipsec.ike.errors` -- exceptions per layer, each with its notify type.

No sockets, no clock, no threads: callers pass datagrams and ``now`` in and take datagrams,
events and timer deadlines out. See docs/ike.md.
"""
