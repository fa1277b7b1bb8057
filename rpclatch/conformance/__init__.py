"""``rpclatch conformance``: the RPCSEC_GSS (RFC 2203) and channel-binding (RFC 5403) conformance
suite, run from the client's side against any ONC RPC server that accepts RPCSEC_GSS.

:mod:`~rpclatch.conformance.model` holds the case and outcome model, :mod:`.probe` the probing
client (raw calls with chosen sequence numbers, handles and tampered MICs, built from
:mod:`rpclatch.gss.wire` and decoded with :mod:`rpclatch.rpc.messages`), :mod:`.cases_rfc2203`,
:mod:`.cases_rfc5403` and :mod:`.cases_robustness` the case groups, :mod:`.registry` their
selection, :mod:`.runner` the run and :mod:`.report` the table, JSON and JUnit output
(docs/conformance.md).
"""
