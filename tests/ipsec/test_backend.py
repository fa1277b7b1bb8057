"""InProcessBackend keeps the tables an XFRM backend would hold; the engine drives it."""

from __future__ import annotations

from rpclatch.ipsec import examples as ex
from rpclatch.ipsec.backend import Backend, FlowPolicy, InProcessBackend, SocketPolicy
from rpclatch.ipsec.engine import FlowChoice, IPsecEngine
from rpclatch.ipsec.spd import SpdAction

CLI = ex.flow("192.0.2.2", 40000, "192.0.2.1", 2049)


def test_tables_and_reset() -> None:
    be = InProcessBackend()
    entry = ex.nfs_spd()[0]
    be.install_flow_policy(FlowPolicy(CLI, entry, 7))
    be.install_socket_policy(SocketPolicy(3, CLI, entry, None))
    assert be.flow_policies[CLI].reqid == 7 and be.socket_policies[3].flow == CLI
    be.remove_socket_policy(3)
    be.remove_flow_policy(CLI)
    be.remove_flow_policy(CLI)  # absent: no error
    be.install_flow_policy(FlowPolicy(CLI, entry, None))
    be.install_spd(ex.nfs_spd())
    be.reset()
    assert be.flow_policies == {} and be.socket_policies == {} and be.sas == {}
    assert be.spd == tuple(ex.nfs_spd())  # the configured table is not dynamic state: it stays


def test_engine_pushes_bypass_decision_as_socket_policy() -> None:
    be = InProcessBackend()
    e = IPsecEngine(ex.nfs_spd(SpdAction.BYPASS_OR_PROTECT), ex.btns_pad(), backend=be)
    e.request_protection(CLI, FlowChoice.BYPASS, 0.0, socket_id=11)
    assert be.socket_policies[11].entry.action is SpdAction.BYPASS
    assert be.flow_policies[CLI].entry.action is SpdAction.BYPASS
    assert be.spd == tuple(ex.nfs_spd(SpdAction.BYPASS_OR_PROTECT))  # pushed when the engine was made


def test_backend_interface_requires_spd_and_flow_table() -> None:
    """install_spd and flow_policies are part of the interface the engine drives (a backend
    without them cannot be made), not extras of InProcessBackend."""
    assert {"install_spd", "flow_policies"} <= Backend.__abstractmethods__
