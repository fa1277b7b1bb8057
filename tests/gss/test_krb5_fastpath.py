"""The OpenSSL per-message path (rpclatch.gss.krb5) proven against MIT Kerberos, never against
itself: for every AES enctype the realm issues, with and without an acceptor subkey, in both
roles, tokens we make are verified/unwrapped by an MIT context and tokens MIT makes by ours, for
sizes 0..64 KiB+; tampered tokens are rejected by both (hypothesis), and a tampered MIT token
gets the same verdict from ours as from an MIT twin of the same context (``gss_export_sec_context``
imported twice: one copy exported to the fast path, one kept on MIT).

A service principal with keys of all four AES enctypes (and Camellia, which the fast path does
not implement) is added to the shared realm; the initiator credentials are restricted to one
enctype at a time (``gss_krb5_set_allowable_enctypes``) so the session key, and with it the
context, uses it.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from typing import Any

import gssapi.raw as g
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rpclatch.gss.errors import GssError, GssMajor
from rpclatch.gss.krb5.cfx import CfxContext
from rpclatch.gss.krb5.lucid import export_cfx, token_enctype
from rpclatch.gss.provider import FASTPATH_ENV, GssapiProvider
from rpclatch.gss.realm import ThrowawayRealm

AES = (17, 18, 19, 20)
CAMELLIA256 = 26
SIZES = (0, 1, 15, 16, 17, 31, 32, 33, 100, 1024, 4100, 65536, 65536 + 13)
_ALL_KEYS = (
    "aes256-cts-hmac-sha1-96:normal aes128-cts-hmac-sha1-96:normal aes128-cts-hmac-sha256-128:normal "
    "aes256-cts-hmac-sha384-192:normal camellia256-cts-cmac:normal"
)
_REJECT = (GssMajor.GSS_S_BAD_MIC, GssMajor.GSS_S_DEFECTIVE_TOKEN)


@dataclass
class Service:
    name: Any  # GSS name of fastpath@host
    acceptor_creds: Any
    keytab: str
    target: str


def _kadmin(realm: ThrowawayRealm, query: str) -> None:
    subprocess.run(
        ["/usr/sbin/kadmin.local", "-q", query],
        env={**os.environ, **realm.env},
        check=True,
        capture_output=True,
    )


def _add_service(realm: ThrowawayRealm, service: str, keys: str) -> Service:
    keytab = os.path.join(realm.tmpdir, f"{service}.keytab")
    princ = f"{service}/{realm.hostname}"
    _kadmin(realm, f'addprinc -randkey -e "{keys}" {princ}')
    _kadmin(realm, f'ktadd -k {keytab} -e "{keys}" {princ}')
    target = f"{service}@{realm.hostname}"
    name = g.import_name(target.encode(), g.NameType.hostbased_service)
    creds = g.acquire_cred_from({b"keytab": keytab.encode()}, name=name, usage="accept").creds
    return Service(name, creds, keytab, target)


@pytest.fixture(scope="module")
def service(realm: ThrowawayRealm) -> Service:
    return _add_service(realm, "fastpath", _ALL_KEYS)


def mit_pair(svc: Service, etype: int, mutual: bool, extra_flags: int = 0) -> tuple[Any, Any]:
    """An established MIT (initiator, acceptor) pair whose tokens use ``etype``; ``mutual``
    decides whether the acceptor asserts a subkey (MIT does so only with mutual authentication)."""
    creds = g.acquire_cred(None, usage="initiate").creds
    g.krb5_set_allowable_enctypes(creds, [etype])
    flags = g.RequirementFlag.integrity | g.RequirementFlag.confidentiality | extra_flags
    if mutual:
        flags |= g.RequirementFlag.mutual_authentication
    i = g.init_sec_context(svc.name, creds=creds, flags=flags)
    a = g.accept_sec_context(i.token, acceptor_creds=svc.acceptor_creds)
    ictx = i.context
    if mutual:
        ictx = g.init_sec_context(
            svc.name, creds=creds, context=ictx, flags=flags, input_token=a.token
        ).context
    assert token_enctype(ictx) == etype and token_enctype(a.context) == etype
    return ictx, a.context


@dataclass
class Case:
    """Our side (``ours``, exported) of role ``ours_initiator``, its MIT twin and the MIT peer."""

    ours: CfxContext
    twin: Any
    peer: Any
    subkey: bool


def make_case(svc: Service, etype: int, mutual: bool, ours_initiator: bool, warm: int = 3) -> Case:
    ictx, actx = mit_pair(svc, etype, mutual)
    mine, peer = (ictx, actx) if ours_initiator else (actx, ictx)
    for _ in range(warm):  # MIT uses some sequence numbers before the export
        g.get_mic(mine, b"before export")
    before = g.get_mic(mine, b"last")
    blob = g.export_sec_context(mine)
    exported, twin = g.import_sec_context(blob), g.import_sec_context(blob)
    ours = export_cfx(exported)
    assert ours is not None and ours.enctype.number == etype
    # the exported context carries on MIT's sequence numbers
    assert ours.send_seq == int.from_bytes(before[8:16], "big") + 1
    return Case(ours, twin, peer, mutual)


CASES = [(e, m, r) for e in AES for m in (True, False) for r in (True, False)]


def _ids(case: tuple[int, bool, bool]) -> str:
    e, m, r = case
    return f"etype{e}-{'subkey' if m else 'nosubkey'}-{'initiator' if r else 'acceptor'}"


@pytest.fixture(scope="module", params=CASES, ids=[_ids(c) for c in CASES])
def case(request: pytest.FixtureRequest, service: Service) -> Case:
    e, m, r = request.param
    return make_case(service, e, m, r)


def test_tokens_interoperate_with_mit_both_ways(case: Case) -> None:
    ours, peer = case.ours, case.peer
    for size in SIZES:
        msg = os.urandom(size)
        # ours -> MIT
        mic = ours.get_mic(msg)
        assert bool(mic[2] & 0x04) == case.subkey  # AcceptorSubkey flag
        g.verify_mic(peer, msg, mic)
        for conf in (True, False):
            res = g.unwrap(peer, ours.wrap(msg, conf))
            assert (bytes(res.message), bool(res.encrypted)) == (msg, conf)
        # MIT -> ours
        ours.verify_mic(msg, g.get_mic(peer, msg))
        for conf in (True, False):
            assert ours.unwrap(g.wrap(peer, msg, conf).message) == (msg, conf)


def test_sequence_numbers_continue_and_match_the_mit_twin(case: Case, service: Service) -> None:
    """Ours and its MIT twin started from the same exported state: the same SND_SEQ per token."""
    fresh = make_case(service, case.ours.enctype.number, case.subkey, True, warm=5)
    for _ in range(4):
        a = fresh.ours.get_mic(b"m")
        b = g.get_mic(fresh.twin, b"m")
        assert a[8:16] == b[8:16]
        w = fresh.ours.wrap(b"w", True)
        v = g.wrap(fresh.twin, b"w", True).message
        assert w[8:16] == v[8:16]


def _rotate(token: bytes, rrc: int) -> bytes:
    """The same Wrap token with its body rotated right by ``rrc`` and RRC set (RFC 4121 §4.2.5)."""
    body = token[16:]
    k = rrc % len(body) if body else 0
    rotated = body[len(body) - k :] + body[: len(body) - k]
    return token[:6] + rrc.to_bytes(2, "big") + token[8:16] + rotated


@pytest.mark.parametrize("rrc", [1, 12, 16, 28, 60])
def test_any_rrc_is_accepted(case: Case, rrc: int) -> None:
    msg = os.urandom(100)
    for conf in (True, False):
        assert case.ours.unwrap(_rotate(g.wrap(case.peer, msg, conf).message, rrc)) == (msg, conf)
        res = g.unwrap(case.peer, _rotate(case.ours.wrap(msg, conf), rrc))
        assert bytes(res.message) == msg


def _copy(token: bytes) -> bytes:
    """A private copy for MIT: gss_unwrap rewrites the EC and RRC fields of the token it is given
    in place (python-gssapi hands it the bytes object's own buffer)."""
    return bytes(bytearray(token))


def _mit_verdict(fn: Any, *args: Any) -> Any:
    try:
        return ("ok", fn(*args))
    except g.GSSError:
        return ("rejected", None)


def _our_verdict(fn: Any, *args: Any) -> Any:
    try:
        return ("ok", fn(*args))
    except GssError as exc:
        assert exc.major in _REJECT, exc
        return ("rejected", None)


def _flip(token: bytes, bit: int) -> bytes:
    out = bytearray(token)
    bit %= len(out) * 8
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    kind=st.sampled_from(["mic", "wrap", "seal"]),
    msg=st.binary(max_size=300),
    bit=st.integers(min_value=0),
    cut=st.integers(min_value=0, max_value=40),
)
def test_tampered_tokens_rejected_by_both(case: Case, kind: str, msg: bytes, bit: int, cut: int) -> None:
    ours, peer, twin = case.ours, case.peer, case.twin
    # MIT's token, tampered: ours must reach the same verdict as the MIT twin of our context.
    if kind == "mic":
        token = g.get_mic(peer, msg)
        for bad in (_flip(token, bit), token[: max(0, len(token) - 1 - cut)]):
            mine = _our_verdict(ours.verify_mic, msg, bad)
            theirs = _mit_verdict(g.verify_mic, twin, msg, bad)
            assert mine[0] == theirs[0] == "rejected"
        return
    token = g.wrap(peer, msg, kind == "seal").message
    for bad in (_flip(token, bit), token[: max(0, len(token) - 1 - cut)]):
        mine = _our_verdict(ours.unwrap, bad)
        theirs = _mit_verdict(g.unwrap, twin, _copy(bad))
        assert mine[0] == theirs[0]
        if mine[0] == "ok":  # only an RRC change by a multiple of the body length is harmless
            assert bad[6:8] != token[6:8] and mine[1] == (msg, kind == "seal")
            assert bytes(theirs[1].message) == msg
    # Our token, tampered: MIT rejects it (bar the same harmless RRC case).
    ours_token = ours.wrap(msg, kind == "seal")
    bad = _flip(ours_token, bit)
    verdict = _mit_verdict(g.unwrap, peer, _copy(bad))
    if verdict[0] == "ok":
        assert bad[6:8] != ours_token[6:8] and bytes(verdict[1].message) == msg


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(msg=st.binary(max_size=200), bit=st.integers(min_value=0))
def test_our_tampered_mics_rejected_by_mit(case: Case, msg: bytes, bit: int) -> None:
    mic = case.ours.get_mic(msg)
    with pytest.raises(g.GSSError):
        g.verify_mic(case.peer, msg, _flip(mic, bit))
    with pytest.raises(g.GSSError):
        g.verify_mic(case.peer, msg + b"x", mic)


def test_own_direction_and_garbage_are_refused(case: Case) -> None:
    ours = case.ours
    with pytest.raises(GssError) as err:
        ours.verify_mic(b"m", ours.get_mic(b"m"))  # a reflected token
    assert err.value.major == GssMajor.GSS_S_BAD_MIC
    with pytest.raises(GssError) as err:
        ours.unwrap(ours.wrap(b"m"))
    assert err.value.major == GssMajor.GSS_S_BAD_MIC
    for junk in (b"", b"\x05\x04", b"\x04\x04" + bytes(30), b"\x05\x04\x01\xff" + bytes(12), bytes(64)):
        with pytest.raises(GssError) as err:
            ours.unwrap(junk)
        assert err.value.major in _REJECT
        with pytest.raises(GssError) as err:
            ours.verify_mic(b"", junk)
        assert err.value.major in _REJECT


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    junk=st.one_of(
        st.binary(max_size=120),
        st.builds(lambda tail: b"\x05\x04" + tail, st.binary(max_size=120)),
        st.builds(lambda tail: b"\x04\x04" + tail, st.binary(max_size=60)),
    )
)
def test_arbitrary_bytes_raise_only_gss_errors(case: Case, junk: bytes) -> None:
    for call in (lambda: case.ours.unwrap(junk), lambda: case.ours.verify_mic(b"m", junk)):
        with pytest.raises(GssError) as err:
            call()
        assert err.value.major in _REJECT


def test_bytes_like_inputs(case: Case) -> None:
    """memoryview and bytearray messages and tokens work as bytes do."""
    msg = os.urandom(3000)
    for conf in (True, False):
        token = case.ours.wrap(memoryview(msg), conf)
        assert bytes(g.unwrap(case.peer, token).message) == msg
        mit = g.wrap(case.peer, msg, conf).message
        assert case.ours.unwrap(memoryview(mit)) == (msg, conf)
        assert case.ours.unwrap(bytearray(mit)) == (msg, conf)
    g.verify_mic(case.peer, msg, case.ours.get_mic(memoryview(msg)))
    case.ours.verify_mic(memoryview(msg), memoryview(g.get_mic(case.peer, msg)))


def test_delete_drops_the_keys(service: Service) -> None:
    fresh = make_case(service, 18, True, True)
    fresh.ours.delete()
    for call in (lambda: fresh.ours.get_mic(b"x"), lambda: fresh.ours.unwrap(b"x" * 40)):
        with pytest.raises(GssError) as err:
            call()
        assert err.value.major == GssMajor.GSS_S_NO_CONTEXT


def test_expired_context_refuses_per_message_calls(service: Service) -> None:
    fresh = make_case(service, 17, True, False)
    fresh.ours._endtime = 1  # long past
    with pytest.raises(GssError) as err:
        fresh.ours.get_mic(b"x")
    assert err.value.major == GssMajor.GSS_S_CONTEXT_EXPIRED


def test_unsupported_enctype_stays_on_mit(service: Service) -> None:
    """Camellia (RFC 6803) is not implemented: no export, and the MIT context keeps working."""
    ictx, actx = mit_pair(service, CAMELLIA256, True)
    assert export_cfx(ictx) is None and export_cfx(actx) is None
    res = g.unwrap(actx, g.wrap(ictx, b"still MIT", True).message)
    assert bytes(res.message) == b"still MIT"


@pytest.mark.parametrize("flag", ["replay_detection", "out_of_sequence_detection"])
def test_contexts_with_gss_sequence_checks_stay_on_mit(service: Service, flag: str) -> None:
    """The exported copy does not check received sequence numbers, so such contexts are not moved."""
    ictx, actx = mit_pair(service, 18, True, int(getattr(g.RequirementFlag, flag)))
    assert export_cfx(ictx) is None and export_cfx(actx) is None
    res = g.unwrap(actx, g.wrap(ictx, b"still MIT", True).message)
    assert bytes(res.message) == b"still MIT"


# -- the provider ------------------------------------------------------------------------------


def _provider_pair(realm: ThrowawayRealm, svc: Service, **kw: Any) -> tuple[Any, Any]:
    i = GssapiProvider(ccache=realm.users["alice"].ccache, **kw).initiate(svc.target)
    a = GssapiProvider(svc.target, keytab=svc.keytab, **kw).accept()
    out = a.step(i.step(None))
    i.step(out)
    assert i.complete and a.complete
    return i, a


@pytest.mark.parametrize("fast", [True, False])
def test_provider_fast_and_mit_paths_talk_to_each_other(
    realm: ThrowawayRealm, service: Service, fast: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    i = GssapiProvider(ccache=realm.users["alice"].ccache, fastpath=fast).initiate(service.target)
    a = GssapiProvider(service.target, keytab=service.keytab, fastpath=not fast).accept()
    i.step(a.step(i.step(None)))
    assert i.fast_path is fast and a.fast_path is not fast  # type: ignore[attr-defined]
    for size in (0, 1000, 70000):
        msg = os.urandom(size)
        a.verify_mic(msg, i.get_mic(msg))
        i.verify_mic(msg, a.get_mic(msg))
        assert a.unwrap(i.wrap(msg)) == (msg, True)
        assert i.unwrap(a.wrap(msg, confidential=False)) == (msg, False)
    with pytest.raises(GssError) as err:
        a.verify_mic(b"other", i.get_mic(b"m"))
    assert err.value.major == GssMajor.GSS_S_BAD_MIC
    i.delete()
    with pytest.raises(GssError) as err:
        i.wrap(b"x")
    assert err.value.major == GssMajor.GSS_S_NO_CONTEXT
    monkeypatch.setenv(FASTPATH_ENV, "0")
    i2, a2 = _provider_pair(realm, service)
    assert not i2.fast_path and not a2.fast_path
    monkeypatch.setenv(FASTPATH_ENV, "1")
    i3, a3 = _provider_pair(realm, service)
    assert i3.fast_path and a3.fast_path


def test_provider_falls_back_to_mit_for_other_enctypes(realm: ThrowawayRealm, service: Service) -> None:
    """A context whose tokens use Camellia stays on MIT in both roles and works."""
    initiator = GssapiProvider(ccache=realm.users["alice"].ccache, fastpath=True)
    g.krb5_set_allowable_enctypes(initiator._initiator_creds(), [CAMELLIA256])
    i = initiator.initiate(service.target)
    a = GssapiProvider(service.target, keytab=service.keytab, fastpath=True).accept()
    i.step(a.step(i.step(None)))
    assert not i.fast_path and not a.fast_path  # type: ignore[attr-defined]
    assert a.unwrap(i.wrap(b"camellia on MIT")) == (b"camellia on MIT", True)
    a.verify_mic(b"m", i.get_mic(b"m"))
    i.verify_mic(b"r", a.get_mic(b"r"))


def test_provider_context_is_safe_across_threads(realm: ThrowawayRealm, service: Service) -> None:
    """The exported copy's sequence counter and OpenSSL contexts are shared state: under the
    provider's lock, tokens made by several threads at once are all distinct and all verify."""
    import threading

    i, a = _provider_pair(realm, service, fastpath=True)
    assert i.fast_path
    tokens: list[bytes] = []
    lock = threading.Lock()

    def work(n: int) -> None:
        mine = [i.wrap(bytes([n]) * 300) for _ in range(500)]
        with lock:
            tokens.extend(mine)

    import sys

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible (without the lock, this breaks)
    try:
        threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(interval)
    assert len({t[8:16] for t in tokens}) == len(tokens) == 2000  # no SND_SEQ twice
    for token in tokens:
        message, conf = a.unwrap(token)
        assert conf and len(message) == 300 and len(set(message)) == 1


def test_mit_path_leaves_the_callers_token_intact(realm: ThrowawayRealm, service: Service) -> None:
    """gss_unwrap rewrites the buffer it is given; the provider must not let it rewrite ours."""
    i, a = _provider_pair(realm, service, fastpath=False)
    for conf in (False, True):
        token = i.wrap(b"hello world" * 3, confidential=conf)
        before = bytes(bytearray(token))
        assert a.unwrap(token) == (b"hello world" * 3, conf)
        assert token == before
        assert a.unwrap(token) == (b"hello world" * 3, conf)  # and it can be unwrapped again
