"""A ready-made two-host lab for latching scenarios (tests, demo): client ``a`` = 192.0.2.1,
server ``b`` = 192.0.2.2, NFS port 2049 protected with BTNS_OK (RFC 5386 §3.3), wildcard BTNS
PAD for 192.0.2.0/24, optional attacker ``c`` = 192.0.2.66 with its own IPsec stack and key.

::

    lab = Lab.build(approach=Approach.ULP)
    client, server = lab.open()            # latched TCP connection a -> b:2049
    lab.send(client, b"data"); assert bytes(server.received) == b"data"
    lab.export(Path("runs"), "latched")    # latched.pcapng + its esp_sa and ikev2 key files
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rpclatch.ipsec import examples
from rpclatch.ipsec.engine import Approach, EngineConfig
from rpclatch.ipsec.pad import PadEntry
from rpclatch.ipsec.spd import SpdAction, SpdEntry
from rpclatch.netsim.attacker import Attacker
from rpclatch.netsim.errors import SimLocalError
from rpclatch.netsim.host import Host, Listener
from rpclatch.netsim.identity import Credentials
from rpclatch.netsim.ike import IkeMode
from rpclatch.netsim.network import SimNetwork
from rpclatch.netsim.pcapng import write_capture_keys
from rpclatch.netsim.stack import IpsecStack, stack_of
from rpclatch.netsim.stream import StreamConnection, StreamState

CLIENT_ADDR = "192.0.2.1"
SERVER_ADDR = "192.0.2.2"
ATTACKER_ADDR = "192.0.2.66"
NFS_PORT = 2049


@dataclass
class Lab:
    net: SimNetwork
    a: Host
    b: Host
    approach: Approach
    spd: list[SpdEntry]
    pad: list[PadEntry]
    config: EngineConfig | None
    listeners: dict[int, Listener] = field(default_factory=dict)

    @classmethod
    def build(
        cls,
        *,
        seed: int = 1,
        approach: Approach = Approach.POLICY,
        spd: Iterable[SpdEntry] | None = None,
        pad: Iterable[PadEntry] | None = None,
        client_ike: IkeMode = IkeMode.PRESENT,
        server_ike: IkeMode = IkeMode.PRESENT,
        config: EngineConfig | None = None,
        msl: float = 30.0,
        client_credentials: str = "btns",
        server_credentials: str = "btns",
    ) -> Lab:
        net = SimNetwork(seed=seed)
        spd_l = list(spd) if spd is not None else examples.nfs_spd(SpdAction.PROTECT)
        pad_l = list(pad) if pad is not None else examples.btns_pad()
        a = net.add_host("a", CLIENT_ADDR, msl=msl)
        b = net.add_host("b", SERVER_ADDR, msl=msl)
        net.enable_ipsec(
            a,
            spd=spd_l,
            pad=pad_l,
            approach=approach,
            ike=client_ike,
            config=config,
            credentials=net.credentials(client_credentials),
        )
        net.enable_ipsec(
            b,
            spd=spd_l,
            pad=pad_l,
            approach=approach,
            ike=server_ike,
            config=config,
            credentials=net.credentials(server_credentials),
        )
        return cls(net, a, b, approach, spd_l, pad_l, config)

    @staticmethod
    def stack(host: Host) -> IpsecStack:
        stack = stack_of(host)
        if stack is None:
            raise SimLocalError(f"{host.name} has no IPsec stack")
        return stack

    def attacker(
        self,
        name: str = "c",
        addr: str = ATTACKER_ADDR,
        *,
        ipsec: bool = True,
        credentials: Credentials | None = None,
        pad: Iterable[PadEntry] | None = None,
    ) -> Attacker:
        """An attacker on the segment, by default with its own IPsec stack and BTNS key."""
        c = self.net.add_attacker(name, addr)
        if ipsec:
            self.net.enable_ipsec(
                c,
                spd=self.spd,
                pad=list(pad) if pad is not None else self.pad,
                approach=self.approach,
                config=self.config,
                credentials=credentials or self.net.credentials("btns"),
            )
        return c

    def export(self, directory: Path, stem: str) -> dict[str, Path]:
        """Write the capture ``stem.pcapng`` (raw IP) and the key files beside it, ``stem.esp_sa``
        (every ESP SA) and ``stem.ikev2_decryption_table`` (every IKE SA any host's daemon keyed);
        returns the paths by kind."""
        files = {
            "pcapng": directory / f"{stem}.pcapng",
            "esp_sa": directory / f"{stem}.esp_sa",
            "ikev2_decryption_table": directory / f"{stem}.ikev2_decryption_table",
        }
        self.net.export_pcapng(files["pcapng"])
        daemons = [s.ike for h in self.net.hosts.values() if (s := stack_of(h)) is not None]
        write_capture_keys(files["esp_sa"], files["ikev2_decryption_table"], self.net.esp_keys, daemons)
        return files

    def listen(self, port: int = NFS_PORT, **options: Any) -> Listener:
        lst = self.b.listen(port, **options)
        self.listeners[port] = lst
        return lst

    def open(
        self, port: int = NFS_PORT, *, timeout: float = 30.0, local_port: int | None = None, **options: Any
    ) -> tuple[StreamConnection, StreamConnection | None]:
        """Connect a -> b:port (listening first if needed); run until the handshake is done or
        failed. Returns (client, server-side connection or None)."""
        lst = self.listeners.get(port) or self.listen(port)
        before = len(lst.accepted)
        client = self.a.connect(SERVER_ADDR, port, local_port=local_port, **options)
        self.net.run_until(
            lambda: (
                client.state is not StreamState.SYN_SENT
                and (client.state is StreamState.CLOSED or client.is_open)
                and bool(client.events)
            ),
            timeout,
        )
        self.net.run_for(0.01)
        server = lst.accepted[before] if len(lst.accepted) > before else None
        return client, server

    def send(self, conn: StreamConnection, data: bytes, settle: float = 0.5) -> None:
        conn.send(data)
        self.net.run_for(settle)
