"""IKEv2 handshakes between rpclatch's own initiator and responder, in one process (sans-IO, no
sockets, no kernel).

* ``ike.handshakes`` -- IKE_SA_INIT + IKE_AUTH with the first CHILD_SA (default suite: AES-GCM-16
  256, PRF_HMAC_SHA2_256, Curve25519; Ed25519 raw public keys both ways, the responder accepting
  any key (BTNS); ESP AES-GCM-16 256, transport mode, one 5-tuple) per second: both ends' work,
  datagrams handed from one dispatcher to the other.
* baseline = the raw crypto of one such handshake through ``cryptography`` directly, timed in
  the same process right beside each round: two X25519 key generations and two key agreements,
  two Ed25519 signatures and two verifications (each over ~600 octets, the size of the signed
  octets), SKEYSEED and the prf+ of the seven IKE keys on both sides, the CHILD_SA keymat on both
  sides, and the AES-GCM sealing and opening of the two IKE_AUTH messages. It is a ceiling: the
  ratio is the share of the handshake's time that is the crypto it cannot avoid (target >= 0.5).

Medians over ``--rounds`` rounds of ``--seconds`` each (the machine is shared).

Usage: ``python benchmarks/ike.py [--seconds S] [--rounds R]``.
"""

from __future__ import annotations

import argparse
import hmac
import os
import statistics
import time

from cryptography.hazmat.primitives.asymmetric import ed25519, x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from rpclatch.ipsec.ike import ChildRequest, Credentials, IkeConfig, IkeDispatcher, IkeState
from rpclatch.ipsec.model import (
    AddressRange,
    AuthMethod,
    FiveTuple,
    IpProto,
    PortRange,
    Selector,
    ip,
)
from rpclatch.ipsec.pad import ChildSaAuthorization, PadEntry, PeerAuthorizationDatabase, PublicKeyPattern

A, B = ip("192.0.2.1"), ip("192.0.2.2")
FLOW = FiveTuple.of(A, 40000, B, 2049, IpProto.TCP)


def _configs() -> tuple[IkeConfig, IkeConfig]:
    pad = PeerAuthorizationDatabase(
        [
            PadEntry(
                "btns",
                PublicKeyPattern(),
                AuthMethod.RAW_PUBLIC_KEY,
                ChildSaAuthorization(own_address_only=True),
            )
        ]
    )
    a = IkeConfig(
        Credentials.raw_key(ed25519.Ed25519PrivateKey.generate()), pad, (Selector(AddressRange.single(A)),)
    )
    policy = (Selector(AddressRange.single(B), None, IpProto.TCP, PortRange.single(2049)),)
    b = IkeConfig(Credentials.raw_key(ed25519.Ed25519PrivateKey.generate()), pad, policy)
    return a, b


def handshake(ca: IkeConfig, cb: IkeConfig, now: float) -> None:
    da, db = IkeDispatcher(ca, (A, 500)), IkeDispatcher(cb, (B, 500))
    sa = da.initiate((B, 500), ChildRequest(Selector.for_flow(FLOW)), now)
    for _ in range(4):
        for data, _dest in da.datagrams_to_send(now):
            db.receive_datagram(data, (A, 500), now)
        for data, _dest in db.datagrams_to_send(now):
            da.receive_datagram(data, (B, 500), now)
    if sa.state is not IkeState.ESTABLISHED or not sa.children:
        raise SystemExit(f"handshake did not complete: {sa.state}")


def raw_crypto(sig_key_a: ed25519.Ed25519PrivateKey, sig_key_b: ed25519.Ed25519PrivateKey) -> None:
    octets = os.urandom(600)
    ni, nr = os.urandom(32), os.urandom(32)
    xa, xb = x25519.X25519PrivateKey.generate(), x25519.X25519PrivateKey.generate()
    g1 = xa.exchange(xb.public_key())
    g2 = xb.exchange(xa.public_key())
    for g in (g1, g2):
        seed = hmac.digest(ni + nr, g, "sha256")
        _prf_plus(seed, ni + nr + bytes(16), 32 * 3 + 36 * 2)
        _prf_plus(b"d" * 32, ni + nr, 72)
    sa, sb = sig_key_a.sign(octets), sig_key_b.sign(octets)
    sig_key_a.public_key().verify(sa, octets)
    sig_key_b.public_key().verify(sb, octets)
    gcm = AESGCM(os.urandom(32))
    for _ in range(2):
        nonce = os.urandom(12)
        ct = gcm.encrypt(nonce, octets[:300], octets[:32])
        gcm.decrypt(nonce, ct, octets[:32])


def _prf_plus(key: bytes, seed: bytes, n: int) -> bytes:
    out, t, i = b"", b"", 1
    while len(out) < n:
        t = hmac.digest(key, t + seed + bytes((i,)), "sha256")
        out += t
        i += 1
    return out[:n]


def rate(fn: object, seconds: float) -> float:
    assert callable(fn)
    n, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        fn()
        n += 1
    return n / elapsed


def main(seconds: float, rounds: int) -> None:
    ca, cb = _configs()
    ka, kb = ed25519.Ed25519PrivateKey.generate(), ed25519.Ed25519PrivateKey.generate()
    now = [1000.0]

    def one() -> None:
        now[0] += 1
        handshake(ca, cb, now[0])

    one()  # warm-up
    ours, base = [], []
    for _ in range(rounds):
        ours.append(rate(one, seconds))
        base.append(rate(lambda: raw_crypto(ka, kb), seconds))
    value, baseline = statistics.median(ours), statistics.median(base)
    ratio = value / baseline
    print(
        f"BENCH ike.handshakes value={value:.1f} unit=handshakes/s baseline={baseline:.1f} ratio={ratio:.3f}"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    main(args.seconds, args.rounds)
