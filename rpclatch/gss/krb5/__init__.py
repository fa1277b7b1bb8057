"""Kerberos V5 per-message protection computed in Python on OpenSSL (the Linux kernel's split).

MIT Kerberos establishes the context; once it is complete, :mod:`~rpclatch.gss.krb5.lucid` exports
its keys and sequence numbers (``gss_krb5_export_lucid_sec_context``) and
:mod:`~rpclatch.gss.krb5.cfx` computes the RFC 4121 tokens itself, with ``cryptography`` (AES) and
``hashlib`` (HMAC), both on OpenSSL:

* :mod:`~rpclatch.gss.krb5.kdf` -- n-fold and DK (RFC 3961 §5.1), KDF-HMAC-SHA2 (RFC 8009 §3);
* :mod:`~rpclatch.gss.krb5.cts` -- AES in CBC mode with ciphertext stealing (RFC 3962 §5);
* :mod:`~rpclatch.gss.krb5.enctypes` -- the four AES enctypes: derived keys, encryption with a
  confounder, checksums (RFC 3961 §5.3, RFC 3962, RFC 8009 §5);
* :mod:`~rpclatch.gss.krb5.cfx` -- MIC and Wrap tokens (RFC 4121 §4.2);
* :mod:`~rpclatch.gss.krb5.lucid` -- the export from an MIT context.

docs/krb5-fastpath.md says how the two paths are kept from disagreeing and how the result is
checked against MIT.
"""
