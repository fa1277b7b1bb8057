"""RPCSEC_GSS v1/v2 (RFC 2203, RFC 5403) with channel binding, on MIT Kerberos via python-gssapi.

Modules (import them directly; this package re-exports nothing, to keep imports cheap):

* :mod:`rpclatch.gss.realm` -- ``ThrowawayRealm(users, service="nfs")`` (start/stop/context
  manager, ``env``, ``activate()``, ``users[name].ccache``, ``keytab``, ``service_name``),
  ``running_realm()``, ``shared_realm()``, ``realm_fixture()`` for pytest.
* :mod:`rpclatch.gss.provider` -- ``Provider`` / ``GssContext`` interfaces and
  ``GssapiProvider(service=None, *, ccache=None, keytab=None)``.
* :mod:`rpclatch.gss.channel` -- ``Channel`` (binding_prefix, binding_data, protection, is_up(),
  on_break(cb), bindings(), channel_bindings()), ``Protection``, ``InMemoryChannel.pair(...)``.
* :mod:`rpclatch.gss.server` -- ``GssServerAuth(provider, ...)``: a ``ServerAuth`` for flavor 6.
* :mod:`rpclatch.gss.client` -- ``GssClientAuth(provider, target, service=..., versions=...)``: a
  ``ClientAuth``; ``await establish(rpc_call)``, ``await bind_channel(rpc_call, channel)``,
  ``await call(rpc_call, proc, args)`` (transparent refresh), ``await destroy(rpc_call)``;
  ``rpc_call_via(client, prog, vers)`` adapts rpclatch's asyncio RPC clients.
* :mod:`rpclatch.gss.bindings` -- ``gss_channel_bindings(app_data)`` (the struct we give libkrb5)
  and ``krb5_bnd(app_data)`` (RFC 4121 §4.1.1.2 Bnd, as libkrb5 computes it).
* :mod:`rpclatch.gss.wire` -- the XDR structures; :mod:`rpclatch.gss.errors` -- exceptions;
  :mod:`rpclatch.gss.seqwindow` -- the replay window; :mod:`rpclatch.gss.loopback` -- an
  in-process transport; :mod:`rpclatch.gss.sec` -- ``--sec krb5|krb5i|krb5p``.
"""
