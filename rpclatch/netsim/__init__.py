"""Deterministic simulated network for IPsec connection latching (RFC 5660), in-process.

Everything runs on one virtual clock (:class:`clock.Scheduler`) with one seeded RNG, so a scenario
replays byte for byte and runs in milliseconds. Packets on the wire are real: IPv4/IPv6, TCP
headers with checksums, UDP, ESP with AES-GCM (RFC 4303/4106), exportable as pcapng that tshark
decodes and decrypts.

Start at :class:`network.SimNetwork`: it makes hosts (:class:`host.Host`: ``listen``, ``connect``,
``udp_bind``) and attackers (:class:`attacker.Attacker`), gives a host IPsec
(``enable_ipsec`` -> :class:`stack.IpsecStack`, with the host's IKEv2 daemon :class:`ike.SimIkeDaemon`
and the engine's key manager on it, :class:`keying.IkeKeyManager`), runs the clock and exports
the capture. :mod:`rpc` runs ONC RPC over the simulated streams (:mod:`stream`).
:mod:`rpclatch.netsim.testing` holds what only tests and benchmarks use: a two-host lab, named
latching scenarios and wire oracles.
"""
