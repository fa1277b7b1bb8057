"""Test and benchmark support for the simulated network; nothing else in the package imports it.

- :mod:`~rpclatch.netsim.testing.lab` a ready-made two-host lab (client, server, optional attacker);
- :mod:`~rpclatch.netsim.testing.scenarios` the named latching scenarios, runnable under either
  approach, each measured on the wire (:class:`~rpclatch.netsim.testing.scenarios.LatchScenarioResult`);
- :mod:`~rpclatch.netsim.testing.wireview` wire oracles: decode every captured frame (ESP
  decrypted with the keys the hosts registered) and ask which segments of a flow were cleartext
  or readable by a third host.

It lives in the package rather than under ``tests/`` because the benchmarks are standalone scripts
that import the installed package. The demo has its own, RPC-aware wire observer
(:mod:`rpclatch.demo.wiretap`).
"""
