"""The python-gssapi provider against a real KDC: flags, out-of-order tokens, acceptor restriction,
channel bindings and error mapping."""

from __future__ import annotations

import pytest

from rpclatch.gss.errors import GssError, GssMajor
from rpclatch.gss.provider import GssapiProvider, GssContext
from rpclatch.gss.realm import ThrowawayRealm


def pair(
    realm: ThrowawayRealm, target: str | None = None, acceptor: str | None = None
) -> tuple[GssContext, GssContext]:
    i = GssapiProvider(ccache=realm.users["alice"].ccache).initiate(target or realm.service_name)
    a = GssapiProvider(acceptor or realm.service_name, keytab=realm.keytab).accept()
    out = a.step(i.step(None))
    assert a.complete
    i.step(out)
    assert i.complete
    return i, a


def test_context_and_out_of_order_tokens(realm: ThrowawayRealm) -> None:
    i, a = pair(realm)
    assert a.peer_name == realm.users["alice"].principal
    assert a.lifetime is not None and a.lifetime > 0
    mics = [i.get_mic(bytes([n]) * 4) for n in range(5)]
    # No GSS replay/sequence detection: RPCSEC_GSS reorders, retransmits and has its own window.
    for n in (4, 0, 2, 2, 1, 3):
        a.verify_mic(bytes([n]) * 4, mics[n])
    sealed = [i.wrap(b"m%d" % n) for n in range(3)]
    assert [a.unwrap(t) for t in reversed(sealed)] == [(b"m2", True), (b"m1", True), (b"m0", True)]
    assert i.unwrap(a.wrap(b"integ only", confidential=False)) == (b"integ only", False)
    with pytest.raises(GssError) as err:
        a.verify_mic(b"other", mics[0])
    assert err.value.major == GssMajor.GSS_S_BAD_MIC
    i.delete()
    with pytest.raises(GssError) as err:
        i.get_mic(b"x")
    assert err.value.major == GssMajor.GSS_S_NO_CONTEXT


def test_acceptor_only_accepts_its_own_service_principal() -> None:
    with ThrowawayRealm(["erin"], extra_services=["host"]) as realm:
        realm.activate()
        i = GssapiProvider(ccache=realm.users["erin"].ccache).initiate(f"host@{realm.hostname}")
        nfs_only = GssapiProvider(realm.service_name, keytab=realm.keytab).accept()
        with pytest.raises(GssError):  # a host/ ticket is in the keytab but not for this service
            nfs_only.step(i.step(None))
        i2 = GssapiProvider(ccache=realm.users["erin"].ccache).initiate(f"host@{realm.hostname}")
        host = GssapiProvider(f"host@{realm.hostname}", keytab=realm.keytab).accept()
        host.step(i2.step(None))
        assert host.complete


def test_missing_credentials_map_to_no_cred(realm: ThrowawayRealm) -> None:
    with pytest.raises(GssError) as err:
        GssapiProvider(ccache="/nonexistent/ccache").initiate(realm.service_name)
    assert err.value.major == GssMajor.GSS_S_NO_CRED
    with pytest.raises(GssError) as err:
        GssapiProvider().accept()
    assert err.value.major == GssMajor.GSS_S_NO_CRED


def _cfx_mic_seq(token: bytes) -> int:
    """SND_SEQ of a Kerberos CFX MIC token (RFC 4121 §4.2.6.1: 04 04, flags, 5 x FF, 8-byte seq)."""
    assert token[:2] == b"\x04\x04" and token[3:8] == b"\xff" * 5, token[:16].hex()
    return int.from_bytes(token[8:16], "big")


def test_per_context_lock_keeps_cfx_sequence_numbers_unique(realm: ThrowawayRealm) -> None:
    """MIT contexts are not thread-safe and python-gssapi releases the GIL: without the provider's
    per-context lock, two threads doing get_mic on one context emit duplicate SND_SEQ numbers.
    With it, every token has its own number and
    together they are one gap-free run."""
    import threading

    i, a = pair(realm)
    first = _cfx_mic_seq(i.get_mic(b"start"))
    per_thread = 20000
    barrier = threading.Barrier(2)
    results: list[list[bytes]] = [[], []]
    errors: list[BaseException] = []

    def worker(out: list[bytes]) -> None:
        try:
            barrier.wait()
            for _ in range(per_thread):
                out.append(i.get_mic(b"payload"))
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(out,)) for out in results]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    seqs = [_cfx_mic_seq(tok) for out in results for tok in out]
    assert len(set(seqs)) == len(seqs) == 2 * per_thread
    assert sorted(seqs) == list(range(first + 1, first + 1 + 2 * per_thread))
    a.verify_mic(b"payload", results[0][-1])  # the tokens are still good MICs
