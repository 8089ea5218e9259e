"""JAdES e-seals (ETSI TS 119 182-1) over JSON records, as JWS JSON flattened serializations.

What exactly is signed
----------------------
A record is a UTF-8 JSON object (RFC 8259) inside the I-JSON subset (RFC 7493): no byte order
mark, no invalid UTF-8, no unpaired surrogates, no duplicate member names, no NaN/Infinity,
every number equal in value to an IEEE 754 double (so ``12345678901234567890`` or
``0.10000000000000000001`` are refused rather than silently rounded: send such values as
strings), at most ``MAX_DEPTH`` levels and ``MAX_RECORD_BYTES`` bytes.

The signed bytes are the record in the JSON Canonicalization Scheme (RFC 8785, JCS): members
sorted by UTF-16 code units, no whitespace, strings with the minimal escapes, numbers in
ECMAScript form. Why JCS rather than the bytes as received: two systems that hold the same
record (a school and the receiving school, a board re-exporting it) derive the same signed
bytes with any RFC 8785 implementation (Java, JavaScript, Go, .NET, Python have one), whatever
serializer or pretty-printer touched the file in between; and because of the I-JSON checks
above the signed text means the same to every JSON parser. ``canonicalize(raw)`` returns it.

- Attached (default): JWS Payload = the JCS bytes; ``payload`` = BASE64URL(JCS bytes).
- Detached (large records): ``sigD`` with mechanism ObjectIdByURIHash (TS 119 182-1 5.2.8.3.3):
  ``pars`` = [the record's name, a URI reference], ``hashM`` = "S256", ``hashV`` =
  [BASE64URL(SHA-256(ASCII(BASE64URL(JCS bytes))))] (``b64`` is absent, so the spec hashes the
  base64url form), ``ctys`` = ["json"]; the JWS Payload is empty and the ``payload`` member is
  omitted (RFC 7515 appendix F). The detached object a verifier hashes is the JCS form.
- Signing input (RFC 7515 5.1): ASCII(BASE64URL(UTF8(protected header))) || "." ||
  BASE64URL(JWS Payload). The protected header is itself serialized with JCS.

Protected header: ``alg`` (ES256 for P-256, ES384 for P-384, PS256 for RSA; never ``none`` or
HMAC), ``typ`` "jose+json", ``cty`` "json" (attached only: 5.1.3 makes it inapplicable with
``sigD``), ``x5t#S256``, ``x5c`` (signing certificate and its issuing CA, standard base64
DER; the root is left out, trust comes from trust lists), ``iat`` and ``crit``.

Signing time: ``iat`` (RFC 7519 NumericDate), not ``sigT``. TS 119 182-1 V1.2.1 says that from
2025-05-15T00:00:00Z generators *shall* put ``iat`` and *shall not* put ``sigT`` in new
signatures; DSS (the EU reference validator) fails JAdES-BASELINE-B for a signature made after
that date carrying only ``sigT``. ``verify_jws`` still reads ``sigT`` of older signatures.

``crit``: ["iat"], plus "sigD" when detached. ``sigD`` must be listed (5.1.9); ``iat`` is listed
so that a verifier which does not process the claimed signing time rejects the seal instead of
ignoring it (allowed: RFC 7515 4.1.11 only bars names defined by RFC 7515/7518; DSS accepts it).

Unsigned ``etsiU`` (B-T, B-LT): elements in clear JSON form, not base64url strings: TS 119 182-1
allows both as long as one signature does not mix them (5.3.1); clear is readable, and every
value we put there is plain ASCII whose JCS form is unique, which is what a later archive
timestamp (B-LTA, clear form needs canonicalization) would hash.

- B-T: ``{"sigTst": {"tstTokens": [{"val": base64(DER TimeStampToken)}]}}``; the message
  imprint input is the ASCII bytes of the base64url JWS Signature Value (5.3.4).
- B-LT: also ``{"xVals": [{"x509Cert": {"val": ...}}, ...]}`` (certificates not in ``x5c``:
  root, TSA chain) and ``{"rVals": {"ocspVals": [{"val": DER OCSPResponse}], "crlVals":
  [{"val": DER CRL}]}}``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from json.encoder import encode_basestring
from typing import Any, Literal

from asn1crypto import cms
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)
from cryptography.x509.oid import ExtendedKeyUsageOID

from ca.status import Credential, Store, crl_der, ocsp_response_der, strictjson
from hsm.api import HashAlg, KeyManager, KeyRef, SignScheme
from signing.errors import BadDocument, SigningError, TooLarge, Unavailable

__all__ = [
    "MAX_BATCH",
    "MAX_DEPTH",
    "MAX_RECORD_BYTES",
    "InvalidSeal",
    "Level",
    "Timestamper",
    "ValidationMaterial",
    "Verified",
    "canonicalize",
    "gather_validation_material",
    "parse_record",
    "seal_batch",
    "seal_json",
    "verify_jws",
]

MAX_RECORD_BYTES = 16 * 1024 * 1024
MAX_DEPTH = 64
MAX_BATCH = 1000
OBJECT_ID_BY_URI_HASH = "http://uri.etsi.org/19182/ObjectIdByURIHash"
ETSI_U = "etsiU"

Level = Literal["B-B", "B-T", "B-LT"]
#: data -> DER TimeStampToken (RFC 3161 ContentInfo) whose message imprint covers ``data``.
Timestamper = Callable[[bytes], bytes]

_MAX_INT_DIGITS = 400
# \uD800-\uDFFF escapes or 4-byte UTF-8 sequences: keys might sort differently in UTF-16.
_ESCAPED_SURROGATE = re.compile(rb"\\u[dD][89a-fA-F]")
_UTF8_4_BYTE_LEADS = (b"\xf0", b"\xf1", b"\xf2", b"\xf3", b"\xf4")
_quote = encode_basestring  # C; JCS string escaping (RFC 8785 3.2.2.2) is exactly this
_FAST_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), sort_keys=True)
_NAME_RE = re.compile(r"[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=%]{1,512}")
_B64URL_RE = re.compile(r"[A-Za-z0-9_-]*")
_HASH_M = {"S256": "sha256", "S384": "sha384", "S512": "sha512"}
# alg -> (hash, kind); an allow-list: "none" and HMAC are absent on purpose.
_ALGS: dict[str, tuple[str, str]] = {
    "ES256": ("sha256", "ec"),
    "ES384": ("sha384", "ec"),
    "ES512": ("sha512", "ec"),
    "PS256": ("sha256", "pss"),
    "PS384": ("sha384", "pss"),
    "PS512": ("sha512", "pss"),
    "RS256": ("sha256", "pkcs1"),
    "RS384": ("sha384", "pkcs1"),
    "RS512": ("sha512", "pkcs1"),
}
_CURVE_ALG = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}
_HASHES: dict[str, Callable[[], hashes.HashAlgorithm]] = {
    "sha256": hashes.SHA256,
    "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
}
# Header parameters this module processes; ``crit`` may name only these (RFC 7515 4.1.11).
_UNDERSTOOD_CRIT = frozenset({"iat", "sigT", "sigD"})
_RFC7515_NAMES = frozenset(
    {"alg", "jku", "jwk", "kid", "x5u", "x5c", "x5t", "x5t#S256", "typ", "cty", "crit"}
)


class MalformedJSON(BadDocument):
    """Not acceptable JSON at all (``ca.strictjson``): a 400 like every other JSON body."""

    status = 400
    type = "api/bad-json"
    title = "Request body is not acceptable JSON"


class InvalidSeal(SigningError):
    """The JWS is well-formed enough to read but does not verify."""

    status = 422
    type = "signing/invalid-seal"
    title = "Seal does not verify"


# -- strict JSON ---------------------------------------------------------------------------------


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64url_decode(text: Any, what: str) -> bytes:
    """Strict: the unpadded URL-safe alphabet and canonical trailing bits only."""
    if not isinstance(text, str) or not _B64URL_RE.fullmatch(text) or len(text) % 4 == 1:
        raise InvalidSeal(f"{what} is not base64url")
    data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    if _b64url(data) != text:
        raise InvalidSeal(f"{what} is not canonical base64url")
    return data


def _short(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[:limit] + "…"


def _float(text: str) -> float:
    try:
        value = float(text)
    except OverflowError:  # int(text) beyond the double range
        value = float("inf")
    if value in (float("inf"), float("-inf")):
        raise MalformedJSON(f"number {_short(text)} is out of the IEEE 754 double range")
    if Decimal(text) != Decimal(repr(value)):
        raise BadDocument(
            f"number {_short(text)} is not exactly an IEEE 754 double (RFC 7493 2.2): "
            "signing it would change its value; send it as a string"
        )
    return value


def _int(text: str) -> int | float:
    """Integers beyond 2**53 go through the same value check as any other number."""
    if len(text) > _MAX_INT_DIGITS:
        raise MalformedJSON(f"number {_short(text)} has too many digits; send it as a string")
    value = int(text)
    return value if abs(value) <= 2**53 else _float(text)


def _es_number(value: float) -> str:
    """ECMAScript Number::toString, as RFC 8785 3.2.2.3 prescribes (repr gives the same
    shortest round-trip digits; only the layout differs)."""
    if value == 0:
        return "0"
    if value.is_integer() and abs(value) <= 2**53:
        return str(int(value))
    sign = "-" if value < 0 else ""
    mantissa, _, exp = repr(abs(value)).partition("e")
    whole, _, frac = mantissa.partition(".")
    digits = (whole + frac).lstrip("0")
    n = len(whole) + int(exp or 0) - (len(whole + frac) - len(digits))
    digits = digits.rstrip("0")
    k = len(digits)
    if k <= n <= 21:
        return sign + digits + "0" * (n - k)
    if 0 < n <= 21:
        return sign + digits[:n] + "." + digits[n:]
    if -6 < n <= 0:
        return sign + "0." + "0" * -n + digits
    e = n - 1
    exponent = ("e+" if e >= 0 else "e-") + str(abs(e))
    return sign + (digits if k == 1 else digits[0] + "." + digits[1:]) + exponent


def _utf16_key(item: tuple[str, Any]) -> bytes:
    return item[0].encode("utf-16-be", "surrogatepass")


def _jcs(value: Any, depth: int = 1) -> str:
    """RFC 8785 in Python: the general path (numbers other than integers, astral keys)."""
    if depth > MAX_DEPTH:
        raise BadDocument(f"record is nested deeper than {MAX_DEPTH} levels")
    if isinstance(value, str):
        return _quote(value)
    if value is True:
        return "true"
    if value is False:
        return "false"
    if value is None:
        return "null"
    if isinstance(value, int):
        return str(value) if abs(value) <= 2**53 else _es_number(float(value))
    if isinstance(value, float):
        return _es_number(value)
    if isinstance(value, dict):
        members = sorted(value.items(), key=_utf16_key)
        return "{" + ",".join(_quote(k) + ":" + _jcs(v, depth + 1) for k, v in members) + "}"
    if isinstance(value, list):
        return "[" + ",".join(_jcs(v, depth + 1) for v in value) + "]"
    raise TypeError(f"not a JSON value: {type(value).__name__}")


def _encode(text: str) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise BadDocument(
            f"string contains an unpaired UTF-16 surrogate U+{ord(text[exc.start]):04X} "
            "(RFC 7493 2.1)"
        ) from exc


def _parse_and_canonicalize(raw: bytes) -> tuple[Any, bytes]:
    if not isinstance(raw, bytes | bytearray | memoryview):
        raise BadDocument("record must be bytes")
    raw = bytes(raw)
    if len(raw) > MAX_RECORD_BYTES:
        raise TooLarge(f"record is {len(raw)} bytes; the limit is {MAX_RECORD_BYTES}")
    floats = False

    def parse_float(text: str) -> float:
        nonlocal floats
        floats = True
        return _float(text)

    def parse_int(text: str) -> int | float:
        nonlocal floats
        value = _int(text)
        floats = floats or isinstance(value, float)
        return value

    try:  # the API's one strict reader; only the number rules are JCS's own
        value = strictjson.loads(raw, what="record", max_depth=MAX_DEPTH,
                                 parse_float=parse_float, parse_int=parse_int)
    except strictjson.BadJSON as exc:
        raise MalformedJSON(exc.detail) from None
    if not isinstance(value, dict):
        raise BadDocument("a record must be a JSON object")
    if floats or any(lead in raw for lead in _UTF8_4_BYTE_LEADS) or _ESCAPED_SURROGATE.search(raw):
        return value, _encode(_jcs(value))
    # Fast path, byte-identical to _jcs (tests compare them): with integers only (all within
    # +-2**53, which print alike in Python and ECMAScript) and no key outside the BMP (code
    # point order = UTF-16 order), the C encoder writes RFC 8785.
    return value, _encode(_FAST_ENCODER.encode(value))


def parse_record(raw: bytes) -> Any:
    """The record as Python values, after every check the seal relies on (see module doc)."""
    return _parse_and_canonicalize(raw)[0]


def canonicalize(raw: bytes) -> bytes:
    """The bytes a seal covers: the checked record in RFC 8785 (JCS) form."""
    return _parse_and_canonicalize(raw)[1]


# -- sealing -------------------------------------------------------------------------------------


@dataclass
class _Signer:
    """Everything about a credential that does not change per record, worked out once."""

    ref: KeyRef
    alg: str
    hash_alg: HashAlg
    scheme: SignScheme
    coordinate_size: int  # ECDSA r and s width in bytes; 0 for RSA
    x5c: tuple[str, ...]
    x5t_s256: str
    chain: tuple[bytes, ...]
    keys: KeyManager = field(compare=False, repr=False)
    attached_header: tuple[int, str] | None = field(default=None, compare=False, repr=False)

    def sign(self, signing_input: bytes) -> bytes:
        """The JWS Signature (RFC 7518 3.4: ECDSA as fixed-width r || s, not DER)."""
        digest = hashlib.new(self.hash_alg.value, signing_input).digest()
        sig = self.keys.sign_digest(self.ref, digest, self.hash_alg, self.scheme)
        if self.coordinate_size:
            r, s = decode_dss_signature(sig)
            return r.to_bytes(self.coordinate_size, "big") + s.to_bytes(self.coordinate_size, "big")
        return sig


_SIGNERS: dict[tuple[Credential, int], _Signer] = {}


def _signer(credential: Credential, keys: KeyManager) -> _Signer:
    """Cached per (credential, key manager): a PKCS#11 key lookup and certificate parsing per
    request would cost more than the rest of a seal."""
    hit = _SIGNERS.get((credential, id(keys)))
    if hit is not None and hit.keys is keys:
        return hit
    leaf = x509.load_der_x509_certificate(credential.certificate)
    public = leaf.public_key()
    if isinstance(public, ec.EllipticCurvePublicKey):
        alg = _CURVE_ALG.get(public.curve.name)
        if alg is None or alg == "ES512":
            raise Unavailable(f"no JWS algorithm for curve {public.curve.name}")
        hash_alg = HashAlg.SHA384 if alg == "ES384" else HashAlg.SHA256
        scheme, size = SignScheme.ECDSA, (public.curve.key_size + 7) // 8
    elif isinstance(public, rsa.RSAPublicKey):
        alg, hash_alg, scheme, size = "PS256", HashAlg.SHA256, SignScheme.RSA_PSS, 0
    else:
        raise Unavailable(f"no JWS algorithm for a {type(public).__name__} key")
    ref = keys.find(key_id=credential.key_id)
    spki = public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    if ref.public_key_der != spki:
        raise Unavailable("the HSM key does not match the e-seal certificate")
    chain = credential.chain
    certs = [x509.load_der_x509_certificate(d) for d in chain]
    x5c = chain[:-1] if len(chain) > 1 and certs[-1].issuer == certs[-1].subject else chain
    signer = _Signer(
        ref=ref,
        alg=alg,
        hash_alg=hash_alg,
        scheme=scheme,
        coordinate_size=size,
        x5c=tuple(base64.b64encode(d).decode("ascii") for d in x5c),
        x5t_s256=_b64url(hashlib.sha256(credential.certificate).digest()),
        chain=chain,
        keys=keys,
    )
    if len(_SIGNERS) >= 256:
        _SIGNERS.clear()
    _SIGNERS[(credential, id(keys))] = signer
    return signer


@dataclass(frozen=True)
class ValidationMaterial:
    """What B-LT embeds so the seal can be checked without reaching our servers (DER)."""

    certificates: tuple[bytes, ...] = ()
    ocsp_responses: tuple[bytes, ...] = ()
    crls: tuple[bytes, ...] = ()


def gather_validation_material(
    store: Store,
    keys: KeyManager,
    credential: Credential,
    *,
    tsa: Credential | None = None,
    crl_issuers: Iterable[str] = (),
) -> ValidationMaterial:
    """Chains (root included), fresh OCSP responses for the e-seal and TSA certificates and
    the newest CRLs of ``credential.issuer_name``, ``tsa.issuer_name`` and ``crl_issuers``.
    Fetch it once per batch: it is the same for every record."""
    certs: list[bytes] = []
    ocsp: list[bytes] = []
    issuers = [credential.issuer_name]
    for cred in (credential, tsa):
        if cred is None:
            continue
        certs.extend(d for d in cred.chain if d not in certs)
        if len(cred.chain) > 1:
            ocsp.append(
                ocsp_response_der(store, keys, cred.issuer_name, cred.chain[0], cred.chain[1])
            )
        issuers.append(cred.issuer_name)
    issuers.extend(crl_issuers)
    crls = [d for d in (crl_der(store, n) for n in dict.fromkeys(issuers)) if d is not None]
    return ValidationMaterial(tuple(certs), tuple(ocsp), tuple(crls))


def _check_token(token: bytes, data: bytes) -> None:
    """A timestamp that does not cover the signature would make the seal unverifiable
    forever; refuse it here rather than ship it."""
    try:
        info = cms.ContentInfo.load(token)["content"]["encap_content_info"]["content"].parsed
        imprint = info["message_imprint"]
        alg = imprint["hash_algorithm"]["algorithm"].native
        ok = hashlib.new(alg, data).digest() == imprint["hashed_message"].native
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise Unavailable("the timestamp authority returned an unreadable token") from exc
    if not ok:
        raise Unavailable("the timestamp token does not cover the signature value")


def _pki_ob(der: bytes) -> dict[str, str]:
    return {"val": base64.b64encode(der).decode("ascii")}


def _protected(signer: _Signer, iat: int, sig_d: dict[str, Any] | None) -> str:
    """BASE64URL of the JCS-serialized protected header; the attached one is reused while
    ``iat`` stays the same second (it is the same bytes)."""
    if sig_d is None:
        cached = signer.attached_header
        if cached is not None and cached[0] == iat:
            return cached[1]
    header: dict[str, Any] = {
        "alg": signer.alg,
        "typ": "jose+json",
        "x5t#S256": signer.x5t_s256,
        "x5c": list(signer.x5c),
        "iat": iat,
        "crit": ["iat"],
    }
    if sig_d is None:
        header["cty"] = "json"
    else:
        header["sigD"] = sig_d
        header["crit"] = ["iat", "sigD"]
    # ASCII member names and integers only: the C encoder's output is RFC 8785 here.
    encoded = _b64url(json.dumps(header, separators=(",", ":"), sort_keys=True).encode("ascii"))
    if sig_d is None:
        signer.attached_header = (iat, encoded)
    return encoded


def _sig_d(name: str, payload_b64: str) -> dict[str, Any]:
    if not _NAME_RE.fullmatch(name):
        raise BadDocument(
            "record name must be a URI reference of 1-512 ASCII characters "
            "(percent-encode anything else)"
        )
    digest = hashlib.sha256(payload_b64.encode("ascii")).digest()
    return {
        "mId": OBJECT_ID_BY_URI_HASH,
        "pars": [name],
        "hashM": "S256",
        "hashV": [_b64url(digest)],
        "ctys": ["json"],
    }


def seal_batch(
    records: Sequence[bytes],
    credential: Credential,
    keys: KeyManager,
    *,
    level: Level = "B-B",
    detached: bool = False,
    names: Sequence[str] | None = None,
    timestamp: Timestamper | None = None,
    validation_material: ValidationMaterial | None = None,
    now: datetime | None = None,
) -> list[dict[str, Any]]:
    """One independent JAdES signature per record, sharing the per-request work (key lookup,
    certificates, ``iat``, the attached protected header, validation material).

    Every record is checked before anything is signed, so a bad record fails the whole batch
    (``BadDocument`` naming its index) and no signature is spent. B-T asks ``timestamp`` once
    per record: a signature timestamp covers one signature value and nothing else.
    """
    if level not in ("B-B", "B-T", "B-LT"):
        raise ValueError(f"unknown JAdES level {level!r}")
    if level != "B-B" and timestamp is None:
        raise ValueError(f"{level} needs a timestamp source")
    if level == "B-LT" and validation_material is None:
        raise ValueError("B-LT needs validation material")
    if len(records) > MAX_BATCH:
        raise TooLarge(f"{len(records)} records; at most {MAX_BATCH} per batch")
    if names is not None and len(names) != len(records):
        raise ValueError("names must match records one to one")
    payloads: list[str] = []
    for i, raw in enumerate(records):
        try:
            payloads.append(_b64url(canonicalize(raw)))
        except SigningError as exc:
            if len(records) > 1:
                exc.detail = f"record {i}: {exc.detail}"
                exc.args = (exc.detail,)
            raise
    signer = _signer(credential, keys)
    iat = int((now or datetime.now(UTC)).timestamp())
    attached_header = None if detached else _protected(signer, iat, None)
    extra: list[dict[str, Any]] = []
    if level == "B-LT":
        assert validation_material is not None
        in_x5c = set(signer.chain[: len(signer.x5c)])
        certs = [d for d in dict.fromkeys(validation_material.certificates) if d not in in_x5c]
        if certs:
            extra.append({"xVals": [{"x509Cert": _pki_ob(d)} for d in certs]})
        r_vals: dict[str, Any] = {}
        if validation_material.ocsp_responses:
            r_vals["ocspVals"] = [_pki_ob(d) for d in validation_material.ocsp_responses]
        if validation_material.crls:
            r_vals["crlVals"] = [_pki_ob(d) for d in validation_material.crls]
        if r_vals:
            extra.append({"rVals": r_vals})
    out: list[dict[str, Any]] = []
    for i, payload in enumerate(payloads):
        if detached:
            name = names[i] if names is not None else f"record-{i}.json"
            protected = _protected(signer, iat, _sig_d(name, payload))
            signing_input = protected.encode("ascii") + b"."
            jws: dict[str, Any] = {"protected": protected}
        else:
            assert attached_header is not None
            protected = attached_header
            signing_input = f"{protected}.{payload}".encode("ascii")
            jws = {"payload": payload, "protected": protected}
        signature = _b64url(signer.sign(signing_input))
        if timestamp is not None and level != "B-B":
            data = signature.encode("ascii")
            token = timestamp(data)
            _check_token(token, data)
            sig_tst = {"sigTst": {"tstTokens": [_pki_ob(token)]}}
            jws["header"] = {ETSI_U: [sig_tst, *extra]}
        jws["signature"] = signature
        out.append(jws)
    return out


def seal_json(
    record: bytes,
    credential: Credential,
    keys: KeyManager,
    *,
    level: Level = "B-B",
    detached: bool = False,
    name: str | None = None,
    timestamp: Timestamper | None = None,
    validation_material: ValidationMaterial | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """Seal one record: a JWS JSON flattened serialization (see the module doc). ``name`` is
    the record's URI reference in ``sigD`` when ``detached`` (default "record.json")."""
    return seal_batch(
        [record],
        credential,
        keys,
        level=level,
        detached=detached,
        names=[name or "record.json"],
        timestamp=timestamp,
        validation_material=validation_material,
        now=now,
    )[0]


# -- verification --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Verified:
    """What a structurally valid, cryptographically intact seal says. Not an EN 319 102-1
    validation: revocation and trust-list status are the verification service's job."""

    alg: str
    certificate: bytes  # DER of the signing certificate
    signing_time: datetime  # claimed (iat / sigT)
    payload: bytes  # the signed record bytes (empty when detached)
    detached_names: tuple[str, ...]
    timestamps: tuple[datetime, ...]  # genTime of each verified sigTst token
    level: str  # "B-B", "B-T" or "B-LT" by what is present


def _load_cert(b64: Any, what: str) -> x509.Certificate:
    try:
        return x509.load_der_x509_certificate(base64.b64decode(b64, validate=True))
    except (TypeError, ValueError, binascii.Error) as exc:
        raise InvalidSeal(f"{what} is not a base64 DER certificate") from exc


def _verify_raw(cert: x509.Certificate, alg: str, data: bytes, sig: bytes) -> None:
    hash_name, kind = _ALGS[alg]
    digest = _HASHES[hash_name]()
    public = cert.public_key()
    try:
        if kind == "ec":
            if not isinstance(public, ec.EllipticCurvePublicKey):
                raise InvalidSeal(f"{alg} needs an EC key")
            if _CURVE_ALG.get(public.curve.name) != alg:
                raise InvalidSeal(f"{alg} does not match curve {public.curve.name}")
            size = (public.curve.key_size + 7) // 8
            if len(sig) != 2 * size:
                raise InvalidSeal("ECDSA signature has the wrong length")
            der = encode_dss_signature(
                int.from_bytes(sig[:size], "big"), int.from_bytes(sig[size:], "big")
            )
            public.verify(der, data, ec.ECDSA(digest))
        else:
            if not isinstance(public, rsa.RSAPublicKey):
                raise InvalidSeal(f"{alg} needs an RSA key")
            pad: padding.AsymmetricPadding = (
                padding.PSS(padding.MGF1(digest), digest.digest_size)
                if kind == "pss"
                else padding.PKCS1v15()
            )
            public.verify(sig, data, pad, digest)
    except InvalidSignature as exc:
        raise InvalidSeal("signature does not verify") from exc


def _path_to_root(
    leaf: x509.Certificate,
    pool: Sequence[x509.Certificate],
    roots: Sequence[x509.Certificate],
    at: datetime,
) -> None:
    """A plain path check: each certificate issued by the next, all valid at ``at``, ending
    at one of ``roots``."""
    current = leaf
    for _ in range(8):
        if not current.not_valid_before_utc <= at <= current.not_valid_after_utc:
            raise InvalidSeal(f"certificate {current.subject.rfc4514_string()} not valid at {at}")
        if any(current == r for r in roots):
            return
        for parent in (*roots, *pool):
            if parent.subject != current.issuer or parent == current:
                continue
            try:
                current.verify_directly_issued_by(parent)
            except (InvalidSignature, ValueError, TypeError, UnsupportedAlgorithm):
                continue
            if any(parent == r for r in roots):
                if not parent.not_valid_before_utc <= at <= parent.not_valid_after_utc:
                    raise InvalidSeal("trust root not valid at the time checked")
                return
            current = parent
            break
        else:
            raise InvalidSeal(f"no path from {leaf.subject.rfc4514_string()} to a trusted root")
    raise InvalidSeal("certificate path too long")


def _verify_token(
    token_der: bytes,
    data: bytes,
    pool: Sequence[x509.Certificate],
    roots: Sequence[x509.Certificate],
) -> datetime:
    """An RFC 3161 token over ``data``: imprint, CMS signature, TSA certificate path."""
    try:
        signed = cms.ContentInfo.load(token_der)["content"]
        econtent = signed["encap_content_info"]["content"]
        info = econtent.parsed
        imprint = info["message_imprint"]
        alg = imprint["hash_algorithm"]["algorithm"].native
        if hashlib.new(alg, data).digest() != imprint["hashed_message"].native:
            raise InvalidSeal("timestamp does not cover the signature value")
        signer_info = signed["signer_infos"][0]
        attrs = {a["type"].native: a["values"][0] for a in signer_info["signed_attrs"]}
        if attrs["content_type"].native != "tst_info":
            raise InvalidSeal("timestamp token is not a TSTInfo")
        digest_alg = signer_info["digest_algorithm"]["algorithm"].native
        if digest_alg not in _HASHES:
            raise InvalidSeal(f"timestamp digest {digest_alg} is not accepted")
        if hashlib.new(digest_alg, econtent.contents).digest() != attrs["message_digest"].native:
            raise InvalidSeal("timestamp token content does not match its signed attributes")
        sid = signer_info["sid"]
        certs = [
            x509.load_der_x509_certificate(c.chosen.dump())
            for c in signed["certificates"] or []
            if c.name == "certificate"
        ]
        tsa = None
        for c in certs:
            if sid.name == "issuer_and_serial_number":
                issuer_serial = sid.chosen
                if (
                    c.serial_number == issuer_serial["serial_number"].native
                    and c.issuer.public_bytes() == issuer_serial["issuer"].dump()
                ):
                    tsa = c
            else:
                try:
                    ski = c.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
                except x509.ExtensionNotFound:
                    continue
                if ski.value.digest == sid.chosen.native:
                    tsa = c
        if tsa is None:
            raise InvalidSeal("timestamp token does not carry its TSA certificate")
        signed_attrs = signer_info["signed_attrs"].dump()
        signed_attrs = b"\x31" + signed_attrs[1:]  # [0] IMPLICIT -> SET OF for the signature
        sig = signer_info["signature"].native
        sig_alg = signer_info["signature_algorithm"].signature_algo
        gen_time: datetime = info["gen_time"].native
    except (ValueError, TypeError, KeyError, AttributeError, IndexError) as exc:
        raise InvalidSeal("timestamp token is unreadable") from exc
    public = tsa.public_key()
    hash_alg = _HASHES[digest_alg]()
    try:
        if isinstance(public, ec.EllipticCurvePublicKey) and sig_alg == "ecdsa":
            public.verify(sig, signed_attrs, ec.ECDSA(hash_alg))
        elif isinstance(public, rsa.RSAPublicKey) and sig_alg == "rsassa_pkcs1v15":
            public.verify(sig, signed_attrs, padding.PKCS1v15(), hash_alg)
        elif isinstance(public, rsa.RSAPublicKey) and sig_alg == "rsassa_pss":
            pss = padding.PSS(padding.MGF1(hash_alg), padding.PSS.AUTO)
            public.verify(sig, signed_attrs, pss, hash_alg)
        else:
            raise InvalidSeal(f"unsupported timestamp signature {sig_alg}")
    except InvalidSignature as exc:
        raise InvalidSeal("timestamp token signature does not verify") from exc
    try:
        eku = tsa.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        eku = None
    if eku is None or ExtendedKeyUsageOID.TIME_STAMPING not in eku:
        raise InvalidSeal("timestamp signer is not a time-stamping certificate")
    _path_to_root(tsa, [*certs, *pool], roots, gen_time)
    return gen_time


def _etsi_u(jws: Mapping[str, Any]) -> list[dict[str, Any]]:
    header = jws.get("header", {})
    if not isinstance(header, dict):
        raise InvalidSeal("'header' must be an object")
    if set(header) - {ETSI_U}:
        raise InvalidSeal(f"unsupported unprotected header {sorted(set(header) - {ETSI_U})}")
    items = header.get(ETSI_U, [])
    if not isinstance(items, list):
        raise InvalidSeal("etsiU must be an array")
    if len({isinstance(i, str) for i in items}) > 1:
        raise InvalidSeal("etsiU mixes base64url and clear elements (TS 119 182-1 5.3.1)")
    out = []
    for item in items:
        if isinstance(item, str):
            try:
                item = parse_record(_b64url_decode(item, "etsiU element"))
            except BadDocument as exc:
                raise InvalidSeal(f"etsiU element: {exc.detail}") from exc
        if not isinstance(item, dict) or len(item) != 1:
            raise InvalidSeal("each etsiU element must be an object with one member")
        out.append(item)
    return out


def _signing_time(header: Mapping[str, Any]) -> datetime:
    if ("iat" in header) == ("sigT" in header):
        raise InvalidSeal("exactly one of iat and sigT must be present")
    if "iat" in header:
        iat = header["iat"]
        if not isinstance(iat, int) or isinstance(iat, bool):
            raise InvalidSeal("iat must be an integer NumericDate")
        return datetime.fromtimestamp(iat, UTC)
    try:
        return datetime.strptime(header["sigT"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    except (TypeError, ValueError) as exc:
        raise InvalidSeal("sigT must be RFC 3339 UTC like 2026-01-31T09:00:00Z") from exc


def verify_jws(
    jws: Mapping[str, Any],
    trust_roots: Sequence[bytes | x509.Certificate],
    *,
    detached: Mapping[str, bytes] | bytes | None = None,
    at: datetime | None = None,
) -> Verified:
    """Check a JAdES JWS (flattened JSON serialization) we could have produced: allowed
    ``alg``, ``crit`` understood, ``x5t#S256`` = SHA-256 of ``x5c[0]``, the signature, the
    ``sigD`` hashes against ``detached`` (the JCS bytes, by name), every ``sigTst`` token and
    the certificate paths to ``trust_roots`` (at the earliest verified timestamp, else ``at``
    or now). Raises ``InvalidSeal``."""
    if not isinstance(jws, Mapping) or "signatures" in jws:
        raise InvalidSeal("expected a JWS JSON flattened serialization")
    unknown = set(jws) - {"payload", "protected", "header", "signature"}
    if unknown:
        raise InvalidSeal(f"unexpected members {sorted(unknown)}")
    protected_b64 = jws.get("protected")
    try:
        header = parse_record(_b64url_decode(protected_b64, "protected header"))
    except BadDocument as exc:
        raise InvalidSeal(f"protected header: {exc.detail}") from exc
    alg = header.get("alg")
    if alg not in _ALGS:
        raise InvalidSeal(f"alg {alg!r} is not allowed")
    crit = header.get("crit", [])
    if "crit" in header and (
        not isinstance(crit, list)
        or not crit
        or len(set(map(str, crit))) != len(crit)
        or not all(isinstance(c, str) for c in crit)
    ):
        raise InvalidSeal("crit must be a non-empty array of distinct names")
    for name in crit:
        if name in _RFC7515_NAMES or name not in _UNDERSTOOD_CRIT:
            raise InvalidSeal(f"crit names {name!r}, which is not understood here")
        if name not in header:
            raise InvalidSeal(f"crit names {name!r}, which is absent")
    if "b64" in header:
        raise InvalidSeal("b64 (RFC 7797) is not supported")
    x5c = header.get("x5c")
    if not isinstance(x5c, list) or not x5c:
        raise InvalidSeal("x5c is missing")
    chain = [_load_cert(c, "x5c entry") for c in x5c]
    leaf_der = chain[0].public_bytes(serialization.Encoding.DER)
    if header.get("x5t#S256") != _b64url(hashlib.sha256(leaf_der).digest()):
        raise InvalidSeal("x5t#S256 does not match x5c[0]")
    signing_time = _signing_time(header)

    payload_b64 = jws.get("payload", "")
    names: tuple[str, ...] = ()
    if "sigD" in header:
        if "sigD" not in crit:
            raise InvalidSeal("sigD must be listed in crit")
        if payload_b64 != "":
            raise InvalidSeal("a sigD signature must have an empty payload")
        names = _check_sig_d(header["sigD"], detached)
    payload = _b64url_decode(payload_b64, "payload")
    signature = jws.get("signature")
    sig = _b64url_decode(signature, "signature")
    assert isinstance(protected_b64, str) and isinstance(signature, str)
    _verify_raw(chain[0], alg, f"{protected_b64}.{payload_b64}".encode("ascii"), sig)

    roots = [
        r if isinstance(r, x509.Certificate) else x509.load_der_x509_certificate(r)
        for r in trust_roots
    ]
    pool = list(chain[1:])
    etsi_u = _etsi_u(jws)
    tokens: list[bytes] = []
    level = "B-B"
    for item in etsi_u:
        ((key, value),) = item.items()
        try:
            if key == "sigTst":
                (token,) = value["tstTokens"]  # baseline: one token per sigTst
                tokens.append(base64.b64decode(token["val"], validate=True))
            elif key == "xVals":
                pool.extend(_load_cert(v["x509Cert"]["val"], "xVals entry") for v in value)
        except (TypeError, KeyError, ValueError, binascii.Error) as exc:
            raise InvalidSeal(f"etsiU {key} is malformed") from exc
    times = tuple(_verify_token(t, signature.encode("ascii"), pool, roots) for t in tokens)
    if times:
        level = "B-LT" if {"xVals", "rVals"} & {next(iter(i)) for i in etsi_u} else "B-T"
    _path_to_root(chain[0], pool, roots, min(times) if times else (at or datetime.now(UTC)))
    return Verified(alg, leaf_der, signing_time, payload, names, times, level)


def _check_sig_d(sig_d: Any, detached: Mapping[str, bytes] | bytes | None) -> tuple[str, ...]:
    if not isinstance(sig_d, dict) or sig_d.get("mId") != OBJECT_ID_BY_URI_HASH:
        raise InvalidSeal("only the ObjectIdByURIHash sigD mechanism is supported")
    pars, hash_v, hash_m = sig_d.get("pars"), sig_d.get("hashV"), sig_d.get("hashM")
    if (
        not isinstance(pars, list)
        or not isinstance(hash_v, list)
        or not pars
        or len(pars) != len(hash_v)
        or not all(isinstance(p, str) for p in pars)
    ):
        raise InvalidSeal("sigD pars and hashV must be arrays of the same length")
    if hash_m not in _HASH_M:
        raise InvalidSeal(f"sigD hashM {hash_m!r} is not supported")
    if isinstance(detached, bytes | bytearray):
        if len(pars) != 1:
            raise InvalidSeal("give the detached records by name")
        detached = {pars[0]: bytes(detached)}
    if detached is None:
        raise InvalidSeal("detached signature: the signed record is needed to verify it")
    for name, expected in zip(pars, hash_v, strict=True):
        data = detached.get(name)
        if data is None:
            raise InvalidSeal(f"detached record {name!r} not given")
        got = hashlib.new(_HASH_M[hash_m], _b64url(data).encode("ascii")).digest()
        if _b64url(got) != expected:
            raise InvalidSeal(f"detached record {name!r} does not match its sigD hash")
    return tuple(pars)
