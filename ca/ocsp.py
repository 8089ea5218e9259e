"""OCSP responder (RFC 6960) in the lightweight profile (RFC 5019, now RFC 9919).

Hot path: a request for one certificate, without a nonce, is answered from its pre-signed row
in ``ocsp_responses``. One indexed query returns that row *and* the certificate's current
status, and the row is served only if its bytes assert exactly that status and were signed by
the current responder key. So a revocation shows at once in every worker, even if whoever
revoked never called :func:`resign`. A row that is missing, contradicted, or past half its
validity is signed again (HSM) and stored. Requests with a nonce, with several CertIDs, or
with a CertID hash we don't pre-sign are signed on the fly.

Choices, and why:

- A request for one certificate gets exactly one SingleResponse, for the CertID it sent
  (RFC 6960 §4.2.2.3; RFC 5019 §2.2.1 SHOULD). So each certificate has one pre-signed row
  per CertID hash (SHA-256, and SHA-1 which ``openssl ocsp`` still defaults to), each
  signed when first asked for. One response holding both CertIDs (which RFC 5019 permits)
  was refused by clients that read exactly one, e.g. cryptography's ``certificate_status``.
- ``nextUpdate = thisUpdate + validity`` (8 h by default, the CA/B Forum minimum), never
  after the responder certificate expires. A row is signed again once less than half its
  validity remains, lazily or by :meth:`Responder.refresh_stale`. HTTP caches may keep a
  response until its nextUpdate: that is the RFC 5019 caching model. Clients that ask us
  directly always get the current status.
- If none of a request's CertIDs names our issuing CA, the answer is ``unauthorized``
  (RFC 9919 §2.2.3: we are not authoritative for them). It costs no HSM signature. In a
  request that mixes issuers, the foreign CertIDs are answered ``unknown``.
- A serial we never issued is answered ``unknown`` (RFC 6960 §2.2). That response is signed
  on the fly and not stored, because random serials must not grow the table; each one does
  cost a signature. Certificates that are reserved, linted or failed are also ``unknown``.
  Expired certificates keep their last status.
- Nonce: RFC 9654 (which obsoletes RFC 8954) allows 1..128 octets, echoed verbatim. An
  empty or longer nonce gets malformedRequest, as that RFC requires.
- Limits: a request larger than ``MAX_REQUEST_BYTES`` (10 KiB), or with more than
  ``MAX_CERT_IDS`` CertIDs, is malformedRequest.
- Failures: HSM or database temporarily unavailable -> tryLater; anything else ->
  internalError (logged). :meth:`Responder.respond` never raises.
- DER is assembled by hand, as in ``ca/crl.py``. cryptography's ``OCSPResponseBuilder`` holds
  one SingleResponse, and asn1crypto takes ~130 µs to parse a request where cryptography
  takes ~5 µs. So requests are parsed with cryptography, and asn1crypto is used only for
  what cryptography refuses (several CertIDs, unusual hash algorithms).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import threading
import urllib.parse
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

from asn1crypto import keys as asn1_keys
from asn1crypto import ocsp as asn1_ocsp
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509 import ocsp as x509_ocsp
from sqlalchemy import Engine, and_, bindparam, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import (
    DBAPIError,
    DisconnectionError,
    InterfaceError,
    OperationalError,
    StatementError,
)
from sqlalchemy.exc import TimeoutError as PoolTimeout

from ca import audit
from ca.authorities import load_certificate, load_key
from ca.errors import CAError, NotFound
from ca.issuer import CertificateOrder, IssuingAuthority, hash_for, issue
from ca.models import Certificate, OcspResponse, serial_hex
from ca.profiles import Profile
from ca.store import Store
from hsm.api import KeyManager
from hsm.der import NULL, generalized_time, integer, octets, oid, seq, tlv
from hsm.errors import HsmError
from hsm.keys import private_key

log = logging.getLogger("kakuin.ocsp")

MAX_REQUEST_BYTES = 10 * 1024
"""Largest request accepted (POST body or decoded GET). One CertID with a nonce takes about
130 bytes; the limit leaves room for many CertIDs and a signed request."""
MAX_CERT_IDS = 32
MAX_NONCE_OCTETS = 128  # RFC 9654 §2.1
DEFAULT_VALIDITY = timedelta(hours=8)
PRESIGNED_HASHES = ("sha256", "sha1")
RELOAD_EVERY = timedelta(minutes=5)
_CHECKED_MAX = 65536  # stored responses remembered as checked, per responder and process
Status = x509_ocsp.OCSPResponseStatus

# --- DER ------------------------------------------------------------------------------------


def _octet_string_at(data: bytes) -> tuple[bytes, int] | None:
    """(content, end offset) of the DER OCTET STRING starting ``data``, or None."""
    if len(data) < 2 or data[0] != 0x04:
        return None
    length, offset = data[1], 2
    if length & 0x80:
        count = length & 0x7F
        if count == 0 or count > 4 or len(data) < 2 + count:
            return None
        length, offset = int.from_bytes(data[2 : 2 + count], "big"), 2 + count
    end = offset + length
    return (data[offset:end], end) if end <= len(data) else None


def _der_octet_string(data: bytes) -> bytes | None:
    """The content of ``data`` if it is exactly one DER OCTET STRING, else None."""
    found = _octet_string_at(data)
    return found[0] if found is not None and found[1] == len(data) else None


_HASH_OIDS = {
    "sha1": "1.3.14.3.2.26",
    "sha256": "2.16.840.1.101.3.4.2.1",
    "sha384": "2.16.840.1.101.3.4.2.2",
    "sha512": "2.16.840.1.101.3.4.2.3",
}
_HASH_NAMES = {oid: name for name, oid in _HASH_OIDS.items()}
_OID_BASIC = oid("1.3.6.1.5.5.7.48.1.1")
_OID_NONCE_DOTTED = "1.3.6.1.5.5.7.48.1.2"
_OID_NONCE = oid(_OID_NONCE_DOTTED)
_OID_INVALIDITY = oid("2.5.29.24")
_SIGNATURE_ALGORITHMS = {
    ("ec", "sha256"): seq(oid("1.2.840.10045.4.3.2")),
    ("ec", "sha384"): seq(oid("1.2.840.10045.4.3.3")),
    ("rsa", "sha256"): seq(oid("1.2.840.113549.1.1.11"), NULL),
    ("rsa", "sha384"): seq(oid("1.2.840.113549.1.1.12"), NULL),
}
_REASON_CODES = {
    "keyCompromise": 1,
    "cACompromise": 2,
    "affiliationChanged": 3,
    "superseded": 4,
    "cessationOfOperation": 5,
    "certificateHold": 6,
    "privilegeWithdrawn": 9,
    "aACompromise": 10,
}


def _algorithm_identifier(dotted: str) -> bytes:
    # NULL parameters, as openssl writes them; clients compare the OID only.
    return seq(oid(dotted), NULL)


def _key_bits(cert: x509.Certificate) -> bytes:
    """The subjectPublicKey BIT STRING value, which OCSP key hashes are taken over."""
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return bytes(asn1_keys.PublicKeyInfo.load(spki)["public_key"].contents[1:])


# --- results --------------------------------------------------------------------------------


@dataclass(frozen=True)
class OcspResult:
    """A DER OCSPResponse plus what HTTP needs: times for RFC 5019 headers, cacheability."""

    der: bytes
    status_code: Status
    produced_at: datetime | None = None
    this_update: datetime | None = None
    next_update: datetime | None = None
    cacheable: bool = False

    @property
    def etag(self) -> str | None:
        """Strong validator (hex SHA-256 of the DER) for cacheable responses only."""
        return hashlib.sha256(self.der).hexdigest() if self.cacheable else None


def unsuccessful(status: Status) -> OcspResult:
    """An unsigned OCSPResponse carrying only ``status`` (RFC 6960 §4.2.1)."""
    if status is Status.SUCCESSFUL:
        raise ValueError("a successful response needs a body")
    return OcspResult(seq(tlv(0x0A, bytes((status.value,)))), status)


MALFORMED = unsuccessful(Status.MALFORMED_REQUEST)
INTERNAL_ERROR = unsuccessful(Status.INTERNAL_ERROR)
TRY_LATER = unsuccessful(Status.TRY_LATER)
UNAUTHORIZED = unsuccessful(Status.UNAUTHORIZED)


def _temporary(exc: BaseException) -> bool:
    """HSM or database briefly unavailable: worth a retry, so tryLater rather than an error."""
    if isinstance(exc, HsmError):
        return exc.status == 503
    return isinstance(exc, OperationalError | InterfaceError | DisconnectionError | PoolTimeout)


def _failure(exc: BaseException) -> OcspResult:
    if _temporary(exc):
        log.warning("ocsp: try later: %s: %s", type(exc).__name__, exc)
        return TRY_LATER
    log.exception("ocsp: internal error")
    return INTERNAL_ERROR


# --- requests -------------------------------------------------------------------------------


class MalformedRequest(ValueError):
    """The bytes are not an OCSP request we accept; the answer is malformedRequest."""


@dataclass(frozen=True, slots=True)
class CertIdRequest:
    hash_oid: str
    name_hash: bytes
    key_hash: bytes
    serial: int

    @property
    def hash_name(self) -> str | None:
        return _HASH_NAMES.get(self.hash_oid)


@dataclass(frozen=True, slots=True)
class ParsedRequest:
    cert_ids: tuple[CertIdRequest, ...]
    nonce: bytes | None
    """The nonce extension's extnValue as sent, echoed byte for byte."""


def _check_extensions(extensions: Iterable[tuple[str, bool, bytes]]) -> bytes | None:
    """The nonce's extnValue to echo. Unknown critical extensions, and any extension given
    twice, make the request malformed."""
    nonce = None
    seen: set[str] = set()
    for ext_oid, critical, value in extensions:
        if ext_oid in seen:
            raise MalformedRequest(f"extension {ext_oid} appears twice")
        seen.add(ext_oid)
        if ext_oid == _OID_NONCE_DOTTED:
            # RFC 9654: extnValue holds the DER of ``Nonce ::= OCTET STRING``; some old
            # clients put the bare bytes there instead, which we echo just the same.
            inner = _der_octet_string(value)
            size = len(inner if inner is not None else value)
            if not 1 <= size <= MAX_NONCE_OCTETS:
                raise MalformedRequest(f"nonce of {size} octets (RFC 9654: 1..128)")
            nonce = value
        elif critical:
            raise MalformedRequest(f"unsupported critical extension {ext_oid}")
    return nonce


def parse_request(der: bytes) -> ParsedRequest:
    """Parse an OCSPRequest; raises :class:`MalformedRequest`. Signatures are ignored."""
    if not der or len(der) > MAX_REQUEST_BYTES:
        raise MalformedRequest(f"request of {len(der)} bytes")
    try:
        req = x509_ocsp.load_der_ocsp_request(der)
        hash_name = req.hash_algorithm.name
    except (NotImplementedError, UnsupportedAlgorithm):
        return _parse_with_asn1crypto(der)  # several CertIDs, or a hash cryptography lacks
    except ValueError as exc:
        raise MalformedRequest(str(exc)) from exc
    if hash_name not in _HASH_OIDS:
        return _parse_with_asn1crypto(der)
    try:
        extensions = [
            (
                e.oid.dotted_string,
                e.critical,
                _nonce_extn_value(der, e.value.nonce)
                if isinstance(e.value, x509.OCSPNonce)
                else b"",
            )
            for e in req.extensions
        ]
    except (ValueError, x509.DuplicateExtension):  # e.g. a bare nonce: asn1crypto decides
        return _parse_with_asn1crypto(der)
    cert_id = CertIdRequest(
        _HASH_OIDS[hash_name], req.issuer_name_hash, req.issuer_key_hash, req.serial_number
    )
    return ParsedRequest((cert_id,), _check_extensions(extensions))


def _nonce_extn_value(der: bytes, nonce: bytes) -> bytes:
    """The nonce's extnValue as sent. cryptography unwraps the inner OCTET STRING when there
    is one and hands over bare bytes otherwise, so its value alone can't say which was sent;
    the extension sits at the end of tbsRequest, so look there. Reading it with asn1crypto
    instead (extnValue kept raw) measured 13x this whole parse (59 -> 801 µs, same run)."""
    at = der.rfind(_OID_NONCE)
    rest = der[at + len(_OID_NONCE) :] if at >= 0 else b""
    if rest[:2] == b"\x01\x01":  # critical BOOLEAN
        rest = rest[3:]
    found = _octet_string_at(rest)
    if found is None or nonce not in (found[0], _der_octet_string(found[0])):
        raise MalformedRequest("nonce extension not found where expected")
    return found[0]


def _parse_with_asn1crypto(der: bytes) -> ParsedRequest:
    try:
        tbs = asn1_ocsp.OCSPRequest.load(der, strict=True)["tbs_request"]
        if tbs["version"].native != "v1":
            raise MalformedRequest("unsupported request version")
        cert_ids = []
        for item in tbs["request_list"]:
            cid = item["req_cert"]
            cert_ids.append(
                CertIdRequest(
                    cid["hash_algorithm"]["algorithm"].dotted,
                    cid["issuer_name_hash"].native,
                    cid["issuer_key_hash"].native,
                    cid["serial_number"].native,
                )
            )
            single = item["single_request_extensions"]
            if single.native is not None and any(e["critical"].native for e in single):
                raise MalformedRequest("critical singleRequestExtensions")
        raw = tbs["request_extensions"]
        extensions = (
            []
            if raw.native is None
            else [
                (e["extn_id"].dotted, bool(e["critical"].native), e["extn_value"].contents)
                for e in raw
            ]
        )
    except MalformedRequest:
        raise
    except Exception as exc:  # asn1crypto raises several types on bad input
        raise MalformedRequest(f"{type(exc).__name__}: {exc}") from exc
    if not 1 <= len(cert_ids) <= MAX_CERT_IDS:
        raise MalformedRequest(f"{len(cert_ids)} CertIDs (1..{MAX_CERT_IDS} accepted)")
    return ParsedRequest(tuple(cert_ids), _check_extensions(extensions))


def decode_get(encoded: str) -> bytes | None:
    """The DER request in a GET path (RFC 6960 A.1), or None when it isn't base64.

    Accepts what clients send in practice: percent-encoding (also when a proxy left it in
    place), '+' turned into a space, the URL-safe alphabet, and missing padding.
    """
    text = urllib.parse.unquote(encoded) if "%" in encoded else encoded
    text = text.replace(" ", "+")
    if len(text) > (MAX_REQUEST_BYTES * 4) // 3 + 4:
        return None
    if "-" in text or "_" in text:
        text = text.replace("-", "+").replace("_", "/")
    text += "=" * (-len(text) % 4)
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None


# --- certificate status ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _State:
    cert_status: bytes  # DER of CertStatus
    single_extensions: bytes = b""  # DER of [1] singleExtensions, or nothing


_GOOD = _State(b"\x80\x00")
_UNKNOWN = _State(b"\x82\x00")


def _state(
    status: str | None,
    reason: str | None,
    revoked_at: datetime | None,
    invalidity_date: datetime | None,
    updated_at: datetime | None,
) -> _State:
    """What the response asserts for a certificate row (None: no such certificate)."""
    if status == "issued":
        return _GOOD
    if status not in ("revoked", "hold"):
        return _UNKNOWN
    when = revoked_at or updated_at
    assert when is not None
    code = _REASON_CODES.get("certificateHold" if status == "hold" else (reason or ""))
    body = generalized_time(when)
    if code is not None:  # unspecified stays absent, as in CRLs (RFC 5280 §5.3.1)
        body += tlv(0xA0, tlv(0x0A, bytes((code,))))
    extensions = b""
    if status == "revoked" and invalidity_date is not None:
        invalidity = seq(_OID_INVALIDITY, octets(generalized_time(invalidity_date)))
        extensions = tlv(0xA1, seq(invalidity))
    return _State(tlv(0xA1, body), extensions)


_C = Certificate.__table__.c
_R = OcspResponse.__table__.c
_STATUS_COLUMNS = (
    _C.status,
    _C.revocation_reason,
    _C.revoked_at,
    _C.invalidity_date,
    _C.updated_at,
)
_LOOKUP = (
    select(*_STATUS_COLUMNS, _R.der, _R.this_update, _R.next_update, _R.produced_at)
    .select_from(
        Certificate.__table__.outerjoin(
            OcspResponse.__table__,
            and_(
                _R.issuer_name == _C.issuer_name,
                _R.serial == _C.serial,
                _R.hash_algorithm == bindparam("hash"),
            ),
        )
    )
    .where(_C.issuer_name == bindparam("issuer"), _C.serial == bindparam("serial"))
)


class _Found(NamedTuple):
    """One ``_LOOKUP`` row: the certificate's status columns, then its stored response."""

    status: str
    revocation_reason: str | None
    revoked_at: datetime | None
    invalidity_date: datetime | None
    updated_at: datetime | None
    der: bytes | None
    this_update: datetime | None
    next_update: datetime | None
    produced_at: datetime | None


class _PresignedLookup:
    """``_LOOKUP`` for one request, run on a pooled DBAPI connection.

    SQLAlchemy's Connection and Result machinery costs about ten times the query itself here
    (~100 µs against ~10 µs on SQLite), the largest share of a pre-signed answer. What callers
    see stays the same: the SQL is ``_LOOKUP`` compiled once for the engine's dialect, the
    connection comes from the same pool (pre-ping, rollback on return), values go through the
    columns' own result processors (aware UTC datetimes), and DBAPI errors are raised wrapped
    as SQLAlchemy's (OperationalError -> tryLater), a lost connection being invalidated.
    """

    def __init__(self, engine: Engine) -> None:
        dialect = engine.dialect
        compiled = _LOOKUP.compile(dialect=dialect)
        self._engine = engine
        self._sql = compiled.string
        self._positional = tuple(compiled.positiontup or ()) if compiled.positional else None
        processors = [
            column.type.dialect_impl(dialect).result_processor(dialect, None)
            for column in _LOOKUP.selected_columns
        ]
        self._processors = [(i, f) for i, f in enumerate(processors) if f is not None]
        self._dbapi_error: type[Exception] = dialect.loaded_dbapi.Error

    def __call__(self, issuer: str, serial: str, hash_name: str) -> _Found | None:
        params = {"issuer": issuer, "serial": serial, "hash": hash_name}
        args: Any = params if self._positional is None else [params[k] for k in self._positional]
        try:
            conn = self._engine.raw_connection()
        except self._dbapi_error as exc:
            raise self._wrapped(exc, params, None) from exc
        try:
            cursor = conn.cursor()
            try:
                cursor.execute(self._sql, args)
                row = cursor.fetchone()
            finally:
                cursor.close()
        except self._dbapi_error as exc:
            raise self._wrapped(exc, params, conn) from exc
        finally:
            conn.close()
        if row is None:
            return None
        values = list(row)
        for i, process in self._processors:
            values[i] = process(values[i])
        return _Found._make(values)

    def _wrapped(self, exc: Any, params: dict[str, str], conn: Any) -> StatementError:
        dialect = self._engine.dialect
        lost = bool(dialect.is_disconnect(exc, conn and conn.dbapi_connection, None))
        if lost and conn is not None:
            conn.invalidate(exc)  # not back into the pool
        return DBAPIError.instance(  # as SQLAlchemy's Connection wraps them
            self._sql,
            params,
            exc,
            self._dbapi_error,
            hide_parameters=self._engine.hide_parameters,
            connection_invalidated=lost,
            dialect=dialect,
        )


def _upsert(dialect: str, values: dict[str, Any]) -> Any:
    """Insert or replace the row. Last writer wins, with no ordering guard: a write that
    lost a race with a status change is caught by the next request's status check, whereas
    an ordering guard on produced_at would let one skewed clock freeze rows."""
    insert: Any = {"sqlite": sqlite.insert, "postgresql": postgresql.insert}.get(dialect)
    if insert is None:
        raise CAError(f"OCSP response storage does not support {dialect}")
    stmt = insert(OcspResponse).values(**values)
    return stmt.on_conflict_do_update(
        index_elements=[
            OcspResponse.issuer_name, OcspResponse.serial, OcspResponse.hash_algorithm
        ],
        set_={k: stmt.excluded[k] for k in ("this_update", "next_update", "produced_at", "der")},
    )


def _seconds(now: datetime | None) -> datetime:
    return (now or datetime.now(UTC)).astimezone(UTC).replace(microsecond=0)


def _serial_hex(serial: int) -> str | None:
    try:
        return serial_hex(serial)
    except ValueError:
        return None  # zero, negative or over 20 octets: never one of ours


# --- the responder --------------------------------------------------------------------------


class Responder:
    """One issuing CA's delegated responder: its certificate and HSM key, and the CertID
    hashes that identify the issuer, computed once so each request is a dict lookup."""

    def __init__(
        self,
        store: Store,
        issuer_name: str,
        issuer: x509.Certificate,
        certificate: x509.Certificate,
        key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey,
        *,
        validity: timedelta = DEFAULT_VALIDITY,
        presigned_hashes: tuple[str, ...] = PRESIGNED_HASHES,
        certificate_id: int | None = None,
    ) -> None:
        if validity <= timedelta(0):
            raise ValueError("validity must be positive")
        if not presigned_hashes or set(presigned_hashes) - set(_HASH_OIDS):
            raise ValueError(f"pre-signed CertID hashes must be among {sorted(_HASH_OIDS)}")
        self.store = store
        self.issuer_name = issuer_name
        self.issuer = issuer
        self.certificate = certificate
        self.certificate_id = certificate_id
        self.validity = validity
        self.presigned_hashes = presigned_hashes
        self.not_after = certificate.not_valid_after_utc
        self._lookup = _PresignedLookup(store.engine)
        # (BLAKE2b of a stored response, serial, state and row times it must assert) -> whether
        self._checked: dict[tuple[Any, ...], bool] = {}
        name_der, key_bits = issuer.subject.public_bytes(), _key_bits(issuer)
        # (hash OID, issuerNameHash, issuerKeyHash) -> the CertID's DER up to the serial
        self._issuer_ids: dict[tuple[str, bytes, bytes], bytes] = {}
        self._prefix: dict[str, bytes] = {}
        for name, hash_oid in _HASH_OIDS.items():
            name_hash = hashlib.new(name, name_der).digest()
            key_hash = hashlib.new(name, key_bits).digest()
            prefix = _algorithm_identifier(hash_oid) + octets(name_hash) + octets(key_hash)
            self._issuer_ids[(hash_oid, name_hash, key_hash)] = prefix
            self._prefix[name] = prefix
        # ResponderID byKey: SHA-1 of the responder's public key (RFC 6960 §4.2.1).
        key_id = hashlib.sha1(_key_bits(certificate)).digest()  # noqa: S324
        self._responder_id = tlv(0xA2, octets(key_id))
        self._certs = tlv(0xA0, seq(certificate.public_bytes(serialization.Encoding.DER)))
        algorithm = hash_for(key)
        self._sign: Callable[[bytes], bytes]
        if isinstance(key, ec.EllipticCurvePrivateKey):
            self._signature_algorithm = _SIGNATURE_ALGORITHMS[("ec", algorithm.name)]
            self._sign = lambda data: key.sign(data, ec.ECDSA(algorithm))
        elif isinstance(key, rsa.RSAPrivateKey):
            self._signature_algorithm = _SIGNATURE_ALGORITHMS[("rsa", algorithm.name)]
            self._sign = lambda data: key.sign(data, padding.PKCS1v15(), algorithm)
        else:
            raise CAError(f"unsupported OCSP responder key type {type(key).__name__}")

    @classmethod
    def load(
        cls,
        store: Store,
        keys: KeyManager,
        issuer_name: str,
        *,
        now: datetime | None = None,
        **options: Any,
    ) -> Responder:
        """The issuing CA and its newest valid responder certificate with an HSM key."""
        now = now or datetime.now(UTC)
        row = _current_responder_row(store, issuer_name, now)
        issuer = x509.load_der_x509_certificate(load_certificate(store, "issuing").der or b"")
        cert = x509.load_der_x509_certificate(row.der or b"")
        try:
            cert.verify_directly_issued_by(issuer)
        except (InvalidSignature, ValueError, TypeError, UnsupportedAlgorithm) as exc:
            raise CAError(f"OCSP responder {row.serial} is not issued by the issuing CA") from exc
        return cls(
            store, issuer_name, issuer, cert, load_key(keys, row), certificate_id=row.id, **options
        )

    # -- answering --

    def respond(self, request_der: bytes, now: datetime | None = None) -> OcspResult:
        """The OCSPResponse for ``request_der``; never raises (see the module docstring)."""
        try:
            request = parse_request(request_der)
        except MalformedRequest:
            return MALFORMED
        return self.answer(request, now)

    def answer(self, request: ParsedRequest, now: datetime | None = None) -> OcspResult:
        try:
            return self._answer(request, _seconds(now))
        except Exception as exc:
            return _failure(exc)

    def _answer(self, request: ParsedRequest, now: datetime) -> OcspResult:
        ours = [
            self._issuer_ids.get((c.hash_oid, c.name_hash, c.key_hash)) for c in request.cert_ids
        ]
        if not any(ours):
            return UNAUTHORIZED
        if len(ours) == 1 and request.nonce is None:
            cert_id = request.cert_ids[0]
            serial = _serial_hex(cert_id.serial)
            hash_name = cert_id.hash_name
            if serial is not None and hash_name is not None and hash_name in self.presigned_hashes:
                return self._presigned(cert_id, serial, hash_name, now)
        return self._on_the_fly(request, ours, now)

    def _presigned(
        self, cert_id: CertIdRequest, serial: str, hash_name: str, now: datetime
    ) -> OcspResult:
        row = self._lookup(self.issuer_name, serial, hash_name)
        if row is None:  # never issued by us: unknown, not stored
            return self._on_the_fly(
                ParsedRequest((cert_id,), None), [self._prefix[hash_name]], now
            )
        state = _state(*row[:5])
        der, next_update = row.der, row.next_update  # both None when nothing is stored yet
        if (
            der is not None
            and next_update is not None
            and now < next_update
            and self._asserts(der, serial, hash_name, state, row)
        ):
            stored = OcspResult(
                der,
                Status.SUCCESSFUL,
                row.produced_at,
                row.this_update,
                next_update,
                cacheable=True,
            )
            if now < next_update - self.validity / 2:
                return stored
            try:
                return self._store_signed(serial, hash_name, state, now)
            except Exception as exc:  # still valid and still true: better than tryLater
                if not _temporary(exc):
                    raise
                log.warning("ocsp: serving %s unrefreshed: %s", serial, exc)
                return stored
        return self._store_signed(serial, hash_name, state, now)

    def _asserts(
        self, der: bytes, serial: str, hash_name: str, state: _State, row: _Found
    ) -> bool:
        """Whether a stored response is what we would sign now: its TBSResponseData (read by
        cryptography) equals the one built for ``state`` at the row's times, so the responder
        key, the one CertID, status, reason and invalidity date all match, whole.

        Each stored response is checked once per process: the check measured 90-220 µs, a
        fifth to a third of a pre-signed answer (docs/benchmarks.md), and is answered often."""
        digest = hashlib.blake2b(der, digest_size=16).digest()
        key = (
            digest, serial, hash_name, state, row.this_update, row.next_update, row.produced_at
        )
        known = self._checked.get(key)
        if known is not None:
            return known
        ok = False
        if row.this_update is not None and row.next_update is not None and row.produced_at:
            try:
                stored = x509_ocsp.load_der_ocsp_response(der).tbs_response_bytes
            except ValueError:  # not a successful basic response
                stored = None
            ok = stored == self._presigned_tbs(
                int(serial, 16), hash_name, state, row.this_update, row.next_update,
                row.produced_at,
            )
        if len(self._checked) >= _CHECKED_MAX:
            self._checked.clear()
        self._checked[key] = ok
        return ok

    def _presigned_tbs(
        self, number: int, hash_name: str, state: _State, this_update: datetime,
        next_update: datetime, produced_at: datetime,
    ) -> bytes:
        """The pre-signed form: one SingleResponse, for the CertID under ``hash_name``."""
        single = self._single(self._cert_id(hash_name, number), state, this_update, next_update)
        return self._tbs([single], produced_at)

    def _cert_id(self, hash_name: str, serial: int) -> bytes:
        return seq(self._prefix[hash_name] + integer(serial))

    def _next_update(self, now: datetime) -> datetime:
        return min(now + self.validity, self.not_after)

    def _single(self, cert_id: bytes, state: _State, now: datetime, next_update: datetime) -> bytes:
        return seq(
            cert_id,
            state.cert_status,
            generalized_time(now),
            tlv(0xA0, generalized_time(next_update)),
            state.single_extensions,
        )

    def _tbs(self, singles: list[bytes], now: datetime, extensions: bytes = b"") -> bytes:
        return seq(
            self._responder_id,
            generalized_time(now),
            seq(*singles),
            tlv(0xA1, seq(extensions)) if extensions else b"",
        )

    def _signed(self, singles: list[bytes], now: datetime, extensions: bytes = b"") -> bytes:
        return self._signed_tbs(self._tbs(singles, now, extensions))

    def _signed_tbs(self, tbs: bytes) -> bytes:
        basic = seq(
            tbs, self._signature_algorithm, tlv(0x03, b"\x00" + self._sign(tbs)), self._certs
        )
        return seq(b"\x0a\x01\x00", tlv(0xA0, seq(_OID_BASIC, octets(basic))))

    def _store_signed(
        self, serial: str, hash_name: str, state: _State, now: datetime
    ) -> OcspResult:
        """Sign the pre-signed form (one SingleResponse, CertID under ``hash_name``), keep it."""
        next_update = self._next_update(now)
        der = self._signed_tbs(
            self._presigned_tbs(int(serial, 16), hash_name, state, now, next_update, now)
        )
        values = {
            "issuer_name": self.issuer_name,
            "serial": serial,
            "hash_algorithm": hash_name,
            "this_update": now,
            "next_update": next_update,
            "produced_at": now,
            "der": der,
        }
        with self.store.engine.begin() as conn:
            conn.execute(_upsert(conn.dialect.name, values))
        return OcspResult(der, Status.SUCCESSFUL, now, now, next_update, cacheable=True)

    def _states(self, serials: list[str]) -> dict[str, _State]:
        if not serials:
            return {}
        with self.store.engine.connect() as conn:
            rows = conn.execute(
                select(_C.serial, *_STATUS_COLUMNS).where(
                    _C.issuer_name == self.issuer_name, _C.serial.in_(serials)
                )
            ).all()
        return {r.serial: _state(*r[1:]) for r in rows}

    def _on_the_fly(
        self, request: ParsedRequest, ours: list[bytes | None], now: datetime
    ) -> OcspResult:
        serials = [
            _serial_hex(c.serial) if p else None
            for c, p in zip(request.cert_ids, ours, strict=True)
        ]
        states = self._states([s for s in serials if s is not None])
        next_update = self._next_update(now)
        singles = []
        for cert_id, prefix, serial in zip(request.cert_ids, ours, serials, strict=True):
            if prefix is None:  # another issuer's certificate
                cid = seq(
                    _algorithm_identifier(cert_id.hash_oid),
                    octets(cert_id.name_hash),
                    octets(cert_id.key_hash),
                    integer(cert_id.serial),
                )
            else:
                cid = seq(prefix + integer(cert_id.serial))
            state = states.get(serial, _UNKNOWN) if serial is not None else _UNKNOWN
            singles.append(self._single(cid, state, now, next_update))
        extensions = b""
        if request.nonce is not None:
            extensions = seq(_OID_NONCE, octets(request.nonce))
        der = self._signed(singles, now, extensions)
        return OcspResult(
            der, Status.SUCCESSFUL, now, now, next_update, cacheable=request.nonce is None
        )

    # -- keeping pre-signed responses current --

    def resign(self, serial: int | str, now: datetime | None = None) -> OcspResult:
        """Sign and store ``serial``'s responses now, one per pre-signed hash (the first is
        returned); call it after a status change so the next request finds them ready (the
        hot path would notice the change by itself)."""
        hex_serial = serial_hex(serial) if isinstance(serial, int) else serial_hex(int(serial, 16))
        state = self._states([hex_serial]).get(hex_serial)
        if state is None:
            raise NotFound(f"no certificate {hex_serial} from {self.issuer_name}")
        now = _seconds(now)
        results = [self._store_signed(hex_serial, h, state, now) for h in self.presigned_hashes]
        return results[0]

    def refresh_stale(
        self,
        now: datetime | None = None,
        *,
        include_missing: bool = False,
        limit: int | None = None,
    ) -> int:
        """Re-sign stored responses with less than half their validity left (and, with
        ``include_missing``, sign issued/revoked/held certificates that have none yet).
        Each pre-signed hash has its own rows, so each is a query of its own.
        For a scheduler; returns how many were signed."""
        now = _seconds(now)
        signed = 0
        for hash_name in self.presigned_hashes:
            if limit is not None and signed >= limit:
                break
            join = and_(
                _R.issuer_name == _C.issuer_name,
                _R.serial == _C.serial,
                _R.hash_algorithm == hash_name,
            )
            query = (
                select(_C.serial, *_STATUS_COLUMNS)
                .select_from(Certificate.__table__.outerjoin(OcspResponse.__table__, join))
                .where(_C.issuer_name == self.issuer_name)
            )
            stale = _R.next_update <= now + self.validity / 2
            if include_missing:
                missing = and_(_R.id.is_(None), _C.status.in_(("issued", "revoked", "hold")))
                query = query.where(stale | missing)
            else:
                query = query.where(_R.id.is_not(None), stale)
            if limit is not None:
                query = query.limit(limit - signed)
            with self.store.engine.connect() as conn:
                rows = conn.execute(query).all()
            for r in rows:
                self._store_signed(r.serial, hash_name, _state(*r[1:]), now)
            signed += len(rows)
        return signed


def _current_responder_row(store: Store, issuer_name: str, now: datetime) -> Certificate:
    with store.session() as s:
        row = s.scalars(
            select(Certificate)
            .where(
                Certificate.kind == "ocsp",
                Certificate.issuer_name == issuer_name,
                Certificate.status == "issued",
                Certificate.hsm_key_id.is_not(None),
                Certificate.der.is_not(None),
                Certificate.not_before <= now,
                Certificate.not_after > now,
            )
            .order_by(Certificate.not_before.desc(), Certificate.id.desc())
        ).first()
    if row is None:
        raise NotFound(f"no valid OCSP responder certificate for {issuer_name}")
    return row


class ResponderCache:
    """The responder a web worker uses: built on first use, and looked up again every
    ``reload_every`` so a renewed responder certificate is picked up by every worker."""

    def __init__(
        self,
        store: Store,
        keys: KeyManager,
        issuer_name: str,
        *,
        reload_every: timedelta = RELOAD_EVERY,
        **options: Any,
    ) -> None:
        self.store, self.keys, self.issuer_name = store, keys, issuer_name
        self.reload_every = reload_every
        self.options = options
        self._lock = threading.Lock()
        self._responder: Responder | None = None
        self._checked_at = datetime.min.replace(tzinfo=UTC)

    def get(self, now: datetime | None = None) -> Responder:
        now = now or datetime.now(UTC)
        current = self._responder
        if (
            current is not None
            and now < self._checked_at + self.reload_every
            and now < current.not_after
        ):
            return current
        with self._lock:
            current = self._responder
            if (
                current is None
                or now >= self._checked_at + self.reload_every
                or now >= current.not_after
            ):
                row = _current_responder_row(self.store, self.issuer_name, now)
                if current is None or row.id != current.certificate_id:
                    current = Responder.load(
                        self.store, self.keys, self.issuer_name, now=now, **self.options
                    )
                    self._responder = current
                self._checked_at = now
            return current

    def respond(self, request_der: bytes, now: datetime | None = None) -> OcspResult:
        """Like :meth:`Responder.respond`; a malformed request is answered before any
        database or HSM work, so it gets malformedRequest even while they are down."""
        try:
            request = parse_request(request_der)
        except MalformedRequest:
            return MALFORMED
        try:
            responder = self.get(now)
        except Exception as exc:
            return _failure(exc)
        return responder.answer(request, now)


def resign(
    store: Store, keys: KeyManager, issuer_name: str, serial: int | str, now: datetime | None = None
) -> OcspResult:
    """Re-sign one certificate's stored response (after revoking, suspending, unsuspending)."""
    return Responder.load(store, keys, issuer_name, now=now).resign(serial, now)


def refresh_stale(
    store: Store,
    keys: KeyManager,
    issuer_name: str,
    now: datetime | None = None,
    *,
    include_missing: bool = False,
) -> int:
    """Scheduler entry point: see :meth:`Responder.refresh_stale`."""
    responder = Responder.load(store, keys, issuer_name, now=now)
    return responder.refresh_stale(now, include_missing=include_missing)


# --- responder certificate renewal ----------------------------------------------------------


def ensure_responder_certificate(
    store: Store,
    keys: KeyManager,
    authority: IssuingAuthority,
    profile: Profile,
    *,
    renew_before: timedelta = timedelta(days=30),
    now: datetime | None = None,
    actor: str = "ocsp-responder-renewal",
) -> x509.Certificate | None:
    """Issue a new delegated responder certificate, on a new HSM key, when the newest one
    expires within ``renew_before``; returns it, or None when nothing was due.

    A fresh key each time, because a nocheck responder certificate can't be revoked in any
    way clients notice, so its lifetime is the key's exposure. Workers switch to the new
    certificate on their next ``ResponderCache`` reload.
    """
    now = now or datetime.now(UTC)
    with store.session() as s:
        current = s.scalars(
            select(Certificate)
            .where(
                Certificate.kind == "ocsp",
                Certificate.issuer_name == authority.name,
                Certificate.status == "issued",
                Certificate.hsm_key_id.is_not(None),
                Certificate.der.is_not(None),
            )
            .order_by(Certificate.not_after.desc(), Certificate.id.desc())
        ).first()
    if current is None or current.hsm_key_id is None:
        raise NotFound(f"no OCSP responder certificate for {authority.name}; run `kakuin init`")
    if current.not_after - now > renew_before:
        return None
    if authority.certificate is not None and (
        authority.certificate.not_valid_after_utc <= current.not_after
    ):
        # A new certificate would end when the CA does, no later than this one: renewing
        # would repeat on every run. Renewing the issuing CA is the fix.
        log.warning("ocsp: responder not renewed: issuing CA %s expires first", authority.name)
        return None
    algorithm = keys.find(key_id=bytes.fromhex(current.hsm_key_id)).algorithm
    label = f"{authority.name}-ocsp-{now.astimezone(UTC):%Y%m%dT%H%M%SZ}"
    ref = keys.generate(algorithm, label)
    with store.session() as s:
        audit.record(
            s,
            actor=actor,
            action="hsm.key_generated",
            object_type="hsm-key",
            object_id=ref.key_id_hex,
            digest=ref.public_key_sha256,
            details={
                "label": label,
                "algorithm": algorithm.value,
                "purpose": "ocsp-responder",
                "replaces": current.serial,
            },
        )
    subject = x509.load_der_x509_certificate(current.der or b"").subject
    try:
        return issue(
            store,
            authority,
            CertificateOrder(
                profile, subject, private_key(keys, ref).public_key(), hsm_key_id=ref.key_id_hex
            ),
            actor=actor,
            now=now,
        )
    except BaseException:
        keys.destroy(ref)
        with store.session() as s:
            audit.record(
                s,
                actor=actor,
                action="hsm.key_destroyed",
                object_type="hsm-key",
                object_id=ref.key_id_hex,
                details={"reason": "renewal failed"},
            )
        raise
