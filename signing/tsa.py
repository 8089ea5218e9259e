"""RFC 3161 time-stamping authority (ESSCertIDv2 per RFC 5816) signing with the HSM-held TSA key.

:class:`TimeStampAuthority` turns a DER ``TimeStampReq`` into a DER ``TimeStampResp`` and
never raises for bad input: malformed queries, refused algorithms, policies, extensions, an
unvouched clock and HSM or database failures all come back as ``rejection`` with the RFC 3161
``failInfo`` (mappings and messages follow OpenSSL's ``ts -reply``). Every token's serial is
recorded (``ca.status.record_tsa_serial``) before the HSM signs it, so no token exists that the
register lacks. :class:`LocalTimeStamper` hands the same tokens to pyHanko in-process;
:func:`external_timestamper` is the alternative when a deployment uses someone else's TSA.
"""

from __future__ import annotations

import asyncio
import base64
import ctypes
import ctypes.util
import functools
import hashlib
import logging
import secrets
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from asn1crypto import algos, cms, core, tsp, x509
from pyhanko.sign.timestamps import HTTPTimeStamper, TimeStamper

from ca import status
from hsm.api import HashAlg, KeyManager, KeyRef, SignScheme
from hsm.der import generalized_time, integer, oid, tlv
from hsm.errors import HsmError
from signing import fetch as outbound
from signing.errors import SigningError, Unavailable

__all__ = [
    "ETSI_BTSP_POLICY",
    "MAX_QUERY_BYTES",
    "QUERY_CONTENT_TYPE",
    "REPLY_CONTENT_TYPE",
    "ClockCheck",
    "ExternalTimeStamper",
    "LocalTimeStamper",
    "TimeStampAuthority",
    "TimeStampResponse",
    "TimestampRefused",
    "external_timestamper",
    "kernel_clock_check",
    "read_kernel_clock",
    "timestamp_token",
]

log = logging.getLogger(__name__)

QUERY_CONTENT_TYPE = "application/timestamp-query"
REPLY_CONTENT_TYPE = "application/timestamp-reply"
#: A real query is 50-120 bytes; anything this large is garbage or an attack.
MAX_QUERY_BYTES = 4096
#: ETSI EN 319 421 "best practices time-stamp policy"; claim it only if you operate to it.
ETSI_BTSP_POLICY = "0.4.0.2023.1.1"

#: Returns True when the clock can be vouched for, else a reason (shown in statusString).
ClockCheck = Callable[[], "bool | str"]

_IMPRINT_HASHES = {
    "2.16.840.1.101.3.4.2.1": HashAlg.SHA256,
    "2.16.840.1.101.3.4.2.2": HashAlg.SHA384,
    "2.16.840.1.101.3.4.2.3": HashAlg.SHA512,
}
_SERIAL_ATTEMPTS = 5


class TimestampRefused(SigningError):
    """The TSA would not stamp; ``fail_info`` is the RFC 3161 PKIFailureInfo (asn1crypto name).

    Client mistakes map to 400, an unvouched clock or a system failure to 503.
    """

    type = "signing/timestamp-refused"
    title = "Timestamp refused"

    def __init__(self, fail_info: str, detail: str) -> None:
        super().__init__(detail)
        self.fail_info = fail_info
        self.status = 503 if fail_info in ("time_not_available", "system_failure") else 400


class TimeStampResponse(tsp.TimeStampResp):
    """``TimeStampResp`` with the token optional, as RFC 3161 has it.

    asn1crypto marks ``timeStampToken`` mandatory, so it can neither write a rejection nor read
    one (pyHanko then fails with "Field time_stamp_token is missing" instead of the TSA's
    reason).
    """

    _fields = [  # noqa: RUF012  (asn1crypto's class-level schema)
        ("status", tsp.PKIStatusInfo),
        ("time_stamp_token", cms.ContentInfo, {"optional": True}),
    ]


def _rejection(fail_info: str, text: str) -> bytes:
    return TimeStampResponse(
        {"status": {"status": "rejection", "status_string": [text], "fail_info": {fail_info}}}
    ).dump()


_OID_SIGNED_DATA = oid("1.2.840.113549.1.7.2")
_OID_TST_INFO = oid("1.2.840.113549.1.9.16.1.4")
_OID_MESSAGE_DIGEST = oid("1.2.840.113549.1.9.4")
_ATTR_CONTENT_TYPE = tlv(0x30, oid("1.2.840.113549.1.9.3") + tlv(0x31, _OID_TST_INFO))
_V1, _V3 = integer(1), integer(3)
_GRANTED = tlv(0x30, integer(0))
#: (hash, parameters were NULL) -> the AlgorithmIdentifier echoed in the TSTInfo imprint.
_IMPRINT_ALGORITHMS = {
    (h, null): tlv(0x30, oid(dotted) + (b"\x05\x00" if null else b""))
    for dotted, h in _IMPRINT_HASHES.items()
    for null in (False, True)
}


@dataclass(frozen=True)
class _Signer:
    """The TSA credential, prepared once: everything a token repeats, already DER-encoded.

    Tokens are framed from these parts by hand: building them with asn1crypto objects cost
    2-20 ms a token (it re-encodes whole certificates placed into a new structure), against
    well under a millisecond here. Tests parse every token back with asn1crypto and check
    that re-encoding reproduces it byte for byte (so it is DER).
    """

    certificate_der: bytes
    key: KeyRef
    hash_alg: HashAlg
    scheme: SignScheme
    digest_algorithm: bytes
    signature_algorithm: bytes
    sid: bytes
    signing_certificate: bytes  # the signingCertificateV2 attribute
    tsa_name: bytes  # [0] EXPLICIT GeneralName
    certificates: bytes  # [0] IMPLICIT CertificateSet
    not_before: datetime
    not_after: datetime
    loaded: float


def _load_signer(cred: status.Credential, keys: KeyManager, include_chain: bool) -> _Signer:
    certs = [x509.Certificate.load(der) for der in cred.chain or (cred.certificate,)]
    leaf = certs[0]
    key = keys.find(key_id=cred.key_id)
    if key.public_key_der != leaf.public_key.dump():
        raise TimestampRefused("system_failure", "TSA key does not match its certificate")
    hash_alg = key.algorithm.default_hash
    if key.algorithm.is_rsa:
        scheme, sig_name = SignScheme.RSA_PKCS1V15, f"{hash_alg.value}_rsa"
    else:
        scheme, sig_name = SignScheme.ECDSA, f"{hash_alg.value}_ecdsa"
    ess = tsp.SigningCertificateV2(
        {
            "certs": [
                {
                    # SHA-256 is the field's DEFAULT, so asn1crypto leaves it out of the DER.
                    "cert_hash": hashlib.sha256(cred.certificate).digest(),
                    "issuer_serial": {
                        "issuer": [x509.GeneralName({"directory_name": leaf.issuer})],
                        "serial_number": leaf.serial_number,
                    },
                }
            ]
        }
    )
    # The root stays out: a relying party must bring its own trust anchor anyway.
    embedded = certs[:1] + ([c for c in certs[1:] if not c.self_issued] if include_chain else [])
    cert_set = cms.CertificateSet(
        [cms.CertificateChoices(name="certificate", value=c) for c in embedded]
    ).dump()
    sid = {"issuer_and_serial_number": {"issuer": leaf.issuer, "serial_number": leaf.serial_number}}
    validity = leaf["tbs_certificate"]["validity"]
    return _Signer(
        certificate_der=cred.certificate,
        key=key,
        hash_alg=hash_alg,
        scheme=scheme,
        digest_algorithm=algos.DigestAlgorithm({"algorithm": hash_alg.value}).dump(),
        signature_algorithm=algos.SignedDigestAlgorithm({"algorithm": sig_name}).dump(),
        sid=cms.SignerIdentifier(sid).dump(),
        signing_certificate=cms.CMSAttribute(
            {"type": "signing_certificate_v2", "values": [ess]}
        ).dump(),
        tsa_name=tlv(0xA0, x509.GeneralName({"directory_name": leaf.subject}).dump()),
        certificates=b"\xa0" + cert_set[1:],
        not_before=validity["not_before"].native,
        not_after=validity["not_after"].native,
        loaded=time.monotonic(),
    )


def _accuracy(value: timedelta) -> bytes:
    if value <= timedelta(0):
        raise ValueError("accuracy must be positive")
    seconds, rest = divmod(value // timedelta(microseconds=1), 1_000_000)
    millis, micros = divmod(rest, 1000)
    fields = {"seconds": seconds, "millis": millis, "micros": micros}
    # RFC 3161: each field present only when non-zero (millis/micros are 1..999).
    return bytes(tsp.Accuracy({k: v for k, v in fields.items() if v}).dump())


class TimeStampAuthority:
    """The TSA: one per process, safe to share between threads.

    ``clock`` is the time source (inject one in tests). Before every token the authority
    refuses with ``timeNotAvailable`` when the clock reads outside the TSA certificate's
    validity (a certificate issued with this very clock cannot be valid "in the future") and
    when ``clock_check`` returns anything but True. The default has no ``clock_check``
    because only the deployment knows its time source; production should plug in
    :func:`kernel_clock_check` (the kernel's NTP state, kept by chrony/ntpd/timesyncd) or a
    check of its chrony/NTS status, with an error budget inside ``accuracy``.

    genTime is truncated to the second when ``accuracy`` is whole seconds (never ahead of the
    clock: validators compare it with theirs; the error stays inside the accuracy), and
    carries microseconds otherwise. The credential (key, certificates) is loaded once and
    re-read every ``refresh`` or when it leaves its validity, so a renewed TSA certificate is
    picked up without a restart.
    """

    def __init__(
        self,
        store: status.Store,
        keys: KeyManager,
        *,
        policy_oid: str,
        accuracy: timedelta = timedelta(seconds=1),
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),  # timezone-aware
        clock_check: ClockCheck | None = None,
        include_chain: bool = True,
        refresh: timedelta = timedelta(minutes=5),
        audit_tokens: bool = False,
    ) -> None:
        """``audit_tokens`` adds a hash-chained audit entry per token; off by default since
        the serial register already records every token and the audit append doubles the
        database work per token."""
        self.store = store
        self.keys = keys
        self.policy_oid = core.ObjectIdentifier(policy_oid).dotted
        self._policy = oid(self.policy_oid)
        self.accuracy = accuracy
        self._accuracy = _accuracy(accuracy)
        self._whole_seconds = accuracy % timedelta(seconds=1) == timedelta(0)
        self.clock = clock
        self.clock_check = clock_check
        self.include_chain = include_chain
        self.refresh = refresh.total_seconds()
        self.audit_tokens = audit_tokens
        # Concurrent tokens of this process share one durable commit (ca.groupcommit).
        self._register = status.TsaSerialRegister(store)
        self._signer: _Signer | None = None
        self._lock = threading.Lock()

    # -- credential -------------------------------------------------------------------------

    def _fresh(self, signer: _Signer, now: datetime) -> bool:
        return time.monotonic() - signer.loaded < self.refresh and now < signer.not_after

    def _current_signer(self, now: datetime) -> _Signer:
        signer = self._signer
        if signer is not None and self._fresh(signer, now):
            return signer
        with self._lock:
            signer = self._signer  # another thread may have reloaded meanwhile
            if signer is not None and self._fresh(signer, now):
                return signer
            try:
                cred = status.tsa_credential(self.store, now=now)
            except status.NotFound:
                # Our clock may be what is wrong: take the certificate valid by the system
                # clock and let the validity test refuse with timeNotAvailable.
                try:
                    cred = status.tsa_credential(self.store)
                except status.NotFound:
                    raise TimestampRefused("system_failure", "no valid TSA certificate") from None
            if signer is not None and cred.certificate == signer.certificate_der:
                signer = replace(signer, loaded=time.monotonic())
            else:
                signer = _load_signer(cred, self.keys, self.include_chain)
            self._signer = signer
            return signer

    def reload(self) -> None:
        """Forget the cached credential (e.g. after a TSA certificate was revoked)."""
        self._signer = None

    # -- the protocol -----------------------------------------------------------------------

    def respond(self, query_der: bytes, *, requester: str | None = None) -> bytes:
        """Answer a DER TimeStampReq with a DER TimeStampResp; never raises for any input."""
        try:
            req = _parse_query(query_der, self.policy_oid)
            token = self._issue(
                req.hash_alg,
                req.digest,
                null_parameters=req.null_parameters,
                nonce=req.nonce,
                cert_req=req.cert_req,
                requester=requester,
            )
            return tlv(0x30, _GRANTED + token)
        except TimestampRefused as exc:
            if exc.fail_info in ("time_not_available", "system_failure"):
                log.warning("timestamp refused (%s): %s", exc.fail_info, exc.detail)
            return _rejection(exc.fail_info, exc.detail)
        except Exception:  # the contract is a TimeStampResp, whatever went wrong
            log.exception("timestamp failed")
            return _rejection("system_failure", "Internal error.")

    def stamp(
        self,
        digest: bytes,
        hash_alg: str = "sha256",
        *,
        nonce: int | None = None,
        cert_req: bool = True,
        requester: str | None = None,
    ) -> cms.ContentInfo:
        """A token over ``digest`` for in-process callers; raises :class:`TimestampRefused`."""
        alg = next((h for h in _IMPRINT_HASHES.values() if h.value == hash_alg), None)
        if alg is None:
            raise TimestampRefused("bad_alg", "Message digest algorithm is not supported.")
        if len(digest) != alg.digest_size:
            raise TimestampRefused("bad_data_format", "Bad message digest.")
        try:
            der = self._issue(
                alg,
                digest,
                null_parameters=True,
                nonce=nonce,
                cert_req=cert_req,
                requester=requester,
            )
        except TimestampRefused:
            raise
        except Exception as exc:  # database down, a bug: the caller sees a refusal, we log
            log.exception("timestamp failed")
            raise TimestampRefused("system_failure", "Internal error.") from exc
        return cms.ContentInfo.load(der)

    def _issue(
        self,
        hash_alg: HashAlg,
        digest: bytes,
        *,
        null_parameters: bool,
        nonce: int | None,
        cert_req: bool,
        requester: str | None,
    ) -> bytes:
        """Check the clock, reserve the serial, sign: the DER TimeStampToken."""
        now = self.clock().astimezone(UTC)
        try:
            signer = self._current_signer(now)
        except HsmError as exc:
            raise TimestampRefused("system_failure", f"HSM: {exc}") from exc
        if now < signer.not_before or now >= signer.not_after:
            raise TimestampRefused(
                "time_not_available",
                "Time is not available: the clock reads outside the TSA certificate's validity.",
            )
        if self.clock_check is not None:
            verdict = self.clock_check()
            if verdict is not True:
                reason = verdict if isinstance(verdict, str) else "clock not synchronised"
                raise TimestampRefused("time_not_available", f"Time is not available: {reason}")
        if self._whole_seconds:
            # Truncated, never rounded up: a genTime even half a second in the future makes
            # validators that compare it with their own clock reject the token.
            gen_time = now.replace(microsecond=0)
        else:
            gen_time = now
        serial = self._reserve_serial(digest, hash_alg.value, gen_time)
        if self.audit_tokens:
            status.record(
                self.store,
                actor=(requester or "anonymous")[:128],
                action="tsa.timestamp",
                object_type="tsa-serial",
                object_id=format(serial, "x"),
                digest=digest.hex(),
                details={"hash_algorithm": hash_alg.value},
            )
        tst_info = tlv(
            0x30,
            _V1
            + self._policy
            + tlv(0x30, _IMPRINT_ALGORITHMS[hash_alg, null_parameters] + tlv(0x04, digest))
            + integer(serial)
            + generalized_time(gen_time, fraction=True)
            + self._accuracy
            + (integer(nonce) if nonce is not None else b"")
            + signer.tsa_name,
        )
        message_digest = tlv(
            0x30,
            _OID_MESSAGE_DIGEST + tlv(0x31, tlv(0x04, signer.hash_alg.digest(tst_info))),
        )
        # DER sorts a SET OF by encoding; the signature covers it tagged as SET (RFC 5652 5.4).
        attrs = b"".join(sorted((_ATTR_CONTENT_TYPE, message_digest, signer.signing_certificate)))
        signed_attrs = tlv(0x31, attrs)
        try:
            signature = self.keys.sign_digest(
                signer.key, signer.hash_alg.digest(signed_attrs), signer.hash_alg, signer.scheme
            )
        except HsmError as exc:
            raise TimestampRefused("system_failure", f"HSM: {exc}") from exc
        signer_info = tlv(
            0x30,
            _V1
            + signer.sid
            + signer.digest_algorithm
            + tlv(0xA0, attrs)
            + signer.signature_algorithm
            + tlv(0x04, signature),
        )
        signed_data = tlv(
            0x30,
            _V3
            + tlv(0x31, signer.digest_algorithm)
            + tlv(0x30, _OID_TST_INFO + tlv(0xA0, tlv(0x04, tst_info)))
            + (signer.certificates if cert_req else b"")
            + tlv(0x31, signer_info),
        )
        return tlv(0x30, _OID_SIGNED_DATA + tlv(0xA0, signed_data))

    def _new_serial(self) -> int:
        """127 random bits: positive, at most 16 octets in DER, unguessable."""
        return secrets.randbits(127) or 1

    def _reserve_serial(self, digest: bytes, hash_name: str, gen_time: datetime) -> int:
        """Record the serial before signing: a crash leaves a record, never an unrecorded token."""
        for _ in range(_SERIAL_ATTEMPTS):
            serial = self._new_serial()
            try:
                status.record_tsa_serial(
                    self.store,
                    serial,
                    imprint_hex=digest.hex(),
                    hash_algorithm=hash_name,
                    policy_oid=self.policy_oid,
                    issued_at=gen_time,
                    register=self._register,
                )
                return serial
            except status.Conflict:
                continue
        raise TimestampRefused("system_failure", "could not reserve a unique serial number")


class _AlgorithmIdentifier(core.Sequence):  # parameters kept raw: any value is readable
    _fields = [  # noqa: RUF012
        ("algorithm", core.ObjectIdentifier),
        ("parameters", core.Any, {"optional": True}),
    ]


class _MessageImprint(core.Sequence):
    _fields = [  # noqa: RUF012
        ("hash_algorithm", _AlgorithmIdentifier),
        ("hashed_message", core.OctetString),
    ]


class _Query(core.Sequence):
    """RFC 3161 TimeStampReq, read leniently enough to name what is wrong with it."""

    _fields = [  # noqa: RUF012
        ("version", core.Integer),
        ("message_imprint", _MessageImprint),
        ("req_policy", core.ObjectIdentifier, {"optional": True}),
        ("nonce", core.Integer, {"optional": True}),
        ("cert_req", core.Boolean, {"default": False}),
        ("extensions", tsp.Extensions, {"implicit": 0, "optional": True}),
    ]


@dataclass(frozen=True)
class _Request:
    hash_alg: HashAlg
    digest: bytes
    null_parameters: bool
    nonce: int | None
    cert_req: bool


def _parse_query(query_der: bytes, policy_oid: str) -> _Request:
    """Parse and check a query; refusals carry OpenSSL's failInfo and wording."""
    if not query_der or len(query_der) > MAX_QUERY_BYTES:
        raise TimestampRefused("bad_data_format", "Bad request format or system error.")
    try:
        req = _Query.load(query_der, strict=True)
        req.native  # noqa: B018  (asn1crypto parses lazily: force every field now)
    except Exception:  # any failure to parse untrusted bytes is the client's
        raise TimestampRefused("bad_data_format", "Bad request format or system error.") from None
    if req["version"].native != 1:
        raise TimestampRefused("bad_data_format", "Bad request version.")
    algorithm = req["message_imprint"]["hash_algorithm"]
    hash_alg = _IMPRINT_HASHES.get(algorithm["algorithm"].dotted)
    if hash_alg is None:
        raise TimestampRefused("bad_alg", "Message digest algorithm is not supported.")
    parameters = algorithm["parameters"]
    absent = isinstance(parameters, core.Void)
    if not absent and parameters.dump() != b"\x05\x00":
        raise TimestampRefused("bad_alg", "Superfluous message digest parameter.")
    digest = req["message_imprint"]["hashed_message"].native
    if len(digest) != hash_alg.digest_size:
        raise TimestampRefused("bad_data_format", "Bad message digest.")
    if req["req_policy"].native is not None and req["req_policy"].dotted != policy_oid:
        raise TimestampRefused("unaccepted_policy", "Requested policy is not supported.")
    if req["extensions"].native:
        raise TimestampRefused("unaccepted_extensions", "Unsupported extension.")
    return _Request(hash_alg, digest, not absent, req["nonce"].native, bool(req["cert_req"].native))


# -- clock checks ---------------------------------------------------------------------------


class _Timeval(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_usec", ctypes.c_long)]


class _Timex(ctypes.Structure):
    """Linux ``struct timex`` (adjtimex(2))."""

    _fields_ = [
        ("modes", ctypes.c_uint),
        ("offset", ctypes.c_long),
        ("freq", ctypes.c_long),
        ("maxerror", ctypes.c_long),
        ("esterror", ctypes.c_long),
        ("status", ctypes.c_int),
        ("constant", ctypes.c_long),
        ("precision", ctypes.c_long),
        ("tolerance", ctypes.c_long),
        ("time", _Timeval),
        ("tick", ctypes.c_long),
        ("ppsfreq", ctypes.c_long),
        ("jitter", ctypes.c_long),
        ("shift", ctypes.c_int),
        ("stabil", ctypes.c_long),
        ("jitcnt", ctypes.c_long),
        ("calcnt", ctypes.c_long),
        ("errcnt", ctypes.c_long),
        ("stbcnt", ctypes.c_long),
        ("tai", ctypes.c_int),
        ("_padding", ctypes.c_int * 11),
    ]


_TIME_ERROR = 5
_STA_UNSYNC = 0x0040


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def read_kernel_clock() -> tuple[int, int, int]:
    """(clock state, status bits, maximum error in µs) from a read-only ``adjtimex(2)``."""
    if not sys.platform.startswith("linux"):
        raise OSError("adjtimex(2) is Linux-only")
    libc = _libc()
    timex = _Timex()  # modes = 0: read only, no privilege needed
    state = libc.adjtimex(ctypes.byref(timex))
    if state < 0:
        raise OSError(ctypes.get_errno(), "adjtimex failed")
    return state, timex.status, timex.maxerror


def kernel_clock_check(
    max_error: timedelta = timedelta(milliseconds=500),
    *,
    read: Callable[[], tuple[int, int, int]] = read_kernel_clock,
) -> ClockCheck:
    """A check that trusts the clock only while the kernel says an NTP daemon disciplines it.

    This is what ``timedatectl`` shows as "System clock synchronized": chrony, ntpd and
    systemd-timesyncd clear STA_UNSYNC and keep ``maxerror`` current. Give a ``max_error``
    inside the TSA's accuracy (with whole-second accuracy, genTime rounding already uses half
    a second). In containers the kernel state is the host's.
    """

    def check() -> bool | str:
        try:
            state, flags, maxerror_us = read()
        except OSError as exc:
            return f"cannot read the kernel clock state ({exc})"
        if state == _TIME_ERROR or flags & _STA_UNSYNC:
            return "the kernel reports the clock as not synchronised"
        if maxerror_us > max_error / timedelta(microseconds=1):
            return (
                f"the kernel's maximum clock error ({maxerror_us / 1000:.0f} ms) exceeds "
                f"{max_error / timedelta(milliseconds=1):.0f} ms"
            )
        return True

    return check


# -- pyHanko --------------------------------------------------------------------------------


class LocalTimeStamper(TimeStamper):
    """pyHanko's TimeStamper answered by our authority in-process: same tokens, no HTTP.

    Keep one per process: pyHanko asks it once per digest algorithm for a "dummy" token to
    size signatures, and that is a real, recorded token.
    """

    def __init__(
        self,
        authority: TimeStampAuthority,
        *,
        requester: str | None = "kakuin-sealing",
        include_nonce: bool = True,
    ) -> None:
        super().__init__(include_nonce=include_nonce)
        self.authority = authority
        self.requester = requester

    async def async_request_tsa_response(self, req: tsp.TimeStampReq) -> tsp.TimeStampResp:
        # Synchronous on purpose: an HSM signature and one insert are cheaper than a thread hop.
        der = self.authority.respond(req.dump(), requester=self.requester)
        return TimeStampResponse.load(der)


def timestamp_token(
    authority: TimeStampAuthority,
    data: bytes,
    *,
    hash_alg: str = "sha256",
    prehashed: bool = False,
    requester: str | None = "kakuin-sealing",
) -> cms.ContentInfo:
    """A token over ``data`` (or over the digest ``data`` when ``prehashed``), e.g. JAdES
    ``sigTst`` over the signature value; raises :class:`TimestampRefused`."""
    if hash_alg not in {h.value for h in _IMPRINT_HASHES.values()}:
        raise TimestampRefused("bad_alg", "Message digest algorithm is not supported.")
    digest = data if prehashed else hashlib.new(hash_alg, data).digest()
    return authority.stamp(digest, hash_alg, requester=requester)


class ExternalTimeStamper(HTTPTimeStamper):
    """pyHanko's TSA client, its HTTP exchange done by :mod:`signing.fetch` (http(s) only,
    same-host redirects, no private targets unless allowed, time and size limits), reading
    rejections too (see :class:`TimeStampResponse`)."""

    def __init__(self, url: str, *, policy: outbound.FetchPolicy = outbound.DEFAULT_POLICY,
                 **kwargs: Any) -> None:
        super().__init__(url, **kwargs)
        self.policy = policy

    async def async_request_tsa_response(self, req: tsp.TimeStampReq) -> tsp.TimeStampResp:
        headers = dict(self.request_headers())
        if self.auth:
            user, password = self.auth[0], self.auth[1]
            token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
            headers["Authorization"] = f"Basic {token}"
        try:
            response = await asyncio.to_thread(
                outbound.fetch, self.url, req.dump(), QUERY_CONTENT_TYPE,
                policy=self.policy, headers=headers)
        except outbound.FetchError as exc:
            raise Unavailable(f"the external TSA did not answer: {exc}") from None
        try:
            return TimeStampResponse.load(response.data)
        except ValueError as exc:
            raise SigningError(f"the external TSA's answer is not a TimeStampResp: {exc}") \
                from None


def external_timestamper(
    url: str,
    timeout: float = 10.0,
    *,
    auth: tuple[str, str] | None = None,
    headers: dict[str, str] | None = None,
    policy: outbound.FetchPolicy = outbound.DEFAULT_POLICY,
) -> HTTPTimeStamper:
    """A client for someone else's RFC 3161 TSA, used instead of :class:`LocalTimeStamper`.

    Plain ``http://`` is allowed (tokens are signed and the nonce is checked), as most public
    TSAs serve it. The relying party must then trust that TSA's root too.
    """
    return ExternalTimeStamper(url, timeout=timeout, auth=auth, headers=headers,
                               policy=replace(policy, timeout=min(policy.timeout, timeout)))
