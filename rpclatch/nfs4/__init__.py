"""NFSv4.0/4.1 client subset (RFC 7530, RFC 8881)."""
