"""``rpclatch demo``: the scenarios, their verdicts and the artefacts they leave in a run directory.

Layout: :mod:`~rpclatch.demo.testbed` builds a scenario's testbed on the simulated network
(client, NFS-like server on TCP 2049 under BYPASS-OR-PROTECT, optional BTNS man in the middle or
rogue) around a real throwaway KDC; :mod:`~rpclatch.demo.scenarios` runs the scenarios and
computes each check from observations (:mod:`~rpclatch.demo.wiretap` decodes the recorded wire
like tshark with the ESP keys; latch states come from INQUIRE_LATCH at both ends);
:mod:`~rpclatch.demo.report` renders the verdict table and JSON; :mod:`~rpclatch.demo.diagram`
draws the SVG / HTML sequence diagrams; :mod:`~rpclatch.demo.runner` ties it together for
:mod:`rpclatch.commands.demo`.

Per scenario N the run directory gets ``N-name.pcapng`` (both segments for the MITM),
``N-name.esp_sa`` (Wireshark ``esp_sa`` rows to decrypt its ESP), ``N-name.ikev2_decryption_table``
(Wireshark ``ikev2_decryption_table`` rows to decrypt its IKEv2 SK payloads), ``N-name.svg`` and
``N-name.html``; plus ``summary.txt`` and ``summary.json`` for the run.
"""
