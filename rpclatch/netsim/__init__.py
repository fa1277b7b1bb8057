"""Deterministic simulated network for IPsec connection latching (RFC 5660), in-process.

Everything runs on one virtual clock (:class:`clock.Scheduler`) with one seeded RNG, so a scenario
replays byte for byte and runs in milliseconds. Packets on the wire are real: IPv4/IPv6, TCP
headers with checksums, UDP, ESP with AES-GCM (RFC 4303/4106), exportable as pcapng that tshark
decodes and decrypts (``World.export_pcapng(pcap, esp_sa)``).

Public API (short):

* ``World(seed)``; ``world.add_host(name, *addrs)`` -> :class:`host.Host`;
  ``world.add_attacker(name, *addrs)`` -> :class:`attacker.Attacker`;
  ``world.enable_ipsec(host, spd=, pad=, approach=Approach.POLICY|ULP, credentials=, ike=IkeMode.X,
  anchors=, config=)`` -> :class:`stack.IpsecStack` (also ``stack.stack_of(host)``);
  ``world.credentials("btns"|"null"|"cert", ca=, subject=)``, ``world.ca(name)``;
  ``world.run_for(s)``, ``world.run_until(pred, timeout)``, ``world.now``, ``world.wire``,
  ``world.esp_keys``, ``world.export_pcapng(path, esp_sa_path)``.
* ``host.listen(port, addr=None, on_accept=None, **opts)`` -> :class:`host.Listener` (``.accepted``,
  ``.alerts``, ``.latch``); ``host.connect(addr, port, local_port=None, local_addr=None, protect=None|
  True|False, request=LatchRequest, disposition=BrokenDisposition, privileged=False)`` ->
  :class:`stream.StreamConnection` (``.state``, ``.events``/``.kinds()``, ``.received``, ``.send()``,
  ``.close()``, ``.abort()``, ``.channel`` (LatchChannel or None), ``.latch_info`` (ConnLatch));
  ``host.udp_bind(port)``; ``host.claim_address(a)`` / ``release_address(a)``.
* ``stack.latch_state(conn)``, ``stack.latch_of(conn)`` (INQUIRE_LATCH), ``stack.is_latched(conn)``,
  ``stack.drops``, ``stack.engine`` (H3's IPsecEngine), ``stack.sike`` (the host's IKE daemon,
  :class:`ike.SikeDaemon`: ``mode``, ``initiate(local, peer, selectors)``, ``start_dpd()``,
  ``expire_child()``, ``remove_child()``); the engine's key manager on top of it is
  :class:`keying.SikeKeyManager`.
* Attacker: ``inject(pkt)``, ``inject_tcp(...)``, ``inject_protected(...)`` (own SAs), ``drop(name,
  pred)``, ``blackhole(a, b)``, ``stop_dropping()``, ``sniff()`` / ``sniffed``, ``claim_address``.
* RPC: ``rpc.SimRpcClient(conn, auth=None)`` (``call()`` synchronous on virtual time, raises
  ``SimConnectionReset`` after a reset), ``rpc.SimRpcServer(listener, dispatcher)`` (sets
  ``ConnectionInfo.channel`` to the connection's LatchChannel).
* Test and benchmark support (:mod:`rpclatch.netsim.testing`): ``testing.lab.Lab.build(...)``
  two-host lab; ``testing.scenarios.run_scenario(name, approach)``;
  ``testing.wireview.decode_wire(hub)`` / ``cleartext_after`` / ``leaked`` (wire oracles).
"""
