"""NFSv4.0/4.1 client subset (RFC 7530, RFC 8881; XDR from RFC 5662 / RFC 7531).

Modules, bottom up:

* :mod:`rpclatch.nfs4.const` -- enums and constants named as in the RFC XDR (``nfs_opnum4``,
  ``nfsstat4``, ``nfs_ftype4``, ``FATTR4_*``, ...);
* :mod:`rpclatch.nfs4.types` -- shared structures (``stateid4``, bitmap4 helpers, ``Fattr4``,
  ``secinfo4``, ``channel_attrs4``, ...);
* :mod:`rpclatch.nfs4.ops` -- per-operation ``XXX4args`` / ``XXX4res`` frozen dataclasses;
* :mod:`rpclatch.nfs4.compound` -- ``COMPOUND4args`` / ``COMPOUND4res``;
* :mod:`rpclatch.nfs4.errors` -- ``Nfs4Error`` > ``Nfs4LocalError`` (``Nfs4ProtocolError``,
  ``Nfs4SecurityError``) / ``Nfs4RemoteError`` (``.status``: nfsstat4, ``.op``: nfs_opnum4);
  ``RequestNotSent`` (an ``RpcConnectionClosed``: the connection was closed before anything of the
  request went out, so the client resends it on a new connection);
* :mod:`rpclatch.nfs4.security` -- ``SecFlavor``, the ``--sec`` policy and the per-connection
  security hook (``ConnectionSecurity``, ``ConnectionSecurityHook``);
* :mod:`rpclatch.nfs4.options` -- ``Nfs4Options``, what a client is asked to do (version,
  ``--sec``, GSS target, timeouts);
* :mod:`rpclatch.nfs4.connection` -- ``Nfs4Connection``: the TCP connection made through the
  security hook, its RPC credentials, reconnecting (asyncio, on :mod:`rpclatch.rpc.aio`);
* :mod:`rpclatch.nfs4.session` -- ``Nfs4Session``: client ID, 4.1 session and slots, lease
  renewal, recovery after lost state, resends after GRACE / DELAY;
* :mod:`rpclatch.nfs4.secneg` -- ``SecurityNegotiator``: the data flavor, WRONGSEC -> SECINFO;
* :mod:`rpclatch.nfs4.client` -- ``Nfs4Client``: file operations on paths, built on the three.

Typical use::

    options = Nfs4Options(minorversion=1, sec="krb5p", gss_target="nfs@server.example")
    async with await Nfs4Client.connect("server", options) as nfs:
        info = await nfs.stat("/dir/file")
        async for chunk in nfs.read_file("/dir/file"):
            ...
        await nfs.write_file("/dir/new", b"data")
"""
