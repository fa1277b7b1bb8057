"""IPsec model and connection latching (RFC 4301, RFC 5660)."""
