"""Shared NFSv4 XDR structures: stateid4, bitmap4, nfstime4, fsid4, change_info4, fattr4, secinfo4,
channel_attrs4, client/server ids (RFC 7530 §2.2, §5; RFC 8881 §3.3, §18.35-§18.36; XDR RFC 5662).

Every structure is a frozen dataclass with ``encode_into(Encoder)`` and ``decode_from(Decoder)``;
decoding raises :class:`rpclatch.xdr.XdrError` on anything malformed or out of our bounds.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import ClassVar

from rpclatch.gss.wire import Service
from rpclatch.nfs4 import const as c
from rpclatch.nfs4.const import nfs_ftype4, nfsstat4, rpc_gss_svc_t, time_how4
from rpclatch.rpc.messages import AuthFlavor
from rpclatch.xdr import Decoder, Encoder, XdrError

# --- bitmap4 (RFC 7530 §3.2.12 "bitmap4: uint32_t bitmap4<>") --------------------------------------


def bitmap_from_attrs(attrs: Iterable[int]) -> tuple[int, ...]:
    """bitmap4 words for a set of attribute numbers (bit n lives in word n // 32, bit n % 32)."""
    words: list[int] = []
    for a in attrs:
        if a < 0:
            raise XdrError(f"negative attribute number {a}")
        w, b = divmod(a, 32)
        while len(words) <= w:
            words.append(0)
        words[w] |= 1 << b
    while words and words[-1] == 0:
        words.pop()
    return tuple(words)


def attrs_from_bitmap(words: Iterable[int]) -> list[int]:
    """Attribute numbers set in bitmap4 words, ascending (the order of fattr4 attr_vals)."""
    out = []
    for w, word in enumerate(words):
        for b in range(32):
            if word >> b & 1:
                out.append(w * 32 + b)
    return out


def encode_bitmap(enc: Encoder, words: Iterable[int]) -> None:
    ws = list(words)
    enc.uint32(len(ws))
    for w in ws:
        enc.uint32(w)


def decode_bitmap(dec: Decoder) -> tuple[int, ...]:
    return tuple(dec.array(dec.uint32, c.MAX_BITMAP_WORDS))


# --- small structures ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class stateid4:
    """``struct stateid4 { uint32_t seqid; opaque other[12]; }`` (RFC 7530 §9.1.4)."""

    seqid: int
    other: bytes

    def __post_init__(self) -> None:
        if len(self.other) != c.NFS4_OTHER_SIZE:
            raise XdrError(f"stateid4.other must be 12 bytes, got {len(self.other)}")

    def encode_into(self, enc: Encoder) -> None:
        enc.uint32(self.seqid).fixed(self.other, c.NFS4_OTHER_SIZE)

    @classmethod
    def decode_from(cls, dec: Decoder) -> stateid4:
        return cls(dec.uint32(), dec.fixed(c.NFS4_OTHER_SIZE))


#: The anonymous stateid (all zeros) and READ bypass stateid (all ones), RFC 7530 §9.1.4.3.
ANONYMOUS_STATEID = stateid4(0, bytes(12))
READ_BYPASS_STATEID = stateid4(0xFFFFFFFF, b"\xff" * 12)
#: RFC 8881 §8.2.3: seqid 1 + other all zeros = "current stateid" (used within one COMPOUND).
CURRENT_STATEID = stateid4(1, bytes(12))


@dataclass(frozen=True, slots=True)
class nfstime4:
    """``struct nfstime4 { int64_t seconds; uint32_t nseconds; }`` (RFC 7530 §2.2)."""

    seconds: int
    nseconds: int

    def encode_into(self, enc: Encoder) -> None:
        enc.int64(self.seconds).uint32(self.nseconds)

    @classmethod
    def decode_from(cls, dec: Decoder) -> nfstime4:
        secs, nsecs = dec.int64(), dec.uint32()
        if nsecs >= 1_000_000_000:
            raise XdrError(f"nfstime4.nseconds out of range: {nsecs}")
        return cls(secs, nsecs)

    def as_float(self) -> float:
        return self.seconds + self.nseconds / 1e9


@dataclass(frozen=True, slots=True)
class settime4:
    """``union settime4 switch (time_how4 set_it)`` (RFC 7530 §2.2): server time or this time."""

    set_it: time_how4
    time: nfstime4 | None = None

    def encode_into(self, enc: Encoder) -> None:
        enc.uint32(self.set_it)
        if self.set_it == time_how4.SET_TO_CLIENT_TIME4:
            if self.time is None:
                raise XdrError("SET_TO_CLIENT_TIME4 needs a time")
            self.time.encode_into(enc)

    @classmethod
    def decode_from(cls, dec: Decoder) -> settime4:
        how = dec.enum(time_how4)
        if how == time_how4.SET_TO_CLIENT_TIME4:
            return cls(how, nfstime4.decode_from(dec))
        return cls(how)


@dataclass(frozen=True, slots=True)
class fsid4:
    """``struct fsid4 { uint64_t major; uint64_t minor; }`` (RFC 7530 §2.2)."""

    major: int
    minor: int

    def encode_into(self, enc: Encoder) -> None:
        enc.uint64(self.major).uint64(self.minor)

    @classmethod
    def decode_from(cls, dec: Decoder) -> fsid4:
        return cls(dec.uint64(), dec.uint64())


@dataclass(frozen=True, slots=True)
class change_info4:
    """``struct change_info4 { bool atomic; changeid4 before; changeid4 after; }``."""

    atomic: bool
    before: int
    after: int

    def encode_into(self, enc: Encoder) -> None:
        enc.boolean(self.atomic).uint64(self.before).uint64(self.after)

    @classmethod
    def decode_from(cls, dec: Decoder) -> change_info4:
        return cls(dec.boolean(), dec.uint64(), dec.uint64())


@dataclass(frozen=True, slots=True)
class nfs_impl_id4:
    """``struct nfs_impl_id4 { utf8str_cis nii_domain; utf8str_cs nii_name; nfstime4 nii_date; }``."""

    nii_domain: str
    nii_name: str
    nii_date: nfstime4

    def encode_into(self, enc: Encoder) -> None:
        enc.string(self.nii_domain, c.NFS4_OPAQUE_LIMIT).string(self.nii_name, c.NFS4_OPAQUE_LIMIT)
        self.nii_date.encode_into(enc)

    @classmethod
    def decode_from(cls, dec: Decoder) -> nfs_impl_id4:
        return cls(
            dec.string(c.NFS4_OPAQUE_LIMIT), dec.string(c.NFS4_OPAQUE_LIMIT), nfstime4.decode_from(dec)
        )


@dataclass(frozen=True, slots=True)
class rpcsec_gss_info:
    """``struct rpcsec_gss_info { sec_oid4 oid; qop4 qop; rpc_gss_svc_t service; }``."""

    oid: bytes
    qop: int
    service: rpc_gss_svc_t


@dataclass(frozen=True, slots=True)
class secinfo4:
    """``union secinfo4 switch (uint32_t flavor) { case RPCSEC_GSS: rpcsec_gss_info; default: void }``
    (RFC 7530 §16.31.2)."""

    flavor: int
    flavor_info: rpcsec_gss_info | None = None

    def encode_into(self, enc: Encoder) -> None:
        enc.uint32(self.flavor)
        if self.flavor == AuthFlavor.RPCSEC_GSS:
            if self.flavor_info is None:
                raise XdrError("RPCSEC_GSS secinfo4 needs flavor_info")
            enc.opaque(self.flavor_info.oid, c.NFS4_OPAQUE_LIMIT).uint32(self.flavor_info.qop)
            enc.uint32(self.flavor_info.service)

    @classmethod
    def decode_from(cls, dec: Decoder) -> secinfo4:
        flavor = dec.uint32()
        if flavor == AuthFlavor.RPCSEC_GSS:
            oid = dec.opaque(c.NFS4_OPAQUE_LIMIT)
            return cls(flavor, rpcsec_gss_info(oid, dec.uint32(), dec.enum(rpc_gss_svc_t)))
        return cls(flavor)

    def describe(self) -> str:
        """Short name: ``sys``, ``none``, ``krb5``, ``krb5i``, ``krb5p`` or ``flavor N``."""
        if self.flavor == AuthFlavor.AUTH_SYS:
            return "sys"
        if self.flavor == AuthFlavor.AUTH_NONE:
            return "none"
        if self.flavor == AuthFlavor.RPCSEC_GSS and self.flavor_info is not None:
            if c.is_krb5_oid(self.flavor_info.oid):
                return Service(int(self.flavor_info.service)).sec_name
            return f"gss oid {self.flavor_info.oid.hex()}"
        return f"flavor {self.flavor}"


@dataclass(frozen=True, slots=True)
class channel_attrs4:
    """``struct channel_attrs4`` (RFC 8881 §18.36.2)."""

    ca_headerpadsize: int
    ca_maxrequestsize: int
    ca_maxresponsesize: int
    ca_maxresponsesize_cached: int
    ca_maxoperations: int
    ca_maxrequests: int
    ca_rdma_ird: tuple[int, ...] = ()

    def encode_into(self, enc: Encoder) -> None:
        for v in (
            self.ca_headerpadsize,
            self.ca_maxrequestsize,
            self.ca_maxresponsesize,
            self.ca_maxresponsesize_cached,
            self.ca_maxoperations,
            self.ca_maxrequests,
        ):
            enc.uint32(v)
        if len(self.ca_rdma_ird) > 1:
            raise XdrError("ca_rdma_ird<1> has at most one element")
        enc.uint32(len(self.ca_rdma_ird))
        for v in self.ca_rdma_ird:
            enc.uint32(v)

    @classmethod
    def decode_from(cls, dec: Decoder) -> channel_attrs4:
        pad, req, resp, cached, ops, reqs = (dec.uint32() for _ in range(6))
        return cls(pad, req, resp, cached, ops, reqs, tuple(dec.array(dec.uint32, 1)))


@dataclass(frozen=True, slots=True)
class state_protect_ops4:
    """``struct state_protect_ops4 { bitmap4 spo_must_enforce; bitmap4 spo_must_allow; }``."""

    spo_must_enforce: tuple[int, ...] = ()
    spo_must_allow: tuple[int, ...] = ()

    def encode_into(self, enc: Encoder) -> None:
        encode_bitmap(enc, self.spo_must_enforce)
        encode_bitmap(enc, self.spo_must_allow)

    @classmethod
    def decode_from(cls, dec: Decoder) -> state_protect_ops4:
        return cls(decode_bitmap(dec), decode_bitmap(dec))


# --- fattr4 (RFC 7530 §5, §3.2.1 "struct fattr4 { bitmap4 attrmask; attrlist4 attr_vals; }") -------


@dataclass(frozen=True, slots=True)
class Fattr4:
    """The subset of fattr4 rpclatch understands. ``None`` = attribute absent from the bitmap.

    Values appear on the wire in ascending attribute-number order (RFC 7530 §5.4); an attribute we
    do not know cannot be skipped (its length is implicit), so decoding it raises XdrError. We only
    ever request attributes listed in :data:`ATTR_FIELDS`.
    """

    supported_attrs: tuple[int, ...] | None = None
    type: nfs_ftype4 | None = None
    fh_expire_type: int | None = None
    change: int | None = None
    size: int | None = None
    link_support: bool | None = None
    symlink_support: bool | None = None
    named_attr: bool | None = None
    fsid: fsid4 | None = None
    unique_handles: bool | None = None
    lease_time: int | None = None
    rdattr_error: nfsstat4 | None = None
    filehandle: bytes | None = None
    fileid: int | None = None
    maxread: int | None = None
    maxwrite: int | None = None
    mode: int | None = None
    numlinks: int | None = None
    owner: str | None = None
    owner_group: str | None = None
    space_used: int | None = None
    time_access: nfstime4 | None = None
    time_access_set: settime4 | None = None
    time_metadata: nfstime4 | None = None
    time_modify: nfstime4 | None = None
    time_modify_set: settime4 | None = None
    mounted_on_fileid: int | None = None

    #: attribute number -> field name, for every attribute we can encode and decode.
    ATTR_FIELDS: ClassVar[dict[int, str]] = {
        c.FATTR4_SUPPORTED_ATTRS: "supported_attrs",
        c.FATTR4_TYPE: "type",
        c.FATTR4_FH_EXPIRE_TYPE: "fh_expire_type",
        c.FATTR4_CHANGE: "change",
        c.FATTR4_SIZE: "size",
        c.FATTR4_LINK_SUPPORT: "link_support",
        c.FATTR4_SYMLINK_SUPPORT: "symlink_support",
        c.FATTR4_NAMED_ATTR: "named_attr",
        c.FATTR4_FSID: "fsid",
        c.FATTR4_UNIQUE_HANDLES: "unique_handles",
        c.FATTR4_LEASE_TIME: "lease_time",
        c.FATTR4_RDATTR_ERROR: "rdattr_error",
        c.FATTR4_FILEHANDLE: "filehandle",
        c.FATTR4_FILEID: "fileid",
        c.FATTR4_MAXREAD: "maxread",
        c.FATTR4_MAXWRITE: "maxwrite",
        c.FATTR4_MODE: "mode",
        c.FATTR4_NUMLINKS: "numlinks",
        c.FATTR4_OWNER: "owner",
        c.FATTR4_OWNER_GROUP: "owner_group",
        c.FATTR4_SPACE_USED: "space_used",
        c.FATTR4_TIME_ACCESS: "time_access",
        c.FATTR4_TIME_ACCESS_SET: "time_access_set",
        c.FATTR4_TIME_METADATA: "time_metadata",
        c.FATTR4_TIME_MODIFY: "time_modify",
        c.FATTR4_TIME_MODIFY_SET: "time_modify_set",
        c.FATTR4_MOUNTED_ON_FILEID: "mounted_on_fileid",
    }

    def attr_numbers(self) -> list[int]:
        return sorted(n for n, f in self.ATTR_FIELDS.items() if getattr(self, f) is not None)

    def encode_into(self, enc: Encoder) -> None:
        nums = self.attr_numbers()
        encode_bitmap(enc, bitmap_from_attrs(nums))
        vals = Encoder()
        for n in nums:
            _encode_attr(vals, n, getattr(self, self.ATTR_FIELDS[n]))
        enc.opaque(vals.to_bytes())

    @classmethod
    def decode_from(cls, dec: Decoder) -> Fattr4:
        nums = attrs_from_bitmap(decode_bitmap(dec))
        vals = Decoder(dec.opaque(c.MAX_DATA))
        kw: dict[str, object] = {}
        for n in nums:
            name = cls.ATTR_FIELDS.get(n)
            if name is None:
                raise XdrError(f"fattr4 carries attribute {n}, which we did not request")
            kw[name] = _decode_attr(vals, n)
        vals.done()
        return cls(**kw)  # type: ignore[arg-type]


def _encode_attr(enc: Encoder, n: int, v: object) -> None:
    if n == c.FATTR4_SUPPORTED_ATTRS:
        assert isinstance(v, tuple)
        encode_bitmap(enc, v)
    elif n in (
        c.FATTR4_TYPE,
        c.FATTR4_FH_EXPIRE_TYPE,
        c.FATTR4_LEASE_TIME,
        c.FATTR4_RDATTR_ERROR,
        c.FATTR4_MODE,
        c.FATTR4_NUMLINKS,
    ):
        assert isinstance(v, int)
        enc.uint32(v)
    elif n in (
        c.FATTR4_CHANGE,
        c.FATTR4_SIZE,
        c.FATTR4_FILEID,
        c.FATTR4_SPACE_USED,
        c.FATTR4_MOUNTED_ON_FILEID,
        c.FATTR4_MAXREAD,
        c.FATTR4_MAXWRITE,
    ):
        assert isinstance(v, int)
        enc.uint64(v)
    elif n in (c.FATTR4_LINK_SUPPORT, c.FATTR4_SYMLINK_SUPPORT, c.FATTR4_NAMED_ATTR, c.FATTR4_UNIQUE_HANDLES):
        assert isinstance(v, bool)
        enc.boolean(v)
    elif n == c.FATTR4_FILEHANDLE:
        assert isinstance(v, bytes)
        enc.opaque(v, c.NFS4_FHSIZE)
    elif n in (c.FATTR4_OWNER, c.FATTR4_OWNER_GROUP):
        assert isinstance(v, str)
        enc.string(v, c.NFS4_OPAQUE_LIMIT)
    elif isinstance(v, fsid4 | nfstime4 | settime4):
        v.encode_into(enc)
    else:  # pragma: no cover - ATTR_FIELDS and this function list the same attributes
        raise XdrError(f"cannot encode attribute {n}")


def _decode_attr(dec: Decoder, n: int) -> object:
    if n == c.FATTR4_SUPPORTED_ATTRS:
        return decode_bitmap(dec)
    if n == c.FATTR4_TYPE:
        return dec.enum(nfs_ftype4)
    if n == c.FATTR4_RDATTR_ERROR:
        return dec.enum(nfsstat4)
    if n in (c.FATTR4_FH_EXPIRE_TYPE, c.FATTR4_LEASE_TIME, c.FATTR4_MODE, c.FATTR4_NUMLINKS):
        return dec.uint32()
    if n in (
        c.FATTR4_CHANGE,
        c.FATTR4_SIZE,
        c.FATTR4_FILEID,
        c.FATTR4_SPACE_USED,
        c.FATTR4_MOUNTED_ON_FILEID,
        c.FATTR4_MAXREAD,
        c.FATTR4_MAXWRITE,
    ):
        return dec.uint64()
    if n in (c.FATTR4_LINK_SUPPORT, c.FATTR4_SYMLINK_SUPPORT, c.FATTR4_NAMED_ATTR, c.FATTR4_UNIQUE_HANDLES):
        return dec.boolean()
    if n == c.FATTR4_FILEHANDLE:
        return dec.opaque(c.NFS4_FHSIZE)
    if n in (c.FATTR4_OWNER, c.FATTR4_OWNER_GROUP):
        return dec.string(c.NFS4_OPAQUE_LIMIT)
    if n == c.FATTR4_FSID:
        return fsid4.decode_from(dec)
    if n in (c.FATTR4_TIME_ACCESS_SET, c.FATTR4_TIME_MODIFY_SET):
        return settime4.decode_from(dec)
    if n in (c.FATTR4_TIME_ACCESS, c.FATTR4_TIME_METADATA, c.FATTR4_TIME_MODIFY):
        return nfstime4.decode_from(dec)
    raise XdrError(f"cannot decode attribute {n}")  # pragma: no cover


#: The attributes `stat` asks for: what ``ls -l`` shows (type, mode, links, owner, group, size,
#: times) plus change, fsid, fileid and space_used (RFC 7530 §5).
STAT_ATTRS: tuple[int, ...] = (
    c.FATTR4_TYPE,
    c.FATTR4_CHANGE,
    c.FATTR4_SIZE,
    c.FATTR4_FSID,
    c.FATTR4_FILEID,
    c.FATTR4_MODE,
    c.FATTR4_NUMLINKS,
    c.FATTR4_OWNER,
    c.FATTR4_OWNER_GROUP,
    c.FATTR4_SPACE_USED,
    c.FATTR4_TIME_ACCESS,
    c.FATTR4_TIME_METADATA,
    c.FATTR4_TIME_MODIFY,
)


def decode_name(dec: Decoder) -> str:
    """component4 / utf8str: UTF-8 by RFC, but servers return raw directory bytes, so keep any
    non-UTF-8 byte via surrogateescape (round-trips through :func:`encode_name`)."""
    return dec.opaque(c.MAX_NAME).decode("utf-8", "surrogateescape")


def encode_name(enc: Encoder, name: str) -> None:
    enc.opaque(name.encode("utf-8", "surrogateescape"), c.MAX_NAME)
