"""Key export for Wireshark: one row of its ``ikev2_decryption_table`` per IKE SA, so a capture of
this core's messages (or a peer's, with keys it logged) can be decrypted by tshark/Wireshark.

A row is ``SPIi,SPIr,SK_ei,SK_er,"<encryption>",SK_ai,SK_ar,"<integrity>"``: hex buffers
unquoted, the two algorithm names as Wireshark spells them. Pass it on the command line with
``tshark -o "uat:ikev2_decryption_table:<row>"`` or put the rows in the
``ikev2_decryption_table`` file of a Wireshark profile.
"""

from __future__ import annotations

from rpclatch.ipsec.ike.crypto import IkeKeys
from rpclatch.ipsec.ike.wire import EncrId, IntegId

#: Wireshark's names for the suites this core negotiates
_ENCR_NAMES = {
    (EncrId.ENCR_AES_GCM_16, 128): "AES-GCM-128 with 16 octet ICV [RFC5282]",
    (EncrId.ENCR_AES_GCM_16, 256): "AES-GCM-256 with 16 octet ICV [RFC5282]",
    (EncrId.ENCR_AES_CBC, 128): "AES-CBC-128 [RFC3602]",
    (EncrId.ENCR_AES_CBC, 256): "AES-CBC-256 [RFC3602]",
}
_INTEG_NAMES = {IntegId.NONE: "NONE [RFC4306]", IntegId.AUTH_HMAC_SHA2_256_128: "HMAC_SHA2_256_128 [RFC4868]"}


def ikev2_decryption_row(spi_i: int, spi_r: int, keys: IkeKeys) -> str:
    """The ``ikev2_decryption_table`` row of one IKE SA (raises KeyError for a suite Wireshark's
    table cannot name)."""
    s = keys.suite
    encr = _ENCR_NAMES[(EncrId(s.encr), s.encr_bits)]
    integ = _INTEG_NAMES[IntegId(s.integ)]
    return (
        f'{spi_i:016x},{spi_r:016x},{keys.sk_ei.hex()},{keys.sk_er.hex()},"{encr}",'
        f'{keys.sk_ai.hex()},{keys.sk_ar.hex()},"{integ}"'
    )
