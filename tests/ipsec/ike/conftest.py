"""Fixtures of the IKE exchange tests (the harness itself is ike_harness.py)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from ike_harness import A_POLICY, NFS_POLICY, A, B, Keys, Pair, btns_pad, key_pad, make_config

from rpclatch.ipsec.ike.config import IkeConfig
from rpclatch.ipsec.ike.dispatcher import IkeDispatcher


@pytest.fixture(scope="session")
def keys() -> Keys:
    return Keys(ed25519.Ed25519PrivateKey.generate(), ed25519.Ed25519PrivateKey.generate())


@pytest.fixture
def make_pair() -> Callable[..., Pair]:
    def make(a_config: IkeConfig, b_config: IkeConfig, **b_kw: object) -> Pair:
        return Pair(IkeDispatcher(a_config, A), IkeDispatcher(b_config, B, **b_kw))  # type: ignore[arg-type]

    return make


@pytest.fixture
def btns_pair(keys: Keys, make_pair: Callable[..., Pair]) -> Pair:
    """A: Ed25519 raw key, accepts only B's key. B: Ed25519 raw key, accepts any key (BTNS)."""
    return make_pair(
        make_config(keys.a, key_pad(keys.b_spki), A_POLICY),
        make_config(keys.b, btns_pad(), NFS_POLICY),
    )
