"""ONC RPC v2 (RFC 5531)."""
