"""RPCSEC_GSS v1/v2 (RFC 2203, RFC 5403) with channel binding, on MIT Kerberos via python-gssapi.

Built on :mod:`rpclatch.rpc` (the flavors plug into its ``ClientAuth``/``ServerAuth``) and
:mod:`rpclatch.channel`; used by nfs4, connect, demo and the commands. This package re-exports nothing,
to keep imports cheap; import the modules directly:

* :mod:`~rpclatch.gss.client` / :mod:`~rpclatch.gss.server` -- the client and server flavors
  (``GssClientAuth``, ``GssServerAuth``);
* :mod:`~rpclatch.gss.wire` -- the XDR structures; :mod:`~rpclatch.gss.errors` -- exceptions;
  :mod:`~rpclatch.gss.seqwindow` -- the replay window;
* :mod:`~rpclatch.gss.provider` -- the GSS-API as RPCSEC_GSS needs it, over python-gssapi;
  :mod:`~rpclatch.gss.krb5` -- RFC 4121 per-message tokens on OpenSSL from the exported MIT
  context (the provider's default for the AES enctypes);
  :mod:`~rpclatch.gss.bindings` -- GSS-level channel bindings (RFC 5554);
* :mod:`~rpclatch.gss.channel` -- the channel interface, and an in-memory channel for tests;
* :mod:`~rpclatch.gss.realm` -- throwaway Kerberos realms; :mod:`~rpclatch.gss.loopback` -- an
  in-process transport; :mod:`~rpclatch.gss.sec` -- ``--sec krb5|krb5i|krb5p``.
"""
