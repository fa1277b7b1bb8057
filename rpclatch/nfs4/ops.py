"""Per-operation arguments and results of the NFSv4.0/4.1 subset rpclatch uses (RFC 7530 §16,
RFC 8881 §18; XDR from RFC 5662 / RFC 7531).

Each ``XXX4args`` / ``XXX4res`` is a frozen dataclass with a class attribute ``opnum`` and
``encode_into(Encoder)`` / ``decode_from(Decoder)``. Results are the RFC's ``switch (nfsstat4 status)``
unions: ``resok`` holds the NFS4_OK arm (None otherwise) and :meth:`ok` returns it or raises
:class:`~rpclatch.nfs4.errors.Nfs4RemoteError`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Protocol, Self, TypeVar

from rpclatch.nfs4 import const as c
from rpclatch.nfs4.const import (
    createmode4,
    limit_by4,
    nfs_ftype4,
    nfs_opnum4,
    nfsstat4,
    open_claim_type4,
    open_delegation_type4,
    opentype4,
    secinfo_style4,
    stable_how4,
    state_protect_how4,
    why_no_delegation4,
)
from rpclatch.nfs4.errors import Nfs4RemoteError
from rpclatch.nfs4.types import (
    Fattr4,
    change_info4,
    channel_attrs4,
    decode_bitmap,
    decode_name,
    encode_bitmap,
    encode_name,
    nfs_impl_id4,
    secinfo4,
    state_protect_ops4,
    stateid4,
)
from rpclatch.rpc.messages import AuthFlavor
from rpclatch.xdr import Decoder, Encoder, XdrError

R = TypeVar("R")


class _Codec(Protocol):
    def encode_into(self, enc: Encoder) -> None: ...


def _ok(status: nfsstat4, resok: R | None, op: nfs_opnum4) -> R:
    if status != nfsstat4.NFS4_OK or resok is None:
        raise Nfs4RemoteError(status, op)
    return resok


def _verifier(dec: Decoder) -> bytes:
    return dec.fixed(c.NFS4_VERIFIER_SIZE)


def _fh(dec: Decoder) -> bytes:
    return dec.opaque(c.NFS4_FHSIZE)


# ==================================================================================================
# Arguments
# ==================================================================================================


@dataclass(frozen=True, slots=True)
class NoArgs:
    """Operations without arguments (PUTROOTFH, GETFH, SAVEFH, RESTOREFH)."""

    opnum: ClassVar[nfs_opnum4]

    def encode_into(self, enc: Encoder) -> None:
        pass

    @classmethod
    def decode_from(cls, dec: Decoder) -> Self:
        return cls()


@dataclass(frozen=True, slots=True)
class PUTROOTFH4args(NoArgs):
    """RFC 7530 §16.22."""

    opnum: ClassVar[nfs_opnum4] = nfs_opnum4.OP_PUTROOTFH


@dataclass(frozen=True, slots=True)
class GETFH4args(NoArgs):
    """RFC 7530 §16.8 (no arguments)."""

    opnum: ClassVar[nfs_opnum4] = nfs_opnum4.OP_GETFH


@dataclass(frozen=True, slots=True)
class SAVEFH4args(NoArgs):
    """RFC 7530 §16.28."""

    opnum: ClassVar[nfs_opnum4] = nfs_opnum4.OP_SAVEFH


@dataclass(frozen=True, slots=True)
class RESTOREFH4args(NoArgs):
    """RFC 7530 §16.27."""

    opnum: ClassVar[nfs_opnum4] = nfs_opnum4.OP_RESTOREFH


@dataclass(frozen=True, slots=True)
class PUTFH4args:
    """``struct PUTFH4args { nfs_fh4 object; }`` (RFC 7530 §16.20)."""

    object: bytes
    opnum: ClassVar[nfs_opnum4] = nfs_opnum4.OP_PUTFH

    def encode_into(self, enc: Encoder) -> None:
        enc.opaque(self.object, c.NFS4_FHSIZE)

    @classmethod
    def decode_from(cls, dec: Decoder) -> PUTFH4args:
        return cls(_fh(dec))


@dataclass(frozen=True, slots=True)
class LOOKUP4args:
    """``struct LOOKUP4args { component4 objname; }`` (RFC 7530 §16.13)."""

    objname: str
    opnum: ClassVar[nfs_opnum4] = nfs_opnum4.OP_LOOKUP

    def encode_into(self, enc: Encoder) -> None:
        encode_name(enc, self.objname)

    @classmethod
    def decode_from(cls, dec: Decoder) -> LOOKUP4args:
        return cls(decode_name(dec))


@dataclass(frozen=True, slots=True)
class GETATTR4args:
    """``struct GETATTR4args { bitmap4 attr_request; }`` (RFC 7530 §16.7)."""

    attr_request: tuple[int, ...]
    opnum: ClassVar[nfs_opnum4] = nfs_opnum4.OP_GETATTR

    def encode_into(self, enc: Encoder) -> None:
        encode_bitmap(enc, self.attr_request)

    @classmethod
    def decode_from(cls, dec: Decoder) -> GETATTR4args:
        return cls(decode_bitmap(dec))


@dataclass(frozen=True, slots=True)
class READDIR4args:
    """RFC 7530 §16.24: cookie, cookieverf, dircount, maxcount, attr_request."""

    cookie: int
    cookieverf: bytes
    dircount: int
    maxcount: int
    attr_request: tuple[int, ...]
    opnum: ClassVar[nfs_opnum4] = nfs_opnum4.OP_READDIR

    def encode_into(self, enc: Encoder) -> None:
        enc.uint64(self.cookie).fixed(self.cookieverf, c.NFS4_VERIFIER_SIZE)
        enc.uint32(self.dircount).uint32(self.maxcount)
        encode_bitmap(enc, self.attr_request)

    @classmethod
    def decode_from(cls, dec: Decoder) -> READDIR4args:
        return cls(dec.uint64(), _verifier(dec), dec.uint32(), dec.uint32(), decode_bitmap(dec))


@dataclass(frozen=True, slots=True)
class open_owner4:
    """``struct open_owner4 { clientid4 clientid; opaque owner<NFS4_OPAQUE_LIMIT>; }``."""

    clientid: int
    owner: bytes

    def encode_into(self, enc: Encoder) -> None:
        enc.uint64(self.clientid).opaque(self.owner, c.NFS4_OPAQUE_LIMIT)

    @classmethod
    def decode_from(cls, dec: Decoder) -> open_owner4:
        return cls(dec.uint64(), dec.opaque(c.NFS4_OPAQUE_LIMIT))


@dataclass(frozen=True, slots=True)
class createhow4:
    """``union createhow4 switch (createmode4 mode)`` (RFC 7530 §16.16.1, RFC 8881 §18.16.1)."""

    mode: createmode4
    createattrs: Fattr4 | None = None
    createverf: bytes | None = None

    def encode_into(self, enc: Encoder) -> None:
        enc.uint32(self.mode)
        if self.mode in (createmode4.UNCHECKED4, createmode4.GUARDED4):
            (self.createattrs or Fattr4()).encode_into(enc)
        else:
            if self.createverf is None:
                raise XdrError(f"{self.mode.name} needs createverf")
            enc.fixed(self.createverf, c.NFS4_VERIFIER_SIZE)
            if self.mode == createmode4.EXCLUSIVE4_1:
                (self.createattrs or Fattr4()).encode_into(enc)

    @classmethod
    def decode_from(cls, dec: Decoder) -> createhow4:
        mode = dec.enum(createmode4)
        if mode in (createmode4.UNCHECKED4, createmode4.GUARDED4):
            return cls(mode, createattrs=Fattr4.decode_from(dec))
        verf = _verifier(dec)
        attrs = Fattr4.decode_from(dec) if mode == createmode4.EXCLUSIVE4_1 else None
        return cls(mode, createattrs=attrs, createverf=verf)


@dataclass(frozen=True, slots=True)
class openflag4:
    """``union openflag4 switch (opentype4 opentype) { case OPEN4_CREATE: createhow4 how; }``."""

    opentype: opentype4
    how: createhow4 | None = None

    def encode_into(self, enc: Encoder) -> None:
        enc.uint32(self.opentype)
        if self.opentype == opentype4.OPEN4_CREATE:
            if self.how is None:
                raise XdrError("OPEN4_CREATE needs createhow4")
            self.how.encode_into(enc)

    @classmethod
    def decode_from(cls, dec: Decoder) -> openflag4:
        t = dec.enum(opentype4)
        return cls(t, createhow4.decode_from(dec) if t == opentype4.OPEN4_CREATE else None)


@dataclass(frozen=True, slots=True)
class open_claim4:
    """``union open_claim4``: rpclatch sends CLAIM_NULL (by name) and CLAIM_FH (4.1, by current FH);
    the other claims are for delegation and reboot recovery, which we do not do."""

    claim: open_claim_type4
    file: str = ""

    def encode_into(self, enc: Encoder) -> None:
        enc.uint32(self.claim)
        if self.claim == open_claim_type4.CLAIM_NULL:
            encode_name(enc, self.file)
        elif self.claim != open_claim_type4.CLAIM_FH:
            raise XdrError(f"open claim {self.claim.name} is not supported")

    @classmethod
    def decode_from(cls, dec: Decoder) -> open_claim4:
        claim = dec.enum(open_claim_type4)
        if claim == open_claim_type4.CLAIM_NULL:
            return cls(claim, decode_name(dec))
        if claim == open_claim_type4.CLAIM_FH:
            return cls(claim)
        raise XdrError(f"open claim {claim.name} is not supported")


@dataclass(frozen=True, slots=True)
class OPEN4args:
    """RFC 7530 §16.16.1 (4.1: RFC 8881 §18.16.1)."""

    seqid: int
    share_access: int
    share_deny: int
    owner: open_owner4
    openhow: openflag4
    claim: open_claim4
    opnum: ClassVar[nfs_opnum4] = nfs_opnum4.OP_OPEN

    def encode_into(self, enc: Encoder) -> None:
        enc.uint32(self.seqid).uint32(self.share_access).uint32(self.share_deny)
        self.owner.encode_into(enc)
        self.openhow.encode_into(enc)
        self.claim.encode_into(enc)

    @classmethod
    def decode_from(cls, dec: Decoder) -> OPEN4args:
        return cls(
            dec.uint32(),
            dec.uint32(),
            dec.uint32(),
            open_owner4.decode_from(dec),
            openflag4.decode_from(dec),
            open_claim4.decode_from(dec),
        )


@dataclass(frozen=True, slots=True)
class OPEN_CONFIRM4args:
    """``struct OPEN_CONFIRM4args { stateid4 open_stateid; seqid4 seqid; }`` (RFC 7530 §16.18)."""

    open_stateid: stateid4
    seqid: int
    opnum: ClassVar[nfs_opnum4] = nfs_opnum4.OP_OPEN_CONFIRM

    def encode_into(self, enc: Encoder) -> None:
        self.open_stateid.encode_into(enc)
        enc.uint32(self.seqid)

    @classmethod
    def decode_from(cls, dec: Decoder) -> OPEN_CONFIRM4args:
        return cls(stateid4.decode_from(dec), dec.uint32())


@dataclass(frozen=True, slots=True)
class CLOSE4args:
    """``struct CLOSE4args { seqid4 seqid; stateid4 open_stateid; }`` (RFC 7530 §16.2)."""

    seqid: int
    open_stateid: stateid4
    opnum: ClassVar[nfs_opnum4] = nfs_opnum4.OP_CLOSE

    def encode_into(self, enc: Encoder) -> None:
        enc.uint32(self.seqid)
        self.open_stateid.encode_into(enc)

    @classmethod
    def decode_from(cls, dec: Decoder) -> CLOSE4args:
        return cls(dec.uint32(), stateid4.decode_from(dec))


@dataclass(frozen=True, slots=True)
class DELEGRETURN4args:
    """``struct DELEGRETURN4args { stateid4 deleg_stateid; }`` (RFC 7530 §16.6)."""

    deleg_stateid: stateid4
    opnum: ClassVar[nfs_opnum4] = nfs_opnum4.OP_DELEGRETURN

    def encode_into(self, enc: Encoder) -> None:
        self.deleg_stateid.encode_into(enc)

    @classmethod
    def decode_from(cls, dec: Decoder) -> DELEGRETURN4args:
        return cls(stateid4.decode_from(dec))


@dataclass(frozen=True, slots=True)
class READ4args:
    """``struct READ4args { stateid4 stateid; offset4 offset; count4 count; }`` (RFC 7530 §16.23)."""

    stateid: stateid4
    offset: int
    count: int
    opnum: ClassVar[nfs_opnum4] = nfs_opnum4.OP_READ

    def encode_into(self, enc: Encoder) -> None:
        self.stateid.encode_into(enc)
        enc.uint64(self.offset).uint32(self.count)

    @classmethod
    def decode_from(cls, dec: Decoder) -> READ4args:
        return cls(stateid4.decode_from(dec), dec.uint64(), dec.uint32())


@dataclass(frozen=True, slots=True)
class WRITE4args:
    """RFC 7530 §16.36: stateid, offset, stable, data<>."""

    stateid: stateid4
    offset: int
    stable: stable_how4
    data: bytes
    opnum: ClassVar[nfs_opnum4] = nfs_opnum4.OP_WRITE

    def encode_into(self, enc: Encoder) -> None:
        self.stateid.encode_into(enc)
        enc.uint64(self.offset).uint32(self.stable).opaque(self.data, c.MAX_DATA)

    @classmethod
    def decode_from(cls, dec: Decoder) -> WRITE4args:
        return cls(stateid4.decode_from(dec), dec.uint64(), dec.enum(stable_how4), dec.opaque(c.MAX_DATA))


@dataclass(frozen=True, slots=True)
class COMMIT4args:
    """``struct COMMIT4args { offset4 offset; count4 count; }`` (RFC 7530 §16.3)."""

    offset: int
    count: int
    opnum: ClassVar[nfs_opnum4] = nfs_opnum4.OP_COMMIT

    def encode_into(self, enc: Encoder) -> None:
        enc.uint64(self.offset).uint32(self.count)

    @classmethod
    def decode_from(cls, dec: Decoder) -> COMMIT4args:
        return cls(dec.uint64(), dec.uint32())


@dataclass(frozen=True, slots=True)
class CREATE4args:
    """RFC 7530 §16.4: ``createtype4 objtype; component4 objname; fattr4 createattrs;``.

    rpclatch creates directories only (createtype4 arm NF4DIR: void); symlinks and device nodes
    are refused locally.
    """

    objtype: nfs_ftype4
    objname: str
    createattrs: Fattr4
    opnum: ClassVar[nfs_opnum4] = nfs_opnum4.OP_CREATE

    def encode_into(self, enc: Encoder) -> None:
        if self.objtype not in (nfs_ftype4.NF4DIR, nfs_ftype4.NF4SOCK, nfs_ftype4.NF4FIFO):
            raise XdrError(f"CREATE of {self.objtype.name} is not supported")
        enc.uint32(self.objtype)
        encode_name(enc, self.objname)
        self.createattrs.encode_into(enc)

    @classmethod
    def decode_from(cls, dec: Decoder) -> CREATE4args:
        t = dec.enum(nfs_ftype4)
        if t not in (nfs_ftype4.NF4DIR, nfs_ftype4.NF4SOCK, nfs_ftype4.NF4FIFO):
            raise XdrError(f"CREATE of {t.name} is not supported")
        return cls(t, decode_name(dec), Fattr4.decode_from(dec))


@dataclass(frozen=True, slots=True)
class REMOVE4args:
    """``struct REMOVE4args { component4 target; }`` (RFC 7530 §16.25)."""

    target: str
    opnum: ClassVar[nfs_opnum4] = nfs_opnum4.OP_REMOVE

    def encode_into(self, enc: Encoder) -> None:
        encode_name(enc, self.target)

    @classmethod
    def decode_from(cls, dec: Decoder) -> REMOVE4args:
        return cls(decode_name(dec))


@dataclass(frozen=True, slots=True)
class SECINFO4args:
    """``struct SECINFO4args { component4 name; }`` (RFC 7530 §16.31)."""

    name: str
    opnum: ClassVar[nfs_opnum4] = nfs_opnum4.OP_SECINFO

    def encode_into(self, enc: Encoder) -> None:
        encode_name(enc, self.name)

    @classmethod
    def decode_from(cls, dec: Decoder) -> SECINFO4args:
        return cls(decode_name(dec))


@dataclass(frozen=True, slots=True)
class SETATTR4args:
    """``struct SETATTR4args { stateid4 stateid; fattr4 obj_attributes; }`` (RFC 7530 §16.32)."""

    stateid: stateid4
    obj_attributes: Fattr4
    opnum: ClassVar[nfs_opnum4] = nfs_opnum4.OP_SETATTR

    def encode_into(self, enc: Encoder) -> None:
        self.stateid.encode_into(enc)
        self.obj_attributes.encode_into(enc)

    @classmethod
    def decode_from(cls, dec: Decoder) -> SETATTR4args:
        return cls(stateid4.decode_from(dec), Fattr4.decode_from(dec))


@dataclass(frozen=True, slots=True)
class netaddr4:
    """``struct netaddr4 { string na_r_netid<>; string na_r_addr<>; }`` (RFC 7530 §2.2)."""

    na_r_netid: str
    na_r_addr: str

    def encode_into(self, enc: Encoder) -> None:
        enc.string(self.na_r_netid, c.NFS4_OPAQUE_LIMIT).string(self.na_r_addr, c.NFS4_OPAQUE_LIMIT)

    @classmethod
    def decode_from(cls, dec: Decoder) -> netaddr4:
        return cls(dec.string(c.NFS4_OPAQUE_LIMIT), dec.string(c.NFS4_OPAQUE_LIMIT))


@dataclass(frozen=True, slots=True)
class SETCLIENTID4args:
    """RFC 7530 §16.33: ``nfs_client_id4 client; cb_client4 callback; uint32_t callback_ident;``
    (flattened: verifier + id, cb_program + cb_location)."""

    verifier: bytes
    id: bytes
    cb_program: int
    cb_location: netaddr4
    callback_ident: int
    opnum: ClassVar[nfs_opnum4] = nfs_opnum4.OP_SETCLIENTID

    def encode_into(self, enc: Encoder) -> None:
        enc.fixed(self.verifier, c.NFS4_VERIFIER_SIZE).opaque(self.id, c.NFS4_OPAQUE_LIMIT)
        enc.uint32(self.cb_program)
        self.cb_location.encode_into(enc)
        enc.uint32(self.callback_ident)

    @classmethod
    def decode_from(cls, dec: Decoder) -> SETCLIENTID4args:
        return cls(
            _verifier(dec),
            dec.opaque(c.NFS4_OPAQUE_LIMIT),
            dec.uint32(),
            netaddr4.decode_from(dec),
            dec.uint32(),
        )


@dataclass(frozen=True, slots=True)
class SETCLIENTID_CONFIRM4args:
    """``{ clientid4 clientid; verifier4 setclientid_confirm; }`` (RFC 7530 §16.34)."""

    clientid: int
    setclientid_confirm: bytes
    opnum: ClassVar[nfs_opnum4] = nfs_opnum4.OP_SETCLIENTID_CONFIRM

    def encode_into(self, enc: Encoder) -> None:
        enc.uint64(self.clientid).fixed(self.setclientid_confirm, c.NFS4_VERIFIER_SIZE)

    @classmethod
    def decode_from(cls, dec: Decoder) -> SETCLIENTID_CONFIRM4args:
        return cls(dec.uint64(), _verifier(dec))


@dataclass(frozen=True, slots=True)
class RENEW4args:
    """``struct RENEW4args { clientid4 clientid; }`` (RFC 7530 §16.29)."""

    clientid: int
    opnum: ClassVar[nfs_opnum4] = nfs_opnum4.OP_RENEW

    def encode_into(self, enc: Encoder) -> None:
        enc.uint64(self.clientid)

    @classmethod
    def decode_from(cls, dec: Decoder) -> RENEW4args:
        return cls(dec.uint64())


@dataclass(frozen=True, slots=True)
class state_protect4_a:
    """``union state_protect4_a switch (state_protect_how4 spa_how)`` (RFC 8881 §18.35.1).
    SP4_SSV is not supported (we never send it)."""

    spa_how: state_protect_how4
    spa_mach_ops: state_protect_ops4 | None = None

    def encode_into(self, enc: Encoder) -> None:
        enc.uint32(self.spa_how)
        if self.spa_how == state_protect_how4.SP4_MACH_CRED:
            (self.spa_mach_ops or state_protect_ops4()).encode_into(enc)
        elif self.spa_how == state_protect_how4.SP4_SSV:
            raise XdrError("SP4_SSV is not supported")

    @classmethod
    def decode_from(cls, dec: Decoder) -> state_protect4_a:
        how = dec.enum(state_protect_how4)
        if how == state_protect_how4.SP4_MACH_CRED:
            return cls(how, state_protect_ops4.decode_from(dec))
        if how == state_protect_how4.SP4_SSV:
            raise XdrError("SP4_SSV is not supported")
        return cls(how)


@dataclass(frozen=True, slots=True)
class EXCHANGE_ID4args:
    """RFC 8881 §18.35.1 (client_owner4 flattened to co_verifier + co_ownerid)."""

    co_verifier: bytes
    co_ownerid: bytes
    eia_flags: int
    eia_state_protect: state_protect4_a
    eia_client_impl_id: tuple[nfs_impl_id4, ...] = ()
    opnum: ClassVar[nfs_opnum4] = nfs_opnum4.OP_EXCHANGE_ID

    def encode_into(self, enc: Encoder) -> None:
        enc.fixed(self.co_verifier, c.NFS4_VERIFIER_SIZE).opaque(self.co_ownerid, c.NFS4_OPAQUE_LIMIT)
        enc.uint32(self.eia_flags)
        self.eia_state_protect.encode_into(enc)
        if len(self.eia_client_impl_id) > 1:
            raise XdrError("eia_client_impl_id<1> has at most one element")
        enc.uint32(len(self.eia_client_impl_id))
        for i in self.eia_client_impl_id:
            i.encode_into(enc)

    @classmethod
    def decode_from(cls, dec: Decoder) -> EXCHANGE_ID4args:
        verf, owner, flags = _verifier(dec), dec.opaque(c.NFS4_OPAQUE_LIMIT), dec.uint32()
        sp = state_protect4_a.decode_from(dec)
        impl = tuple(dec.array(lambda: nfs_impl_id4.decode_from(dec), 1))
        return cls(verf, owner, flags, sp, impl)


@dataclass(frozen=True, slots=True)
class callback_sec_parms4:
    """``union callback_sec_parms4 switch (uint32_t cb_secflavor)`` (RFC 8881 §18.36.1).
    rpclatch offers no back channel, so only AUTH_NONE is supported."""

    cb_secflavor: int = AuthFlavor.AUTH_NONE

    def encode_into(self, enc: Encoder) -> None:
        if self.cb_secflavor != AuthFlavor.AUTH_NONE:
            raise XdrError("only AUTH_NONE callback security is supported")
        enc.uint32(self.cb_secflavor)

    @classmethod
    def decode_from(cls, dec: Decoder) -> callback_sec_parms4:
        flavor = dec.uint32()
        if flavor != AuthFlavor.AUTH_NONE:
            raise XdrError(f"callback security flavor {flavor} is not supported")
        return cls(flavor)


@dataclass(frozen=True, slots=True)
class CREATE_SESSION4args:
    """RFC 8881 §18.36.1."""

    csa_clientid: int
    csa_sequence: int
    csa_flags: int
    csa_fore_chan_attrs: channel_attrs4
    csa_back_chan_attrs: channel_attrs4
    csa_cb_program: int
    csa_sec_parms: tuple[callback_sec_parms4, ...] = (callback_sec_parms4(),)
    opnum: ClassVar[nfs_opnum4] = nfs_opnum4.OP_CREATE_SESSION

    def encode_into(self, enc: Encoder) -> None:
        enc.uint64(self.csa_clientid).uint32(self.csa_sequence).uint32(self.csa_flags)
        self.csa_fore_chan_attrs.encode_into(enc)
        self.csa_back_chan_attrs.encode_into(enc)
        enc.uint32(self.csa_cb_program).uint32(len(self.csa_sec_parms))
        for p in self.csa_sec_parms:
            p.encode_into(enc)

    @classmethod
    def decode_from(cls, dec: Decoder) -> CREATE_SESSION4args:
        cid, seq, flags = dec.uint64(), dec.uint32(), dec.uint32()
        fore, back = channel_attrs4.decode_from(dec), channel_attrs4.decode_from(dec)
        prog = dec.uint32()
        parms = tuple(dec.array(lambda: callback_sec_parms4.decode_from(dec), 16))
        return cls(cid, seq, flags, fore, back, prog, parms)


@dataclass(frozen=True, slots=True)
class SEQUENCE4args:
    """RFC 8881 §18.46.1."""

    sa_sessionid: bytes
    sa_sequenceid: int
    sa_slotid: int
    sa_highest_slotid: int
    sa_cachethis: bool
    opnum: ClassVar[nfs_opnum4] = nfs_opnum4.OP_SEQUENCE

    def encode_into(self, enc: Encoder) -> None:
        enc.fixed(self.sa_sessionid, c.NFS4_SESSIONID_SIZE).uint32(self.sa_sequenceid)
        enc.uint32(self.sa_slotid).uint32(self.sa_highest_slotid).boolean(self.sa_cachethis)

    @classmethod
    def decode_from(cls, dec: Decoder) -> SEQUENCE4args:
        return cls(dec.fixed(c.NFS4_SESSIONID_SIZE), dec.uint32(), dec.uint32(), dec.uint32(), dec.boolean())


@dataclass(frozen=True, slots=True)
class RECLAIM_COMPLETE4args:
    """``struct RECLAIM_COMPLETE4args { bool rca_one_fs; }`` (RFC 8881 §18.51)."""

    rca_one_fs: bool = False
    opnum: ClassVar[nfs_opnum4] = nfs_opnum4.OP_RECLAIM_COMPLETE

    def encode_into(self, enc: Encoder) -> None:
        enc.boolean(self.rca_one_fs)

    @classmethod
    def decode_from(cls, dec: Decoder) -> RECLAIM_COMPLETE4args:
        return cls(dec.boolean())


@dataclass(frozen=True, slots=True)
class SECINFO_NO_NAME4args:
    """``typedef secinfo_style4 SECINFO_NO_NAME4args;`` (RFC 8881 §18.45)."""

    style: secinfo_style4 = secinfo_style4.SECINFO_STYLE4_CURRENT_FH
    opnum: ClassVar[nfs_opnum4] = nfs_opnum4.OP_SECINFO_NO_NAME

    def encode_into(self, enc: Encoder) -> None:
        enc.uint32(self.style)

    @classmethod
    def decode_from(cls, dec: Decoder) -> SECINFO_NO_NAME4args:
        return cls(dec.enum(secinfo_style4))


@dataclass(frozen=True, slots=True)
class DESTROY_SESSION4args:
    """``struct DESTROY_SESSION4args { sessionid4 dsa_sessionid; }`` (RFC 8881 §18.37)."""

    dsa_sessionid: bytes
    opnum: ClassVar[nfs_opnum4] = nfs_opnum4.OP_DESTROY_SESSION

    def encode_into(self, enc: Encoder) -> None:
        enc.fixed(self.dsa_sessionid, c.NFS4_SESSIONID_SIZE)

    @classmethod
    def decode_from(cls, dec: Decoder) -> DESTROY_SESSION4args:
        return cls(dec.fixed(c.NFS4_SESSIONID_SIZE))


@dataclass(frozen=True, slots=True)
class DESTROY_CLIENTID4args:
    """``struct DESTROY_CLIENTID4args { clientid4 dca_clientid; }`` (RFC 8881 §18.50)."""

    dca_clientid: int
    opnum: ClassVar[nfs_opnum4] = nfs_opnum4.OP_DESTROY_CLIENTID

    def encode_into(self, enc: Encoder) -> None:
        enc.uint64(self.dca_clientid)

    @classmethod
    def decode_from(cls, dec: Decoder) -> DESTROY_CLIENTID4args:
        return cls(dec.uint64())


ArgOp = (
    PUTROOTFH4args
    | GETFH4args
    | SAVEFH4args
    | RESTOREFH4args
    | PUTFH4args
    | LOOKUP4args
    | GETATTR4args
    | READDIR4args
    | OPEN4args
    | OPEN_CONFIRM4args
    | CLOSE4args
    | DELEGRETURN4args
    | READ4args
    | WRITE4args
    | COMMIT4args
    | CREATE4args
    | REMOVE4args
    | SECINFO4args
    | SETATTR4args
    | SETCLIENTID4args
    | SETCLIENTID_CONFIRM4args
    | RENEW4args
    | EXCHANGE_ID4args
    | CREATE_SESSION4args
    | SEQUENCE4args
    | RECLAIM_COMPLETE4args
    | SECINFO_NO_NAME4args
    | DESTROY_SESSION4args
    | DESTROY_CLIENTID4args
)

ARGS_BY_OP: dict[nfs_opnum4, type[ArgOp]] = {
    cls.opnum: cls
    for cls in (
        PUTROOTFH4args,
        GETFH4args,
        SAVEFH4args,
        RESTOREFH4args,
        PUTFH4args,
        LOOKUP4args,
        GETATTR4args,
        READDIR4args,
        OPEN4args,
        OPEN_CONFIRM4args,
        CLOSE4args,
        DELEGRETURN4args,
        READ4args,
        WRITE4args,
        COMMIT4args,
        CREATE4args,
        REMOVE4args,
        SECINFO4args,
        SETATTR4args,
        SETCLIENTID4args,
        SETCLIENTID_CONFIRM4args,
        RENEW4args,
        EXCHANGE_ID4args,
        CREATE_SESSION4args,
        SEQUENCE4args,
        RECLAIM_COMPLETE4args,
        SECINFO_NO_NAME4args,
        DESTROY_SESSION4args,
        DESTROY_CLIENTID4args,
    )
}


# ==================================================================================================
# Results
# ==================================================================================================


@dataclass(frozen=True, slots=True)
class StatusRes:
    """Results that are only ``nfsstat4 status`` (PUTFH, PUTROOTFH, LOOKUP, RENEW, ...)."""

    status: nfsstat4
    opnum: ClassVar[nfs_opnum4]

    def ok(self) -> None:
        if self.status != nfsstat4.NFS4_OK:
            raise Nfs4RemoteError(self.status, self.opnum)

    def encode_into(self, enc: Encoder) -> None:
        enc.uint32(self.status)

    @classmethod
    def decode_from(cls, dec: Decoder) -> StatusRes:
        return cls(dec.enum(nfsstat4))


@dataclass(frozen=True, slots=True)
class PUTFH4res(StatusRes):
    """RFC 7530 §16.20."""

    opnum: ClassVar[nfs_opnum4] = nfs_opnum4.OP_PUTFH


@dataclass(frozen=True, slots=True)
class PUTROOTFH4res(StatusRes):
    """RFC 7530 §16.22."""

    opnum: ClassVar[nfs_opnum4] = nfs_opnum4.OP_PUTROOTFH


@dataclass(frozen=True, slots=True)
class SAVEFH4res(StatusRes):
    """RFC 7530 §16.28."""

    opnum: ClassVar[nfs_opnum4] = nfs_opnum4.OP_SAVEFH


@dataclass(frozen=True, slots=True)
class RESTOREFH4res(StatusRes):
    """RFC 7530 §16.27."""

    opnum: ClassVar[nfs_opnum4] = nfs_opnum4.OP_RESTOREFH


@dataclass(frozen=True, slots=True)
class LOOKUP4res(StatusRes):
    """RFC 7530 §16.13."""

    opnum: ClassVar[nfs_opnum4] = nfs_opnum4.OP_LOOKUP


@dataclass(frozen=True, slots=True)
class DELEGRETURN4res(StatusRes):
    """RFC 7530 §16.6."""

    opnum: ClassVar[nfs_opnum4] = nfs_opnum4.OP_DELEGRETURN


@dataclass(frozen=True, slots=True)
class SETCLIENTID_CONFIRM4res(StatusRes):
    """RFC 7530 §16.34."""

    opnum: ClassVar[nfs_opnum4] = nfs_opnum4.OP_SETCLIENTID_CONFIRM


@dataclass(frozen=True, slots=True)
class RENEW4res(StatusRes):
    """RFC 7530 §16.29."""

    opnum: ClassVar[nfs_opnum4] = nfs_opnum4.OP_RENEW


@dataclass(frozen=True, slots=True)
class RECLAIM_COMPLETE4res(StatusRes):
    """RFC 8881 §18.51."""

    opnum: ClassVar[nfs_opnum4] = nfs_opnum4.OP_RECLAIM_COMPLETE


@dataclass(frozen=True, slots=True)
class DESTROY_SESSION4res(StatusRes):
    """RFC 8881 §18.37."""

    opnum: ClassVar[nfs_opnum4] = nfs_opnum4.OP_DESTROY_SESSION


@dataclass(frozen=True, slots=True)
class DESTROY_CLIENTID4res(StatusRes):
    """RFC 8881 §18.50."""

    opnum: ClassVar[nfs_opnum4] = nfs_opnum4.OP_DESTROY_CLIENTID


@dataclass(frozen=True, slots=True)
class ILLEGAL4res(StatusRes):
    """RFC 7530 §16.35: the server's answer to an opcode it does not know."""

    opnum: ClassVar[nfs_opnum4] = nfs_opnum4.OP_ILLEGAL


@dataclass(frozen=True, slots=True)
class GETFH4res:
    """``union GETFH4res switch (nfsstat4 status) { case NFS4_OK: nfs_fh4 object; }`` (§16.8)."""

    status: nfsstat4
    object: bytes | None = None
    opnum: ClassVar[nfs_opnum4] = nfs_opnum4.OP_GETFH

    def ok(self) -> bytes:
        return _ok(self.status, self.object, self.opnum)

    def encode_into(self, enc: Encoder) -> None:
        enc.uint32(self.status)
        if self.status == nfsstat4.NFS4_OK:
            enc.opaque(self.object or b"", c.NFS4_FHSIZE)

    @classmethod
    def decode_from(cls, dec: Decoder) -> GETFH4res:
        st = dec.enum(nfsstat4)
        return cls(st, _fh(dec) if st == nfsstat4.NFS4_OK else None)


@dataclass(frozen=True, slots=True)
class GETATTR4res:
    """``union GETATTR4res switch (nfsstat4 status) { case NFS4_OK: fattr4 obj_attributes; }``."""

    status: nfsstat4
    obj_attributes: Fattr4 | None = None
    opnum: ClassVar[nfs_opnum4] = nfs_opnum4.OP_GETATTR

    def ok(self) -> Fattr4:
        return _ok(self.status, self.obj_attributes, self.opnum)

    def encode_into(self, enc: Encoder) -> None:
        enc.uint32(self.status)
        if self.status == nfsstat4.NFS4_OK:
            (self.obj_attributes or Fattr4()).encode_into(enc)

    @classmethod
    def decode_from(cls, dec: Decoder) -> GETATTR4res:
        st = dec.enum(nfsstat4)
        return cls(st, Fattr4.decode_from(dec) if st == nfsstat4.NFS4_OK else None)


@dataclass(frozen=True, slots=True)
class entry4:
    """One READDIR entry (cookie, name, attrs); the ``nextentry`` chain becomes a tuple."""

    cookie: int
    name: str
    attrs: Fattr4


@dataclass(frozen=True, slots=True)
class READDIR4resok:
    """``{ verifier4 cookieverf; dirlist4 reply; }`` with dirlist4 = entries + eof (§16.24)."""

    cookieverf: bytes
    entries: tuple[entry4, ...]
    eof: bool

    #: Bound on entries per reply while decoding (a reply is at most maxcount bytes anyway).
    MAX_ENTRIES: ClassVar[int] = 65536

    def encode_into(self, enc: Encoder) -> None:
        enc.fixed(self.cookieverf, c.NFS4_VERIFIER_SIZE)
        for e in self.entries:
            enc.boolean(True).uint64(e.cookie)
            encode_name(enc, e.name)
            e.attrs.encode_into(enc)
        enc.boolean(False).boolean(self.eof)

    @classmethod
    def decode_from(cls, dec: Decoder) -> READDIR4resok:
        verf = _verifier(dec)
        entries: list[entry4] = []
        while dec.boolean():  # the optional-data linked list of entry4
            if len(entries) >= cls.MAX_ENTRIES:
                raise XdrError("too many READDIR entries")
            cookie = dec.uint64()
            name = decode_name(dec)
            entries.append(entry4(cookie, name, Fattr4.decode_from(dec)))
        return cls(verf, tuple(entries), dec.boolean())


@dataclass(frozen=True, slots=True)
class READDIR4res:
    """RFC 7530 §16.24."""

    status: nfsstat4
    resok: READDIR4resok | None = None
    opnum: ClassVar[nfs_opnum4] = nfs_opnum4.OP_READDIR

    def ok(self) -> READDIR4resok:
        return _ok(self.status, self.resok, self.opnum)

    def encode_into(self, enc: Encoder) -> None:
        _encode_union(enc, self.status, self.resok)

    @classmethod
    def decode_from(cls, dec: Decoder) -> READDIR4res:
        st = dec.enum(nfsstat4)
        return cls(st, READDIR4resok.decode_from(dec) if st == nfsstat4.NFS4_OK else None)


def _encode_union(enc: Encoder, status: nfsstat4, resok: _Codec | None) -> None:
    enc.uint32(status)
    if status == nfsstat4.NFS4_OK:
        if resok is None:
            raise XdrError("NFS4_OK result needs its resok body")
        resok.encode_into(enc)


@dataclass(frozen=True, slots=True)
class nfsace4:
    """``struct nfsace4 { acetype4 type; aceflag4 flag; acemask4 access_mask; utf8str_mixed who; }``."""

    type: int
    flag: int
    access_mask: int
    who: str

    def encode_into(self, enc: Encoder) -> None:
        enc.uint32(self.type).uint32(self.flag).uint32(self.access_mask)
        enc.string(self.who, c.NFS4_OPAQUE_LIMIT)

    @classmethod
    def decode_from(cls, dec: Decoder) -> nfsace4:
        return cls(dec.uint32(), dec.uint32(), dec.uint32(), dec.string(c.NFS4_OPAQUE_LIMIT))


@dataclass(frozen=True, slots=True)
class open_delegation4:
    """``union open_delegation4 switch (open_delegation_type4 delegation_type)`` (RFC 7530 §16.16,
    RFC 8881 §18.16). Read/write delegations keep their stateid (so the client can DELEGRETURN);
    the space limit and ACE are decoded and kept for completeness."""

    delegation_type: open_delegation_type4
    stateid: stateid4 | None = None
    recall: bool = False
    space_limit: tuple[limit_by4, int, int] | None = None
    permissions: nfsace4 | None = None
    ond_why: why_no_delegation4 | None = None
    ond_flag: bool | None = None

    def encode_into(self, enc: Encoder) -> None:
        t = self.delegation_type
        enc.uint32(t)
        if t in (open_delegation_type4.OPEN_DELEGATE_READ, open_delegation_type4.OPEN_DELEGATE_WRITE):
            if self.stateid is None or self.permissions is None:
                raise XdrError("a delegation needs stateid and permissions")
            self.stateid.encode_into(enc)
            enc.boolean(self.recall)
            if t == open_delegation_type4.OPEN_DELEGATE_WRITE:
                how, a, b = self.space_limit or (limit_by4.NFS_LIMIT_SIZE, 0, 0)
                enc.uint32(how)
                if how == limit_by4.NFS_LIMIT_SIZE:
                    enc.uint64(a)
                else:
                    enc.uint32(a).uint32(b)
            self.permissions.encode_into(enc)
        elif t == open_delegation_type4.OPEN_DELEGATE_NONE_EXT:
            why = self.ond_why if self.ond_why is not None else why_no_delegation4.WND4_NOT_WANTED
            enc.uint32(why)
            if why in (why_no_delegation4.WND4_CONTENTION, why_no_delegation4.WND4_RESOURCE):
                enc.boolean(bool(self.ond_flag))

    @classmethod
    def decode_from(cls, dec: Decoder) -> open_delegation4:
        t = dec.enum(open_delegation_type4)
        if t in (open_delegation_type4.OPEN_DELEGATE_READ, open_delegation_type4.OPEN_DELEGATE_WRITE):
            sid, recall = stateid4.decode_from(dec), dec.boolean()
            limit = None
            if t == open_delegation_type4.OPEN_DELEGATE_WRITE:
                how = dec.enum(limit_by4)
                limit = (
                    (how, dec.uint64(), 0)
                    if how == limit_by4.NFS_LIMIT_SIZE
                    else (how, dec.uint32(), dec.uint32())
                )
            return cls(t, sid, recall, limit, nfsace4.decode_from(dec))
        if t == open_delegation_type4.OPEN_DELEGATE_NONE_EXT:
            why = dec.enum(why_no_delegation4)
            flag = (
                dec.boolean()
                if why in (why_no_delegation4.WND4_CONTENTION, why_no_delegation4.WND4_RESOURCE)
                else None
            )
            return cls(t, ond_why=why, ond_flag=flag)
        return cls(t)


@dataclass(frozen=True, slots=True)
class OPEN4resok:
    """``{ stateid4 stateid; change_info4 cinfo; uint32_t rflags; bitmap4 attrset;
    open_delegation4 delegation; }`` (RFC 7530 §16.16.2)."""

    stateid: stateid4
    cinfo: change_info4
    rflags: int
    attrset: tuple[int, ...]
    delegation: open_delegation4

    def encode_into(self, enc: Encoder) -> None:
        self.stateid.encode_into(enc)
        self.cinfo.encode_into(enc)
        enc.uint32(self.rflags)
        encode_bitmap(enc, self.attrset)
        self.delegation.encode_into(enc)

    @classmethod
    def decode_from(cls, dec: Decoder) -> OPEN4resok:
        return cls(
            stateid4.decode_from(dec),
            change_info4.decode_from(dec),
            dec.uint32(),
            decode_bitmap(dec),
            open_delegation4.decode_from(dec),
        )


@dataclass(frozen=True, slots=True)
class OPEN4res:
    """RFC 7530 §16.16.2."""

    status: nfsstat4
    resok: OPEN4resok | None = None
    opnum: ClassVar[nfs_opnum4] = nfs_opnum4.OP_OPEN

    def ok(self) -> OPEN4resok:
        return _ok(self.status, self.resok, self.opnum)

    def encode_into(self, enc: Encoder) -> None:
        _encode_union(enc, self.status, self.resok)

    @classmethod
    def decode_from(cls, dec: Decoder) -> OPEN4res:
        st = dec.enum(nfsstat4)
        return cls(st, OPEN4resok.decode_from(dec) if st == nfsstat4.NFS4_OK else None)


@dataclass(frozen=True, slots=True)
class _StateidRes:
    status: nfsstat4
    stateid: stateid4 | None = None
    opnum: ClassVar[nfs_opnum4]

    def ok(self) -> stateid4:
        return _ok(self.status, self.stateid, self.opnum)

    def encode_into(self, enc: Encoder) -> None:
        _encode_union(enc, self.status, self.stateid)


@dataclass(frozen=True, slots=True)
class OPEN_CONFIRM4res(_StateidRes):
    """``case NFS4_OK: OPEN_CONFIRM4resok { stateid4 open_stateid; }`` (RFC 7530 §16.18)."""

    opnum: ClassVar[nfs_opnum4] = nfs_opnum4.OP_OPEN_CONFIRM

    @classmethod
    def decode_from(cls, dec: Decoder) -> OPEN_CONFIRM4res:
        st = dec.enum(nfsstat4)
        return cls(st, stateid4.decode_from(dec) if st == nfsstat4.NFS4_OK else None)


@dataclass(frozen=True, slots=True)
class CLOSE4res(_StateidRes):
    """``case NFS4_OK: stateid4 open_stateid;`` (RFC 7530 §16.2)."""

    opnum: ClassVar[nfs_opnum4] = nfs_opnum4.OP_CLOSE

    @classmethod
    def decode_from(cls, dec: Decoder) -> CLOSE4res:
        st = dec.enum(nfsstat4)
        return cls(st, stateid4.decode_from(dec) if st == nfsstat4.NFS4_OK else None)


@dataclass(frozen=True, slots=True)
class READ4resok:
    """``struct READ4resok { bool eof; opaque data<>; }`` (RFC 7530 §16.23)."""

    eof: bool
    data: bytes

    def encode_into(self, enc: Encoder) -> None:
        enc.boolean(self.eof).opaque(self.data, c.MAX_DATA)

    @classmethod
    def decode_from(cls, dec: Decoder) -> READ4resok:
        return cls(dec.boolean(), dec.opaque(c.MAX_DATA))


@dataclass(frozen=True, slots=True)
class READ4res:
    """RFC 7530 §16.23."""

    status: nfsstat4
    resok: READ4resok | None = None
    opnum: ClassVar[nfs_opnum4] = nfs_opnum4.OP_READ

    def ok(self) -> READ4resok:
        return _ok(self.status, self.resok, self.opnum)

    def encode_into(self, enc: Encoder) -> None:
        _encode_union(enc, self.status, self.resok)

    @classmethod
    def decode_from(cls, dec: Decoder) -> READ4res:
        st = dec.enum(nfsstat4)
        return cls(st, READ4resok.decode_from(dec) if st == nfsstat4.NFS4_OK else None)


@dataclass(frozen=True, slots=True)
class WRITE4resok:
    """``{ count4 count; stable_how4 committed; verifier4 writeverf; }`` (RFC 7530 §16.36)."""

    count: int
    committed: stable_how4
    writeverf: bytes

    def encode_into(self, enc: Encoder) -> None:
        enc.uint32(self.count).uint32(self.committed).fixed(self.writeverf, c.NFS4_VERIFIER_SIZE)

    @classmethod
    def decode_from(cls, dec: Decoder) -> WRITE4resok:
        return cls(dec.uint32(), dec.enum(stable_how4), _verifier(dec))


@dataclass(frozen=True, slots=True)
class WRITE4res:
    """RFC 7530 §16.36."""

    status: nfsstat4
    resok: WRITE4resok | None = None
    opnum: ClassVar[nfs_opnum4] = nfs_opnum4.OP_WRITE

    def ok(self) -> WRITE4resok:
        return _ok(self.status, self.resok, self.opnum)

    def encode_into(self, enc: Encoder) -> None:
        _encode_union(enc, self.status, self.resok)

    @classmethod
    def decode_from(cls, dec: Decoder) -> WRITE4res:
        st = dec.enum(nfsstat4)
        return cls(st, WRITE4resok.decode_from(dec) if st == nfsstat4.NFS4_OK else None)


@dataclass(frozen=True, slots=True)
class COMMIT4res:
    """``case NFS4_OK: COMMIT4resok { verifier4 writeverf; }`` (RFC 7530 §16.3)."""

    status: nfsstat4
    writeverf: bytes | None = None
    opnum: ClassVar[nfs_opnum4] = nfs_opnum4.OP_COMMIT

    def ok(self) -> bytes:
        return _ok(self.status, self.writeverf, self.opnum)

    def encode_into(self, enc: Encoder) -> None:
        enc.uint32(self.status)
        if self.status == nfsstat4.NFS4_OK:
            enc.fixed(self.writeverf or bytes(8), c.NFS4_VERIFIER_SIZE)

    @classmethod
    def decode_from(cls, dec: Decoder) -> COMMIT4res:
        st = dec.enum(nfsstat4)
        return cls(st, _verifier(dec) if st == nfsstat4.NFS4_OK else None)


@dataclass(frozen=True, slots=True)
class CREATE4resok:
    """``{ change_info4 cinfo; bitmap4 attrset; }`` (RFC 7530 §16.4)."""

    cinfo: change_info4
    attrset: tuple[int, ...]

    def encode_into(self, enc: Encoder) -> None:
        self.cinfo.encode_into(enc)
        encode_bitmap(enc, self.attrset)

    @classmethod
    def decode_from(cls, dec: Decoder) -> CREATE4resok:
        return cls(change_info4.decode_from(dec), decode_bitmap(dec))


@dataclass(frozen=True, slots=True)
class CREATE4res:
    """RFC 7530 §16.4."""

    status: nfsstat4
    resok: CREATE4resok | None = None
    opnum: ClassVar[nfs_opnum4] = nfs_opnum4.OP_CREATE

    def ok(self) -> CREATE4resok:
        return _ok(self.status, self.resok, self.opnum)

    def encode_into(self, enc: Encoder) -> None:
        _encode_union(enc, self.status, self.resok)

    @classmethod
    def decode_from(cls, dec: Decoder) -> CREATE4res:
        st = dec.enum(nfsstat4)
        return cls(st, CREATE4resok.decode_from(dec) if st == nfsstat4.NFS4_OK else None)


@dataclass(frozen=True, slots=True)
class REMOVE4res:
    """``case NFS4_OK: REMOVE4resok { change_info4 cinfo; }`` (RFC 7530 §16.25)."""

    status: nfsstat4
    cinfo: change_info4 | None = None
    opnum: ClassVar[nfs_opnum4] = nfs_opnum4.OP_REMOVE

    def ok(self) -> change_info4:
        return _ok(self.status, self.cinfo, self.opnum)

    def encode_into(self, enc: Encoder) -> None:
        _encode_union(enc, self.status, self.cinfo)

    @classmethod
    def decode_from(cls, dec: Decoder) -> REMOVE4res:
        st = dec.enum(nfsstat4)
        return cls(st, change_info4.decode_from(dec) if st == nfsstat4.NFS4_OK else None)


@dataclass(frozen=True, slots=True)
class SECINFO4res:
    """``case NFS4_OK: secinfo4 SECINFO4resok<>;`` in the server's order of preference
    (RFC 7530 §16.31.4)."""

    status: nfsstat4
    flavors: tuple[secinfo4, ...] | None = None
    opnum: ClassVar[nfs_opnum4] = nfs_opnum4.OP_SECINFO

    def ok(self) -> tuple[secinfo4, ...]:
        return _ok(self.status, self.flavors, self.opnum)

    def encode_into(self, enc: Encoder) -> None:
        enc.uint32(self.status)
        if self.status == nfsstat4.NFS4_OK:
            fl = self.flavors or ()
            enc.uint32(len(fl))
            for f in fl:
                f.encode_into(enc)

    @classmethod
    def decode_from(cls, dec: Decoder) -> SECINFO4res:
        st = dec.enum(nfsstat4)
        if st != nfsstat4.NFS4_OK:
            return cls(st)
        return cls(st, tuple(dec.array(lambda: secinfo4.decode_from(dec), c.MAX_SECINFO_ENTRIES)))


@dataclass(frozen=True, slots=True)
class SECINFO_NO_NAME4res(SECINFO4res):
    """``typedef SECINFO4res SECINFO_NO_NAME4res;`` (RFC 8881 §18.45)."""

    opnum: ClassVar[nfs_opnum4] = nfs_opnum4.OP_SECINFO_NO_NAME

    @classmethod
    def decode_from(cls, dec: Decoder) -> SECINFO_NO_NAME4res:
        r = SECINFO4res.decode_from(dec)
        return cls(r.status, r.flavors)


@dataclass(frozen=True, slots=True)
class SETATTR4res:
    """``struct SETATTR4res { nfsstat4 status; bitmap4 attrsset; }`` (RFC 7530 §16.32): the
    bitmap is present whatever the status."""

    status: nfsstat4
    attrsset: tuple[int, ...] = ()
    opnum: ClassVar[nfs_opnum4] = nfs_opnum4.OP_SETATTR

    def ok(self) -> tuple[int, ...]:
        return _ok(self.status, self.attrsset, self.opnum)

    def encode_into(self, enc: Encoder) -> None:
        enc.uint32(self.status)
        encode_bitmap(enc, self.attrsset)

    @classmethod
    def decode_from(cls, dec: Decoder) -> SETATTR4res:
        return cls(dec.enum(nfsstat4), decode_bitmap(dec))


@dataclass(frozen=True, slots=True)
class SETCLIENTID4resok:
    """``{ clientid4 clientid; verifier4 setclientid_confirm; }`` (RFC 7530 §16.33)."""

    clientid: int
    setclientid_confirm: bytes

    def encode_into(self, enc: Encoder) -> None:
        enc.uint64(self.clientid).fixed(self.setclientid_confirm, c.NFS4_VERIFIER_SIZE)

    @classmethod
    def decode_from(cls, dec: Decoder) -> SETCLIENTID4resok:
        return cls(dec.uint64(), _verifier(dec))


@dataclass(frozen=True, slots=True)
class SETCLIENTID4res:
    """RFC 7530 §16.33: NFS4_OK -> resok; NFS4ERR_CLID_INUSE -> clientaddr4 client_using."""

    status: nfsstat4
    resok: SETCLIENTID4resok | None = None
    client_using: netaddr4 | None = None
    opnum: ClassVar[nfs_opnum4] = nfs_opnum4.OP_SETCLIENTID

    def ok(self) -> SETCLIENTID4resok:
        return _ok(self.status, self.resok, self.opnum)

    def encode_into(self, enc: Encoder) -> None:
        _encode_union(enc, self.status, self.resok)
        if self.status == nfsstat4.NFS4ERR_CLID_INUSE:
            (self.client_using or netaddr4("", "")).encode_into(enc)

    @classmethod
    def decode_from(cls, dec: Decoder) -> SETCLIENTID4res:
        st = dec.enum(nfsstat4)
        if st == nfsstat4.NFS4_OK:
            return cls(st, SETCLIENTID4resok.decode_from(dec))
        if st == nfsstat4.NFS4ERR_CLID_INUSE:
            return cls(st, client_using=netaddr4.decode_from(dec))
        return cls(st)


@dataclass(frozen=True, slots=True)
class state_protect4_r:
    """``union state_protect4_r switch (state_protect_how4 spr_how)`` (RFC 8881 §18.35.2).
    For SP4_SSV the ssv_prot_info4 is decoded and kept raw (we never ask for SSV)."""

    spr_how: state_protect_how4
    spr_mach_ops: state_protect_ops4 | None = None

    def encode_into(self, enc: Encoder) -> None:
        enc.uint32(self.spr_how)
        if self.spr_how == state_protect_how4.SP4_MACH_CRED:
            (self.spr_mach_ops or state_protect_ops4()).encode_into(enc)
        elif self.spr_how == state_protect_how4.SP4_SSV:
            raise XdrError("SP4_SSV is not supported")

    @classmethod
    def decode_from(cls, dec: Decoder) -> state_protect4_r:
        how = dec.enum(state_protect_how4)
        if how == state_protect_how4.SP4_MACH_CRED:
            return cls(how, state_protect_ops4.decode_from(dec))
        if how == state_protect_how4.SP4_SSV:
            raise XdrError("server chose SP4_SSV, which we did not offer")
        return cls(how)


@dataclass(frozen=True, slots=True)
class EXCHANGE_ID4resok:
    """RFC 8881 §18.35.2 (server_owner4 flattened to so_minor_id + so_major_id)."""

    eir_clientid: int
    eir_sequenceid: int
    eir_flags: int
    eir_state_protect: state_protect4_r
    so_minor_id: int
    so_major_id: bytes
    eir_server_scope: bytes
    eir_server_impl_id: tuple[nfs_impl_id4, ...] = ()

    def encode_into(self, enc: Encoder) -> None:
        enc.uint64(self.eir_clientid).uint32(self.eir_sequenceid).uint32(self.eir_flags)
        self.eir_state_protect.encode_into(enc)
        enc.uint64(self.so_minor_id).opaque(self.so_major_id, c.NFS4_OPAQUE_LIMIT)
        enc.opaque(self.eir_server_scope, c.NFS4_OPAQUE_LIMIT)
        enc.uint32(len(self.eir_server_impl_id))
        for i in self.eir_server_impl_id:
            i.encode_into(enc)

    @classmethod
    def decode_from(cls, dec: Decoder) -> EXCHANGE_ID4resok:
        cid, seq, flags = dec.uint64(), dec.uint32(), dec.uint32()
        sp = state_protect4_r.decode_from(dec)
        minor, major = dec.uint64(), dec.opaque(c.NFS4_OPAQUE_LIMIT)
        scope = dec.opaque(c.NFS4_OPAQUE_LIMIT)
        impl = tuple(dec.array(lambda: nfs_impl_id4.decode_from(dec), 1))
        return cls(cid, seq, flags, sp, minor, major, scope, impl)


@dataclass(frozen=True, slots=True)
class EXCHANGE_ID4res:
    """RFC 8881 §18.35.2."""

    status: nfsstat4
    resok: EXCHANGE_ID4resok | None = None
    opnum: ClassVar[nfs_opnum4] = nfs_opnum4.OP_EXCHANGE_ID

    def ok(self) -> EXCHANGE_ID4resok:
        return _ok(self.status, self.resok, self.opnum)

    def encode_into(self, enc: Encoder) -> None:
        _encode_union(enc, self.status, self.resok)

    @classmethod
    def decode_from(cls, dec: Decoder) -> EXCHANGE_ID4res:
        st = dec.enum(nfsstat4)
        return cls(st, EXCHANGE_ID4resok.decode_from(dec) if st == nfsstat4.NFS4_OK else None)


@dataclass(frozen=True, slots=True)
class CREATE_SESSION4resok:
    """RFC 8881 §18.36.2."""

    csr_sessionid: bytes
    csr_sequence: int
    csr_flags: int
    csr_fore_chan_attrs: channel_attrs4
    csr_back_chan_attrs: channel_attrs4

    def encode_into(self, enc: Encoder) -> None:
        enc.fixed(self.csr_sessionid, c.NFS4_SESSIONID_SIZE).uint32(self.csr_sequence)
        enc.uint32(self.csr_flags)
        self.csr_fore_chan_attrs.encode_into(enc)
        self.csr_back_chan_attrs.encode_into(enc)

    @classmethod
    def decode_from(cls, dec: Decoder) -> CREATE_SESSION4resok:
        return cls(
            dec.fixed(c.NFS4_SESSIONID_SIZE),
            dec.uint32(),
            dec.uint32(),
            channel_attrs4.decode_from(dec),
            channel_attrs4.decode_from(dec),
        )


@dataclass(frozen=True, slots=True)
class CREATE_SESSION4res:
    """RFC 8881 §18.36.2."""

    status: nfsstat4
    resok: CREATE_SESSION4resok | None = None
    opnum: ClassVar[nfs_opnum4] = nfs_opnum4.OP_CREATE_SESSION

    def ok(self) -> CREATE_SESSION4resok:
        return _ok(self.status, self.resok, self.opnum)

    def encode_into(self, enc: Encoder) -> None:
        _encode_union(enc, self.status, self.resok)

    @classmethod
    def decode_from(cls, dec: Decoder) -> CREATE_SESSION4res:
        st = dec.enum(nfsstat4)
        return cls(st, CREATE_SESSION4resok.decode_from(dec) if st == nfsstat4.NFS4_OK else None)


@dataclass(frozen=True, slots=True)
class SEQUENCE4resok:
    """RFC 8881 §18.46.2."""

    sr_sessionid: bytes
    sr_sequenceid: int
    sr_slotid: int
    sr_highest_slotid: int
    sr_target_highest_slotid: int
    sr_status_flags: int

    def encode_into(self, enc: Encoder) -> None:
        enc.fixed(self.sr_sessionid, c.NFS4_SESSIONID_SIZE)
        for v in (
            self.sr_sequenceid,
            self.sr_slotid,
            self.sr_highest_slotid,
            self.sr_target_highest_slotid,
            self.sr_status_flags,
        ):
            enc.uint32(v)

    @classmethod
    def decode_from(cls, dec: Decoder) -> SEQUENCE4resok:
        return cls(
            dec.fixed(c.NFS4_SESSIONID_SIZE),
            dec.uint32(),
            dec.uint32(),
            dec.uint32(),
            dec.uint32(),
            dec.uint32(),
        )


@dataclass(frozen=True, slots=True)
class SEQUENCE4res:
    """RFC 8881 §18.46.2."""

    status: nfsstat4
    resok: SEQUENCE4resok | None = None
    opnum: ClassVar[nfs_opnum4] = nfs_opnum4.OP_SEQUENCE

    def ok(self) -> SEQUENCE4resok:
        return _ok(self.status, self.resok, self.opnum)

    def encode_into(self, enc: Encoder) -> None:
        _encode_union(enc, self.status, self.resok)

    @classmethod
    def decode_from(cls, dec: Decoder) -> SEQUENCE4res:
        st = dec.enum(nfsstat4)
        return cls(st, SEQUENCE4resok.decode_from(dec) if st == nfsstat4.NFS4_OK else None)


ResOp = (
    StatusRes
    | GETFH4res
    | GETATTR4res
    | READDIR4res
    | OPEN4res
    | OPEN_CONFIRM4res
    | CLOSE4res
    | READ4res
    | WRITE4res
    | COMMIT4res
    | CREATE4res
    | REMOVE4res
    | SECINFO4res
    | SETATTR4res
    | SETCLIENTID4res
    | EXCHANGE_ID4res
    | CREATE_SESSION4res
    | SEQUENCE4res
)

RES_BY_OP: dict[nfs_opnum4, type[ResOp]] = {
    cls.opnum: cls
    for cls in (
        PUTFH4res,
        PUTROOTFH4res,
        SAVEFH4res,
        RESTOREFH4res,
        LOOKUP4res,
        DELEGRETURN4res,
        SETCLIENTID_CONFIRM4res,
        RENEW4res,
        RECLAIM_COMPLETE4res,
        DESTROY_SESSION4res,
        DESTROY_CLIENTID4res,
        ILLEGAL4res,
        GETFH4res,
        GETATTR4res,
        READDIR4res,
        OPEN4res,
        OPEN_CONFIRM4res,
        CLOSE4res,
        READ4res,
        WRITE4res,
        COMMIT4res,
        CREATE4res,
        REMOVE4res,
        SECINFO4res,
        SECINFO_NO_NAME4res,
        SETATTR4res,
        SETCLIENTID4res,
        EXCHANGE_ID4res,
        CREATE_SESSION4res,
        SEQUENCE4res,
    )
}
