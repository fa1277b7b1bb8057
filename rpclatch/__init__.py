"""rpclatch: IPsec connection latching and RPCSEC_GSS channel binding for ONC RPC and NFSv4."""
