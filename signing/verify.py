"""Verification of sealed PDFs (PAdES) and JSON records (JAdES), with ETSI EN 319 102-1
indications: TOTAL-PASSED, INDETERMINATE or TOTAL-FAILED plus a sub-indication.

Why it looks like this: anyone, anywhere must be able to check a seal from public artefacts
only, so nothing here touches the CA (no ``ca`` import, no database): the caller brings the
trust anchors (``TrustAnchors``, or the trust list's ``Anchors``: anything with ``roots``,
``intermediates`` and optionally ``withdrawn``, all DER), the document brings certificates,
timestamps and possibly revocation data, and the rest comes over HTTP from the URLs in the
certificates.

What is checked, per seal (and per PDF document timestamp, which counts like a seal):

- format (PAdES SubFilter, JWS structure and ``alg``), integrity (the signed digest matches the
  bytes), the signature value, and for PDFs pyHanko's difference analysis of every
  incremental update after the seal;
- the signing certificate (ESS signing-certificate / ``x5t#S256``), the certificate path to a
  trust anchor (pyhanko-certvalidator, at the best signature time), the e-seal profile;
- revocation of every certificate of the path except the anchor: embedded data first (PDF DSS
  and ``adbe-revocationInfoArchival``, JAdES ``rVals``), then the OCSP responder named in the
  certificate, then its CRL distribution point, each attempt recorded with its source, URL
  and time; only certificates of an already validated path are looked up, so a forged
  certificate cannot make the verifier fetch arbitrary URLs;
- timestamps: each signature timestamp (and PDF document timestamp) is checked like a seal
  (imprint, token signature, TSA path with EKU timeStamping, TSA revocation); the earliest
  valid one is the proof of existence (POE), reported as ``best_signature_time``. A timestamp
  that fails is reported and ignored as POE (EN 319 102-1 5.5.4), it does not by itself fail
  the seal.

Time: without a valid timestamp the only POE is the validation time (``now``). The path is
validated at the POE; revocation data counts when it is authentic and speaks for the POE
(issued after it, or valid at it). Revocation data fetched after a certificate expired is not
used to call it good (CAs drop expired certificates from CRLs, RFC 5280 3.3).

Decisions where EN 319 102-1 leaves a choice (documented for the API's users):

- Content changed after sealing (an incremental update that is not form filling, annotation
  or LTV data, or a signature not covering its revision) -> TOTAL-FAILED / FORMAT_FAILURE:
  HASH_FAILURE is kept for a digest mismatch (e.g. a signature copied from another file); the
  EU reference validator (DSS) also reports PDF modification findings in its format-checking
  block.
- ``alg`` "none" or an HMAC (``HS256``...) in a JWS -> TOTAL-FAILED / FORMAT_FAILURE: a MAC or
  nothing is not a signature, and TS 119 182-1 allows neither. A JWS payload that does not
  verify -> SIG_CRYPTO_FAILURE (JWS has no separate data hash); a detached record that does
  not match its ``sigD`` hash -> HASH_FAILURE.
- Not an e-seal (no keyUsage nonRepudiation/contentCommitment, an EKU for something else, a
  QcType other than eseal, or neither QcType eseal nor organizationIdentifier) ->
  INDETERMINATE / CHAIN_CONSTRAINTS_FAILURE: the certificate does not meet the validation
  constraints of this policy (that sub-indication's definition).
- Revoked: revocation strictly after a valid timestamp -> the seal keeps its proof
  (TOTAL-PASSED); otherwise INDETERMINATE / REVOKED_NO_POE (REVOKED_CA_NO_POE for a CA):
  without a POE before the revocation nobody can tell whether the seal was made before it.
  TOTAL-FAILED / REVOKED needs proof that the seal was made after the revocation (a content
  timestamp, EN 319 102-1 5.3.4), which kakuin's seals do not carry; a signature timestamp
  after the revocation only proves the seal existed then. Either way such a seal never passes.
- Revocation status not obtainable (embedded data missing or stale, OCSP and CRL unreachable)
  -> INDETERMINATE / TRY_LATER, never a pass.
- Expired (or not yet valid) at the best signature time -> INDETERMINATE /
  OUT_OF_BOUNDS_NO_POE; a timestamp earlier than notBefore -> TOTAL-FAILED / NOT_YET_VALID.
- No path to an anchor, or a path through a certificate the trust list withdrew ->
  INDETERMINATE / NO_CERTIFICATE_CHAIN_FOUND.
- ``best_signature_time`` is None when no timestamp gave a POE (EN 319 102-1 would say "the
  validation time", which reads as "sealed now").

Fetching: ``fetch(url, body, content_type) -> bytes`` (``default_fetch``: http/https only,
5 s timeout, size limit) is called for OCSP (POST ``application/ocsp-request``) and CRLs
(GET, body None). Pass your own to go through a proxy, add caching, or, in tests, route the
URLs the certificates carry (``settings.base_url``, e.g. http://127.0.0.1:8080) to a live
server; ``allow_online=False`` uses embedded data only. Each call of :func:`verify` fetches
any URL at most once.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import io
import json
import logging
import time
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, Protocol

from asn1crypto import cms, core, pem, tsp
from asn1crypto import crl as asn1_crl
from asn1crypto import ocsp as asn1_ocsp
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp as x509_ocsp
from cryptography.x509.oid import NameOID
from pyhanko.pdf_utils import generic
from pyhanko.pdf_utils.misc import PDF_WHITESPACE
from pyhanko.pdf_utils.reader import PdfFileReader
from pyhanko.sign.diff_analysis import (
    DEFAULT_DIFF_POLICY,
    DiffResult,
    ModificationLevel,
    StandardDiffPolicy,
    SuspiciousModification,
)
from pyhanko.sign.diff_analysis import policies as _diff_policies
from pyhanko.sign.general import (
    extract_signer_info,
    find_unique_cms_attribute,
)
from pyhanko.sign.validation.errors import SignatureValidationError
from pyhanko.sign.validation.generic_cms import (
    extract_certs_for_validation,
    extract_tst_data_iter,
    validate_sig_integrity,
)
from pyhanko.sign.validation.pdf_embedded import EmbeddedPdfSignature
from pyhanko.sign.validation.status import SignatureCoverageLevel
from pyhanko_certvalidator import CertificateValidator, ValidationContext
from pyhanko_certvalidator.errors import (
    CRLValidationError,
    DisallowedAlgorithmError,
    ExpiredError,
    NotYetValidError,
    OCSPValidationError,
    PathBuildingError,
    RevokedError,
    ValidationError,
)
from pyhanko_certvalidator.ltv.types import ValidationTimingInfo, ValidationTimingParams
from pyhanko_certvalidator.path import ValidationPath
from pyhanko_certvalidator.policy_decl import (
    CertRevTrustPolicy,
    RevocationCheckingPolicy,
    RevocationCheckingRule,
)
from pyhanko_certvalidator.registry import CertificateRegistry, SimpleTrustManager
from pyhanko_certvalidator.revinfo.validate_crl import verify_crl
from pyhanko_certvalidator.revinfo.validate_ocsp import verify_ocsp_response

from signing import fetch as outbound
from signing import jades
from signing.errors import BadDocument, SigningError
from signing.fetch import FetchError

__all__ = [
    "DEFAULT_LIMITS",
    "FETCH_TIMEOUT",
    "INDETERMINATE",
    "MAX_FETCH_BYTES",
    "TOTAL_FAILED",
    "TOTAL_PASSED",
    "Check",
    "Fetch",
    "FetchError",
    "Limits",
    "Report",
    "SignatureReport",
    "TooComplex",
    "TrustAnchors",
    "default_fetch",
    "sealed_by",
    "verify",
    "verify_jades",
    "verify_pdf",
]

log = logging.getLogger(__name__)

TOTAL_PASSED = "TOTAL-PASSED"
INDETERMINATE = "INDETERMINATE"
TOTAL_FAILED = "TOTAL-FAILED"
_SEVERITY = {TOTAL_PASSED: 0, INDETERMINATE: 1, TOTAL_FAILED: 2}

FETCH_TIMEOUT = outbound.DEFAULT_POLICY.timeout
MAX_FETCH_BYTES = outbound.DEFAULT_POLICY.max_bytes

#: (url, body or None for GET, content type of the body) -> response bytes; raise on failure.
Fetch = Callable[[str, "bytes | None", "str | None"], bytes]

_DIGESTS = frozenset({"sha256", "sha384", "sha512", "sha3_256", "sha3_384", "sha3_512"})
_PADES = "/ETSI.CAdES.detached"
_PKCS7 = "/adbe.pkcs7.detached"
_RFC3161 = "/ETSI.RFC3161"
_QC_STATEMENTS = x509.ObjectIdentifier("1.3.6.1.5.5.7.1.3")
_QC_TYPE = "0.4.0.1862.1.6"
_QC_TYPES = {"0.4.0.1862.1.6.1": "esign", "0.4.0.1862.1.6.2": "eseal", "0.4.0.1862.1.6.3": "web"}
# EKUs a document seal may carry: documentSigning (RFC 9336), any, emailProtection and Adobe's
# PDF signing (both seen on document signing certificates in the wild).
_SEAL_EKUS = frozenset(
    {"1.3.6.1.5.5.7.3.36", "2.5.29.37.0", "1.3.6.1.5.5.7.3.4", "1.2.840.113583.1.1.5"}
)
_TOLERANCE = timedelta(seconds=1)
_NO_REVOCATION_CHECK = CertRevTrustPolicy(
    RevocationCheckingPolicy(
        ee_certificate_rule=RevocationCheckingRule.NO_CHECK,
        intermediate_ca_cert_rule=RevocationCheckingRule.NO_CHECK,
    )
)


# -- public model --------------------------------------------------------------------------------


class AnchorSet(Protocol):
    """What verification trusts; ``signing.trustlist.Anchors`` fits as it is."""

    @property
    def roots(self) -> Sequence[bytes]: ...

    @property
    def intermediates(self) -> Sequence[bytes]: ...


@dataclass(frozen=True)
class TrustAnchors:
    """DER trust anchors: ``roots`` end a path, ``intermediates`` help build one, a path
    through a ``withdrawn`` certificate fails (the trust list's model)."""

    roots: Sequence[bytes]
    intermediates: Sequence[bytes] = ()
    withdrawn: Sequence[bytes] = ()

    def __post_init__(self) -> None:
        for name in ("roots", "intermediates", "withdrawn"):
            object.__setattr__(self, name, tuple(getattr(self, name)))


@dataclass(frozen=True)
class Limits:
    """Bounds of one verification of untrusted input. Beyond a count limit the document is
    refused (:class:`TooComplex`, HTTP 422) before any signature work; past the time budget
    the signatures not yet reached are INDETERMINATE with the reason."""

    max_signatures: int = 100  # seals + document timestamps
    max_revisions: int = 200  # incremental updates
    max_objects: int = 100_000  # xref entries
    max_pages: int = 5_000
    max_nesting: int = 100  # JSON nesting (PDF nesting is bounded by the parser's recursion)
    time_budget: float = 20.0  # seconds of wall time
    diff_analysis: str = "chained"  # or "full" (pyHanko's quadratic review; _BudgetedDiffPolicy)


DEFAULT_LIMITS = Limits()


class TooComplex(BadDocument):
    """The document exceeds a :class:`Limits` count: refused before any signature work."""

    status = 422
    type = "signing/too-complex"
    title = "Document too complex to verify"


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if hasattr(value, "to_dict"):
        return value.to_dict()
    return value


@dataclass(frozen=True)
class Check:
    """One step of the validation; ``passed`` is None when it was not applicable or not
    reached. ``evidence`` says what it looked at."""

    name: str
    passed: bool | None
    detail: str
    evidence: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "passed": self.passed,
            "detail": self.detail,
            "evidence": _jsonable(self.evidence),
        }


@dataclass(frozen=True)
class SignatureReport:
    """One seal or PDF document timestamp. ``sealed_by`` comes from the signing (or TSA)
    certificate: organization, organization_identifier, school_code / corporate_number,
    board (from OU when a certificate carries one; kakuin's do not), country,
    common_name, certificate_serial (lowercase hex), issuer."""

    kind: Literal["seal", "document-timestamp"]
    indication: str
    sub_indication: str | None
    level: str | None
    sealed_by: Mapping[str, Any]
    signing_time: datetime | None  # claimed by the sealer, not proof
    best_signature_time: datetime | None  # proof of existence from timestamps
    checks: Sequence[Check]
    field_name: str | None = None  # PDF signature field

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "field_name": self.field_name,
            "indication": self.indication,
            "sub_indication": self.sub_indication,
            "level": self.level,
            "sealed_by": _jsonable(self.sealed_by),
            "signing_time": _jsonable(self.signing_time),
            "best_signature_time": _jsonable(self.best_signature_time),
            "checks": [c.to_dict() for c in self.checks],
        }


@dataclass(frozen=True)
class Report:
    """The whole document: the worst indication of its seals and document timestamps.
    ``checked_at`` is the validation time (``now`` if one was given)."""

    document_type: Literal["pdf", "jades"]
    indication: str
    sub_indication: str | None
    signatures: Sequence[SignatureReport]
    checked_at: datetime

    @property
    def passed(self) -> bool:
        return self.indication == TOTAL_PASSED

    def to_dict(self) -> dict[str, Any]:
        return {
            "document_type": self.document_type,
            "indication": self.indication,
            "sub_indication": self.sub_indication,
            "checked_at": _jsonable(self.checked_at),
            "signatures": [s.to_dict() for s in self.signatures],
        }


# -- fetching ------------------------------------------------------------------------------------


def default_fetch(url: str, body: bytes | None = None, content_type: str | None = None) -> bytes:
    """GET (``body`` None) or POST ``url`` through :mod:`signing.fetch` with its default policy
    (http(s), public targets only, same-host redirects, ``FETCH_TIMEOUT`` s, at most
    ``MAX_FETCH_BYTES``); raises :class:`FetchError`. No cache: the server uses a
    :class:`signing.fetch.StatusFetcher`."""
    return outbound.fetch(url, body, content_type, policy=outbound.DEFAULT_POLICY).data


# -- verdicts ------------------------------------------------------------------------------------


class _Verdict:
    """Checks in order plus the worst indication met (the first one of that severity wins)."""

    def __init__(self) -> None:
        self.checks: list[Check] = []
        self.indication = TOTAL_PASSED
        self.sub: str | None = None

    def ok(self, name: str, detail: str, **evidence: Any) -> None:
        self.checks.append(Check(name, True, detail, evidence))

    def skip(self, name: str, detail: str, **evidence: Any) -> None:
        self.checks.append(Check(name, None, detail, evidence))

    def fail(self, name: str, indication: str, sub: str, detail: str, **evidence: Any) -> None:
        self.checks.append(Check(name, False, f"{detail} [{indication}/{sub}]", evidence))
        self.worsen(indication, sub)

    def worsen(self, indication: str, sub: str | None) -> None:
        if _SEVERITY[indication] > _SEVERITY[self.indication]:
            self.indication, self.sub = indication, sub

    @property
    def failed(self) -> bool:
        return self.indication == TOTAL_FAILED

    @property
    def passed(self) -> bool:
        return self.indication == TOTAL_PASSED


def _worst(reports: Iterable[SignatureReport]) -> tuple[str, str | None]:
    indication, sub = TOTAL_PASSED, None
    for r in reports:
        if _SEVERITY[r.indication] > _SEVERITY[indication]:
            indication, sub = r.indication, r.sub_indication
    return indication, sub


def _sub(exc: SignatureValidationError) -> tuple[str, str]:
    """pyHanko's AdES sub-indication of an error as (indication, sub-indication)."""
    subindic = exc.ades_subindication
    if subindic is None:
        return INDETERMINATE, "GENERIC"
    indication = {"PASSED": TOTAL_PASSED, "FAILED": TOTAL_FAILED}.get(
        subindic.status.name, INDETERMINATE
    )
    return indication, str(subindic.standard_name)


# -- certificates --------------------------------------------------------------------------------


def _describe(cert: asn1_x509.Certificate) -> dict[str, Any]:
    validity = cert["tbs_certificate"]["validity"]
    return {
        "subject": cert.subject.human_friendly,
        "serial": format(cert.serial_number, "x"),
        "sha256": cert.sha256.hex(),
        "not_before": validity["not_before"].native,
        "not_after": validity["not_after"].native,
    }


def _attr(name: x509.Name, oid: x509.ObjectIdentifier) -> str | None:
    values = name.get_attributes_for_oid(oid)
    if not values:
        return None
    value = values[0].value
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def sealed_by(der: bytes) -> dict[str, Any]:
    """Who a certificate names (see :class:`SignatureReport`)."""
    cert = x509.load_der_x509_certificate(der)
    subject = cert.subject
    identifier = _attr(subject, NameOID.ORGANIZATION_IDENTIFIER)
    out: dict[str, Any] = {
        "organization": _attr(subject, NameOID.ORGANIZATION_NAME),
        "organization_identifier": identifier,
        "school_code": None,
        "corporate_number": None,
        "board": _attr(subject, NameOID.ORGANIZATIONAL_UNIT_NAME),
        "country": _attr(subject, NameOID.COUNTRY_NAME),
        "common_name": _attr(subject, NameOID.COMMON_NAME),
        "certificate_serial": format(cert.serial_number, "x"),
        "issuer": cert.issuer.rfc4514_string(),
    }
    if identifier and identifier.startswith("SC:JP-"):
        out["school_code"] = identifier[len("SC:JP-"):]
    elif identifier and identifier.startswith("NTRJP-"):
        out["corporate_number"] = identifier[len("NTRJP-"):]
    return out


class _QcStatement(core.Sequence):
    _fields = [  # noqa: RUF012  (asn1crypto's class-level schema)
        ("statement_id", core.ObjectIdentifier),
        ("statement_info", core.Any, {"optional": True}),
    ]


class _QcStatements(core.SequenceOf):
    _child_spec = _QcStatement


class _QcType(core.SequenceOf):
    _child_spec = core.ObjectIdentifier


def _qc_types(cert: x509.Certificate) -> list[str] | None:
    """QcType OIDs of the QCStatements extension, None when there is no QcType statement."""
    try:
        ext = cert.extensions.get_extension_for_oid(_QC_STATEMENTS).value
    except x509.ExtensionNotFound:
        return None
    raw = getattr(ext, "value", None)
    if not isinstance(raw, bytes):
        return None
    try:
        for statement in _QcStatements.load(raw):
            if statement["statement_id"].dotted == _QC_TYPE:
                info = statement["statement_info"]
                return [oid.dotted for oid in _QcType.load(info.dump())]
    except (ValueError, TypeError):
        return []
    return None


def _check_eseal_profile(verdict: _Verdict, der: bytes) -> None:
    """An e-seal, not any certificate: contentCommitment, a document EKU if any, and QcType
    eseal (EN 319 412-5) or at least an organizationIdentifier (EN 319 412-1)."""
    cert = x509.load_der_x509_certificate(der)
    problems = []
    evidence: dict[str, Any] = {}
    try:
        ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
        evidence["content_commitment"] = ku.content_commitment
        if not ku.content_commitment:
            problems.append("keyUsage lacks contentCommitment (nonRepudiation)")
    except x509.ExtensionNotFound:
        problems.append("no keyUsage extension")
    try:
        ekus = {o.dotted_string for o in
                cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value}
        evidence["extended_key_usage"] = sorted(ekus)
        if not ekus & _SEAL_EKUS:
            problems.append("its extended key usage is for something else than documents")
    except x509.ExtensionNotFound:
        pass
    qc = _qc_types(cert)
    identifier = _attr(cert.subject, NameOID.ORGANIZATION_IDENTIFIER)
    evidence["qc_types"] = [_QC_TYPES.get(o, o) for o in qc] if qc is not None else None
    evidence["organization_identifier"] = identifier
    if qc is not None and "0.4.0.1862.1.6.2" not in qc:
        problems.append("its QcType is not eseal")
    elif qc is None and not identifier:
        problems.append("neither QcType eseal nor an organizationIdentifier")
    if problems:
        verdict.fail("e-seal-profile", INDETERMINATE, "CHAIN_CONSTRAINTS_FAILURE",
                     "not an e-seal certificate: " + "; ".join(problems), **evidence)
    else:
        kind = "QcType eseal" if qc else "organizationIdentifier"
        verdict.ok("e-seal-profile", f"an e-seal certificate ({kind}, contentCommitment)",
                   **evidence)


# -- revocation data -----------------------------------------------------------------------------


@dataclass
class _Revinfo:
    certs: list[asn1_x509.Certificate] = field(default_factory=list)
    ocsps: list[asn1_ocsp.OCSPResponse] = field(default_factory=list)
    crls: list[asn1_crl.CertificateList] = field(default_factory=list)


def _ocsp_single(resp: asn1_ocsp.OCSPResponse, serial: int) -> Any:
    try:
        basic = resp.basic_ocsp_response
        for single in basic["tbs_response_data"]["responses"]:
            if single["cert_id"]["serial_number"].native == serial:
                return single
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
    return None


def _ocsp_request(cert: asn1_x509.Certificate, issuer: asn1_x509.Certificate) -> bytes:
    """An RFC 6960 request without nonce (RFC 5019: responders may pre-sign), SHA-1 CertID as
    RFC 5019 2.1.1 wants. Built by cryptography: asn1crypto takes ~3 ms to encode one."""
    request = x509_ocsp.OCSPRequestBuilder().add_certificate(
        x509.load_der_x509_certificate(cert.dump()),
        x509.load_der_x509_certificate(issuer.dump()),
        hashes.SHA1(),  # noqa: S303  (the CertID hash RFC 5019 prescribes; no security role)
    ).build()
    return request.public_bytes(serialization.Encoding.DER)


def _load_crl(data: bytes) -> asn1_crl.CertificateList:
    if pem.detect(data):
        _, _, data = pem.unarmor(data)
    return asn1_crl.CertificateList.load(data)


# -- the validation context of one verification --------------------------------------------------


class _Session:
    """One verification: anchors parsed once, fetches cached, one clock."""

    def __init__(self, anchors: AnchorSet, fetch: Fetch, now: datetime | None,
                 allow_online: bool, limits: Limits = DEFAULT_LIMITS) -> None:
        self.limits = limits
        self.deadline = time.monotonic() + limits.time_budget
        self.revinfo_checks: dict[Any, tuple[dict[str, Any] | None,
                                             list[dict[str, Any]]]] = {}
        # One per verification: the chained review shares revision comparisons across seals.
        self.diff_policy = _BudgetedDiffPolicy(self.deadline,
                                               chained=limits.diff_analysis == "chained")
        self.real_now = datetime.now(UTC)
        self.now = now or self.real_now
        if self.now.tzinfo is None:
            raise ValueError("now must carry a time zone")
        withdrawn = set(getattr(anchors, "withdrawn", ()))
        self.withdrawn = withdrawn
        self.roots = [asn1_x509.Certificate.load(d) for d in anchors.roots if d not in withdrawn]
        self.intermediates = [asn1_x509.Certificate.load(d) for d in anchors.intermediates
                              if d not in withdrawn]
        self.allow_online = allow_online
        # One pool of certificates and one trust manager for every context of this
        # verification: building them per context cost more than the checks themselves.
        self._trust = SimpleTrustManager.build(trust_roots=self.roots)
        self._registry = CertificateRegistry.build(self.intermediates)
        self._fetch = fetch
        self._cache: dict[tuple[str, bytes | None], bytes | FetchError] = {}

    def fetch(self, url: str, body: bytes | None, content_type: str | None) -> bytes:
        key = (url, body)
        hit = self._cache.get(key)
        if hit is None and time.monotonic() > self.deadline:
            hit = FetchError(f"{url}: not fetched, the verification's time budget is used up")
        if hit is None:
            try:
                hit = self._fetch(url, body, content_type)
            except Exception as exc:  # any hook failure is "unreachable", with its reason
                hit = exc if isinstance(exc, FetchError) else FetchError(f"{url}: {exc}")
            self._cache[key] = hit
        if isinstance(hit, FetchError):
            raise hit
        return hit

    def context(self, others: Sequence[asn1_x509.Certificate], moment: datetime,
                revinfo: _Revinfo | None = None) -> ValidationContext:
        self._registry.register_multiple(others)
        common: dict[str, Any] = {
            "trust_manager": self._trust,
            "certificate_registry": self._registry,
            "allow_fetching": False,
        }
        if revinfo is None:
            return ValidationContext(moment=moment, revinfo_policy=_NO_REVOCATION_CHECK,
                                     **common)
        vc = ValidationContext(moment=moment, ocsps=revinfo.ocsps, crls=revinfo.crls,
                               revocation_mode="soft-fail", retroactive_revinfo=True, **common)
        # Not "point in time": a revocation at any time is reported (with its date) and the
        # POE rules below decide; freshness is still judged at ``moment``.
        vc.timing_params = ValidationTimingParams(
            ValidationTimingInfo(moment, moment, point_in_time_validation=False),
            vc.time_tolerance,
        )
        return vc


@dataclass
class _CertOutcome:
    path: ValidationPath | None = None
    revoked: list[tuple[bool, datetime, str]] = field(default_factory=list)  # (is_leaf, when, why)


async def _validate_certificate(
    session: _Session,
    verdict: _Verdict,
    cert: asn1_x509.Certificate,
    others: Sequence[asn1_x509.Certificate],
    embedded: _Revinfo,
    *,
    at: datetime,
    poe: datetime | None,
    what: str,
) -> _CertOutcome:
    """Path to an anchor valid at ``at``, then revocation of each certificate on it for a POE
    of ``poe`` (None: the validation time). Adds checks to ``verdict``."""
    outcome = _CertOutcome()
    name = f"{what}certificate-path"
    vc = session.context([*others, *embedded.certs], at)
    try:
        path = await CertificateValidator(cert, validation_context=vc).async_validate_path()
    except PathBuildingError as exc:
        verdict.fail(name, INDETERMINATE, "NO_CERTIFICATE_CHAIN_FOUND",
                     f"no path to a trust anchor: {exc}", certificate=_describe(cert))
        return outcome
    except ExpiredError as exc:
        verdict.fail(name, INDETERMINATE, "OUT_OF_BOUNDS_NO_POE" if exc.is_ee_cert
                     else "CERTIFICATE_CHAIN_GENERAL_FAILURE",
                     f"not valid at {at.isoformat()}: {exc.failure_msg}", validated_at=at,
                     certificate=_describe(cert))
        return outcome
    except NotYetValidError as exc:
        proven = poe is not None and exc.is_ee_cert
        verdict.fail(name, TOTAL_FAILED if proven else INDETERMINATE, "NOT_YET_VALID",
                     f"not yet valid at {at.isoformat()}: {exc.failure_msg}", validated_at=at,
                     certificate=_describe(cert))
        return outcome
    except DisallowedAlgorithmError as exc:
        verdict.fail(name, INDETERMINATE, "CRYPTO_CONSTRAINTS_FAILURE", exc.failure_msg,
                     certificate=_describe(cert))
        return outcome
    except ValidationError as exc:
        verdict.fail(name, INDETERMINATE, "CERTIFICATE_CHAIN_GENERAL_FAILURE", exc.failure_msg,
                     certificate=_describe(cert))
        return outcome
    chain = list(path.iter_certs(include_root=True))
    described = [_describe(c) for c in chain]
    withdrawn = [c for c in chain if c.dump() in session.withdrawn]
    if withdrawn:
        verdict.fail(name, INDETERMINATE, "NO_CERTIFICATE_CHAIN_FOUND",
                     f"the path goes through {withdrawn[0].subject.human_friendly}, withdrawn "
                     "from the trust list", path=described)
        return outcome
    outcome.path = path
    verdict.ok(name, f"chains to trust anchor {chain[0].subject.human_friendly}",
               path=described, validated_at=at)
    await _check_revocation(session, verdict, outcome, path, chain, others, embedded,
                            poe=poe, what=what)
    return outcome


async def _check_revocation(
    session: _Session,
    verdict: _Verdict,
    outcome: _CertOutcome,
    path: ValidationPath,
    chain: list[asn1_x509.Certificate],
    others: Sequence[asn1_x509.Certificate],
    embedded: _Revinfo,
    *,
    poe: datetime | None,
    what: str,
) -> None:
    name = f"{what}revocation"
    moment = poe or session.now
    results: list[dict[str, Any]] = []
    unknown: list[str] = []
    for index in range(len(chain) - 1, 0, -1):  # leaf first, the anchor needs no status
        cert, issuer = chain[index], chain[index - 1]
        if cert.ocsp_no_check_value is not None:
            continue
        result = await _status_of(session, cert, issuer, path, [*others, *embedded.certs],
                                  embedded, moment)
        results.append(result)
        if result["status"] == "revoked":
            outcome.revoked.append((index == len(chain) - 1, result["revoked_at"],
                                    result.get("reason", "")))
        elif result["status"] != "good":
            unknown.append(cert.subject.human_friendly)
    for is_leaf, when, why in outcome.revoked:
        if poe is not None and when > poe:
            continue  # revoked after the proof of existence: the seal keeps its proof
        sub = "REVOKED_NO_POE" if is_leaf else "REVOKED_CA_NO_POE"
        whom = "the certificate" if is_leaf else "a CA certificate of its path"
        since = (f"no proof of existence before it (earliest timestamp {poe.isoformat()})"
                 if poe is not None else "no timestamp proves the seal existed before")
        verdict.fail(name, INDETERMINATE, sub,
                     f"{whom} was revoked at {when.isoformat()} ({why}); {since}",
                     certificates=results, poe=poe)
        return
    if unknown:
        verdict.fail(name, INDETERMINATE, "TRY_LATER",
                     "revocation status not available for " + ", ".join(unknown),
                     certificates=results, poe=poe)
        return
    later = [r for r in results if r["status"] == "revoked"]
    if later:
        detail = (f"revoked at {later[0]['revoked_at'].isoformat()}, after the proof of "
                  f"existence {moment.isoformat()}: the seal keeps its proof")
    else:
        sources = sorted({r["source"] for r in results})
        detail = "not revoked (" + ", ".join(sources) + ")" if results else "nothing to check"
    verdict.ok(name, detail, certificates=results, poe=poe)


async def _status_of(
    session: _Session,
    cert: asn1_x509.Certificate,
    issuer: asn1_x509.Certificate,
    path: ValidationPath,
    others: Sequence[asn1_x509.Certificate],
    embedded: _Revinfo,
    moment: datetime,
) -> dict[str, Any]:
    """Embedded data, then OCSP, then the CRL: the first authentic answer wins."""
    base: dict[str, Any] = {"certificate": cert.subject.human_friendly,
                            "serial": format(cert.serial_number, "x")}
    attempts: list[dict[str, Any]] = []
    serial = cert.serial_number
    if embedded.ocsps or embedded.crls:
        ocsps = [r for r in embedded.ocsps if _ocsp_single(r, serial) is not None]
        got = None
        if ocsps:
            got = await _try(session, cert, path, others, _Revinfo(ocsps=ocsps), moment,
                             "embedded OCSP", None, attempts)
        if got is None and embedded.crls:
            got = await _try(session, cert, path, others, _Revinfo(crls=embedded.crls),
                             moment, "embedded CRL", None, attempts)
        if got is not None:
            return {**base, **got, "attempts": attempts}
    if not session.allow_online:
        attempts.append({"source": "online", "error": "online checks are switched off"})
        return {**base, "status": "unknown", "attempts": attempts}
    expired = cert["tbs_certificate"]["validity"]["not_after"].native
    for url in cert.ocsp_urls:
        try:
            raw = session.fetch(url, _ocsp_request(cert, issuer), "application/ocsp-request")
            response = asn1_ocsp.OCSPResponse.load(raw)
            if response["response_status"].native != "successful":
                raise FetchError(f"responder says {response['response_status'].native}")
            single = _ocsp_single(response, serial)
            if single is None:
                raise FetchError("the response does not cover this certificate")
        except (FetchError, ValueError, TypeError, KeyError) as exc:
            attempts.append({"source": "OCSP", "url": url, "at": session.real_now,
                             "error": str(exc)[:300]})
            continue
        got = await _try(session, cert, path, others, _Revinfo(ocsps=[response]),
                         session.now, "OCSP", url, attempts, expired=expired)
        if got is not None:
            return {**base, **got, "attempts": attempts}
    for point in cert.crl_distribution_points:
        url = point.url
        if not url:
            continue
        try:
            crl = _load_crl(session.fetch(url, None, None))
        except (FetchError, ValueError, TypeError, KeyError) as exc:
            attempts.append({"source": "CRL", "url": url, "at": session.real_now,
                             "error": str(exc)[:300]})
            continue
        got = await _try(session, cert, path, others, _Revinfo(crls=[crl]), session.now,
                         "CRL", url, attempts, expired=expired)
        if got is not None:
            return {**base, **got, "attempts": attempts}
    return {**base, "status": "unknown", "attempts": attempts}


async def _try(
    session: _Session,
    cert: asn1_x509.Certificate,
    path: ValidationPath,
    others: Sequence[asn1_x509.Certificate],
    revinfo: _Revinfo,
    moment: datetime,
    source: str,
    url: str | None,
    attempts: list[dict[str, Any]],
    *,
    expired: datetime | None = None,
) -> dict[str, Any] | None:
    """:func:`_check_source`, once per verification for the same certificate, path, data,
    moment and source: 50 seals by one certificate share one status check of the seal
    certificate, the issuing CA and the TSA instead of repeating each 50 times."""
    key = (cert.sha256, tuple(c.sha256 for c in path.iter_certs(include_root=True)),
           tuple(hashlib.sha256(r.dump()).digest() for r in (*revinfo.ocsps, *revinfo.crls)),
           moment, source, url, expired)
    hit = session.revinfo_checks.get(key)
    if hit is None:
        tried: list[dict[str, Any]] = []
        result = await _check_source(session, cert, path, others, revinfo, moment, source, url,
                                     tried, expired=expired)
        hit = session.revinfo_checks[key] = (result, tried)
    attempts.extend(hit[1])
    return hit[0]


async def _check_source(
    session: _Session,
    cert: asn1_x509.Certificate,
    path: ValidationPath,
    others: Sequence[asn1_x509.Certificate],
    revinfo: _Revinfo,
    moment: datetime,
    source: str,
    url: str | None,
    attempts: list[dict[str, Any]],
    *,
    expired: datetime | None = None,
) -> dict[str, Any] | None:
    """One source through pyhanko-certvalidator (signature, responder authorisation, CRL
    issuer, freshness at ``moment``). A status, or None after recording why not."""
    if not revinfo.ocsps and not revinfo.crls:
        return None
    vc = session.context(others, moment, revinfo)
    is_ocsp = bool(revinfo.ocsps)
    found: dict[str, Any] = {"source": source, "url": url}
    if url is not None:
        found["at"] = session.real_now
    if is_ocsp:
        single = _ocsp_single(revinfo.ocsps[-1], cert.serial_number)
        if single is not None:
            found["this_update"] = single["this_update"].native
            found["next_update"] = single["next_update"].native
    else:
        tbs = revinfo.crls[0]["tbs_cert_list"]
        found["this_update"] = tbs["this_update"].native
        found["next_update"] = tbs["next_update"].native
    try:
        if is_ocsp:
            await verify_ocsp_response(cert, path, vc)
        else:
            await verify_crl(cert, path, vc)
    except RevokedError as exc:
        return {**found, "status": "revoked", "revoked_at": exc.revocation_dt,
                "reason": exc.reason.human_friendly}
    except (OCSPValidationError, CRLValidationError, ValidationError, ValueError) as exc:
        attempts.append({**found, "error": str(exc)[:300]})
        return None
    issued = found.get("this_update")
    if expired is not None and issued is not None and issued > expired + _TOLERANCE:
        attempts.append({**found, "error": "issued after the certificate expired: CAs drop "
                                           "expired certificates from their status"})
        return None
    return {**found, "status": "good"}


# -- timestamps ----------------------------------------------------------------------------------


@dataclass
class _Token:
    verdict: _Verdict
    gen_time: datetime | None = None
    tsa: asn1_x509.Certificate | None = None


async def _validate_token(
    session: _Session,
    signed_data: cms.SignedData,
    expected_imprint: Callable[[str], bytes],
    embedded: _Revinfo,
    *,
    poe: datetime | None,
) -> _Token:
    """An RFC 3161 token: TSTInfo, imprint, token signature, TSA certificate (EKU, path at
    genTime, revocation for ``poe``)."""
    token = _Token(_Verdict())
    v = token.verdict
    try:
        info = signed_data["encap_content_info"]["content"].parsed
        if not isinstance(info, tsp.TSTInfo):
            raise ValueError("not a TSTInfo")
        token.gen_time = info["gen_time"].native
        imprint = info["message_imprint"]
        imprint_alg = imprint["hash_algorithm"]["algorithm"].native
        hashed = imprint["hashed_message"].native
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        v.fail("format", TOTAL_FAILED, "FORMAT_FAILURE", f"not a timestamp token: {exc}")
        return token
    try:
        certs = extract_certs_for_validation(signed_data)
        signer_info = extract_signer_info(signed_data)
    except SignatureValidationError as exc:
        v.fail("signing-certificate", *_sub(exc), exc.failure_message)
        return token
    except (ValueError, KeyError, TypeError) as exc:
        v.fail("format", TOTAL_FAILED, "FORMAT_FAILURE", f"unreadable token: {exc}")
        return token
    tsa = token.tsa = certs.signer_cert
    evidence = {"gen_time": token.gen_time, "tsa": tsa.subject.human_friendly,
                "tsa_serial": format(tsa.serial_number, "x"), "policy": info["policy"].dotted}
    if imprint_alg not in _DIGESTS:
        v.fail("integrity", INDETERMINATE, "CRYPTO_CONSTRAINTS_FAILURE",
               f"imprint digest {imprint_alg} is not accepted", **evidence)
        return token
    if expected_imprint(imprint_alg) != hashed:
        v.fail("integrity", TOTAL_FAILED, "HASH_FAILURE",
               "the token's message imprint does not match what it should cover", **evidence)
        return token
    md = signer_info["digest_algorithm"]["algorithm"].native
    try:
        content = bytes(signed_data["encap_content_info"]["content"])
        if md not in _DIGESTS:
            raise SignatureValidationError(f"digest {md} is not accepted")
        intact, valid = validate_sig_integrity(
            signer_info, tsa, "tst_info", hashlib.new(md, content).digest()
        )
    except SignatureValidationError as exc:
        v.fail("signature", *_sub(exc), exc.failure_message, **evidence)
        return token
    if not intact:
        v.fail("integrity", TOTAL_FAILED, "HASH_FAILURE",
               "the token's signed attributes do not match its TSTInfo", **evidence)
        return token
    if not valid:
        v.fail("signature", TOTAL_FAILED, "SIG_CRYPTO_FAILURE",
               "the token's signature does not verify", **evidence)
        return token
    v.ok("integrity", f"token intact, genTime {token.gen_time.isoformat()}", **evidence)
    if "time_stamping" not in (tsa.extended_key_usage_value.native
                               if tsa.extended_key_usage_value else []):
        v.fail("tsa-profile", INDETERMINATE, "CHAIN_CONSTRAINTS_FAILURE",
               "the token's signer is not a time-stamping certificate (EKU)", **evidence)
        return token
    await _validate_certificate(session, v, tsa, list(certs.other_certs), embedded,
                                at=token.gen_time, poe=poe, what="tsa-")
    return token


def _token_check(name: str, token: _Token) -> Check:
    v = token.verdict
    when = token.gen_time.isoformat() if token.gen_time else "?"
    detail = (f"valid timestamp of {when}" if v.passed
              else f"timestamp of {when} not usable as proof [{v.indication}/{v.sub}]")
    return Check(name, v.passed, detail,
                 {"gen_time": token.gen_time, "indication": v.indication,
                  "sub_indication": v.sub, "checks": [c.to_dict() for c in v.checks]})


# -- PDF -----------------------------------------------------------------------------------------


class _OutOfTime(Exception):
    """The verification's time budget ran out (Limits.time_budget)."""


class _BudgetedDiffPolicy(StandardDiffPolicy):
    """pyHanko's default difference analysis rules, stopping once the deadline passed, in one
    of two reviews (``Limits.diff_analysis``):

    - ``"full"``: pyHanko's own review: each signature's revision against every later
      revision, i.e. n(n-1)/2 comparisons for n seals (50 seals: 1,225, about 10 s here);
    - ``"chained"`` (default): every revision against the one before it, once per document
      (n-1 comparisons), each signature judged on the revisions after its own. The same rules,
      each signature's FieldMDP lock and DocMDP level applied to every revision after it. Why
      this is no weaker: a rule that accepts revision r against r-1 accepts a local edit of an
      allowed kind (form filling, a new or filled signature field, LTV data, metadata); a chain
      of such edits from the signed revision is a sum of allowed edits, and anything a lock or
      DocMDP forbids is refused in the revision that does it. It is stricter in two corners
      (an object changed and later changed back; a signature field signed and then altered),
      which kakuin's seals never do.
    """

    def __init__(self, deadline: float, chained: bool = True) -> None:
        base = DEFAULT_DIFF_POLICY
        super().__init__(base.global_rules, base.form_rule)
        self.deadline = deadline
        self.chained = chained
        self._pairs: dict[tuple[int, str, Any], DiffResult | SuspiciousModification] = {}

    def apply(self, old: Any, new: Any, field_mdp_spec: Any = None,
              doc_mdp: Any = None) -> DiffResult:
        if time.monotonic() > self.deadline:
            raise _OutOfTime("difference analysis")
        return super().apply(old, new, field_mdp_spec, doc_mdp)

    def review_file(self, reader: PdfFileReader, base_revision: Any,
                    field_mdp_spec: Any = None,
                    doc_mdp: Any = None) -> DiffResult | SuspiciousModification:
        if not self.chained or not isinstance(base_revision, int):
            return super().review_file(reader, base_revision, field_mdp_spec, doc_mdp)
        level = ModificationLevel.NONE
        changed: set[str] = set()
        for revision in range(base_revision + 1, reader.xrefs.total_revisions):
            key = (revision, repr(field_mdp_spec), doc_mdp)
            result = self._pairs.get(key)
            if result is None:
                try:
                    result = self.apply(reader.get_historical_resolver(revision - 1),
                                        reader.get_historical_resolver(revision),
                                        field_mdp_spec, doc_mdp)
                except SuspiciousModification as exc:
                    result = exc
                self._pairs[key] = result
            if isinstance(result, SuspiciousModification):
                return result
            level = max(level, result.modification_level)
            changed |= result.changed_form_fields
        return DiffResult(level, changed)


_find_orphans = _diff_policies._find_orphans


def _cached_orphans(hist_rev: Any) -> frozenset[Any]:
    """``_find_orphans`` depends on the newer revision only, but pyHanko recomputes it for
    every (signature, later revision) pair: with 50 seals, 1,225 times for 49 answers (about a
    fifth of the difference analysis). Same result, computed once per revision."""
    hit: frozenset[Any] | None = getattr(hist_rev, "_kakuin_orphans", None)
    if hit is None:  # kept on the revision's resolver: it lives as long as its reader
        hit = frozenset(_find_orphans(hist_rev))
        hist_rev._kakuin_orphans = hit
    return hit


_diff_policies._find_orphans = _cached_orphans

_read_hex_slowly = generic.read_hex_string_from_stream
_NOT_HEX = bytes(range(256)).translate(None, b"0123456789abcdefABCDEF")


def _read_hex(stream: Any) -> Any:
    """pyHanko reads a hex string one byte per call (~20 ms for a 16 KB signature /Contents,
    read again by every analysis of every later revision). Same grammar in one pass: PDF
    whitespace skipped, a comment or any other byte handed back to pyHanko's reader."""
    start = stream.tell()
    stream.read(1)  # "<"
    chunks = []
    while True:
        chunk = stream.read(65536)
        if not chunk:
            break
        end = chunk.find(b">")
        if end >= 0:
            chunks.append(chunk[:end])
            digits = b"".join(chunks).translate(None, PDF_WHITESPACE)
            if not digits.translate(None, _NOT_HEX) == digits:
                break
            stream.seek(start + 1 + sum(len(c) for c in chunks) + 1)
            if len(digits) % 2:
                digits += b"0"
            return generic.pdf_string(binascii.unhexlify(digits))
        chunks.append(chunk)
    stream.seek(start)
    return _read_hex_slowly(stream)


generic.read_hex_string_from_stream = _read_hex

_name_equal = asn1_x509.Name.__eq__


def _name_eq(self: asn1_x509.Name, other: object) -> bool:
    """asn1crypto compares names through LDAP string preparation of every attribute (a third
    of a 50-seal verification: pyHanko matches issuer names of every CMS certificate). Equal
    DER is an equal name; other pairs take the full comparison once (remembered by DER)."""
    if not isinstance(other, asn1_x509.Name):
        return bool(_name_equal(self, other))
    a, b = self.dump(), other.dump()
    if a == b:
        return True
    key = (a, b)
    hit = _names_compared.get(key)
    if hit is None:
        if len(_names_compared) > 4096:
            _names_compared.clear()
        hit = _names_compared[key] = bool(_name_equal(self, other))
    return hit


_names_compared: dict[tuple[bytes, bytes], bool] = {}


asn1_x509.Name.__eq__ = _name_eq


def _check_pdf_limits(reader: PdfFileReader, limits: Limits) -> None:
    """Counts the parser knows before any signature work (TooComplex beyond them)."""
    revisions = reader.xrefs.total_revisions
    if revisions > limits.max_revisions:
        raise TooComplex(f"{revisions} revisions (incremental updates): more than the "
                         f"{limits.max_revisions} this service verifies")
    objects = sum(len(reader.xrefs.explicit_refs_in_revision(r)) for r in range(revisions))
    if objects > limits.max_objects:
        raise TooComplex(f"{objects} objects: more than the {limits.max_objects} this "
                         "service verifies")
    count = _lookup(reader.root, "/Pages", "/Count")
    if isinstance(count, int) and count > limits.max_pages:
        raise TooComplex(f"{count} pages: more than the {limits.max_pages} this service "
                         "verifies")
    fields = _lookup(reader.root, "/AcroForm", "/Fields")
    if isinstance(fields, generic.ArrayObject) and len(fields) > 4 * limits.max_signatures:
        raise TooComplex(f"{len(fields)} form fields: more than this service verifies")


def _lookup(obj: Any, *keys: str) -> Any:
    """``obj[k1][k2]...`` with references followed, None when a step is missing."""
    for key in keys:
        if not isinstance(obj, generic.DictionaryObject) or key not in obj:
            return None
        obj = obj[key]
    return obj


def _read_pdf(data: bytes, limits: Limits = DEFAULT_LIMITS) -> PdfFileReader:
    if b"%PDF-" not in data[:1024]:
        raise BadDocument("not a PDF (no %PDF- header)")
    try:
        reader = PdfFileReader(io.BytesIO(data), strict=False)
        encrypted = reader.encrypted
        if not encrypted:
            _check_pdf_limits(reader, limits)
        signatures = [] if encrypted else reader.embedded_signatures
    except BadDocument:
        raise
    except Exception as exc:  # any failure on untrusted bytes is the document's
        raise BadDocument(f"corrupt or unsupported PDF: {str(exc)[:200]}") from exc
    if len(signatures) > limits.max_signatures:
        raise TooComplex(f"{len(signatures)} signatures: more than the "
                         f"{limits.max_signatures} this service verifies")
    if encrypted:
        raise BadDocument("the PDF is encrypted; its seals cannot be checked")
    if not signatures:
        raise BadDocument("the PDF carries no seal, signature or document timestamp")
    return reader


def _strict_cert(der: bytes) -> asn1_x509.Certificate:
    """asn1crypto parses lazily, so a damaged entry would blow up deep inside path building;
    cryptography's strict DER parser refuses it here, where it is just not evidence."""
    x509.load_der_x509_certificate(der)
    cert = asn1_x509.Certificate.load(der)
    _ = cert.subject.hashable, cert.issuer.hashable  # names are decoded lazily too
    return cert


def _strict_ocsp(der: bytes) -> asn1_ocsp.OCSPResponse:
    x509_ocsp.load_der_ocsp_response(der)
    return asn1_ocsp.OCSPResponse.load(der)


def _strict_crl(der: bytes) -> asn1_crl.CertificateList:
    x509.load_der_x509_crl(der)
    return asn1_crl.CertificateList.load(der)


_MAX_DSS_ENTRY = 16 * 1024 * 1024


def _stream_bytes(stream: Any) -> bytes:
    """A DSS entry's decoded bytes, refusing a compression bomb: at most 16 MiB come out of
    FlateDecode (pyHanko's ``.data`` would inflate whatever it is given)."""
    filters = stream.get("/Filter")
    if filters is None:
        return bytes(stream.encoded_data[:_MAX_DSS_ENTRY + 1])
    names = [str(f) for f in filters] if isinstance(filters, list) else [str(filters)]
    if names != ["/FlateDecode"] or "/DecodeParms" in stream:
        return bytes(stream.data)  # rare for DSS entries; pyHanko decodes it
    inflater = zlib.decompressobj()
    out = inflater.decompress(stream.encoded_data, _MAX_DSS_ENTRY + 1)
    if len(out) > _MAX_DSS_ENTRY:
        raise ValueError("DSS entry inflates past 16 MiB")
    return out


def _pdf_embedded(reader: PdfFileReader) -> _Revinfo:
    """The DSS: certificates, OCSP responses and CRLs added for long-term validation."""
    out = _Revinfo()
    try:
        dss = reader.root["/DSS"]
    except KeyError:
        return out
    loaders: list[tuple[str, Callable[[bytes], Any], list[Any]]] = [
        ("/Certs", _strict_cert, out.certs),
        ("/OCSPs", _strict_ocsp, out.ocsps),
        ("/CRLs", _strict_crl, out.crls),
    ]
    for key, load, into in loaders:
        try:
            refs = list(dss.get(key, []))
        except (TypeError, ValueError):
            continue
        for ref in refs:
            try:
                into.append(load(_stream_bytes(ref.get_object())))
            except Exception:  # noqa: S112  (a broken entry is just not evidence)
                continue
    return out


def _archival(signer_info: cms.SignerInfo) -> _Revinfo:
    """Adobe's revocationInfoArchival signed attribute (older LTV PDFs)."""
    try:
        archive = find_unique_cms_attribute(signer_info["signed_attrs"],
                                            "adobe_revocation_info_archival")
        return _Revinfo(ocsps=[_strict_ocsp(o.dump()) for o in archive["ocsp"] or []],
                        crls=[_strict_crl(c.dump()) for c in archive["crl"] or []])
    except Exception:  # absent, repeated or malformed: no evidence from it
        return _Revinfo()


def _merge(*parts: _Revinfo) -> _Revinfo:
    return _Revinfo([c for p in parts for c in p.certs], [o for p in parts for o in p.ocsps],
                    [c for p in parts for c in p.crls])


def _integrity_pdf(v: _Verdict, sig: EmbeddedPdfSignature, policy: _BudgetedDiffPolicy) -> bool:
    """ByteRange digest, coverage and the difference analysis of later revisions."""
    try:
        sig.compute_integrity_info(diff_policy=policy)
        summary = sig.summarise_integrity_info()
    except _OutOfTime:
        v.fail("modifications", INDETERMINATE, "GENERIC",
               "the revisions after the seal could not all be analysed within the "
               "verification's time budget")
        return False
    except Exception as exc:  # pyHanko raises many things on hostile files
        v.fail("modifications", TOTAL_FAILED, "FORMAT_FAILURE",
               f"the revisions after the seal cannot be analysed: {str(exc)[:200]}")
        return False
    coverage: SignatureCoverageLevel = summary["coverage"]
    diff = summary["diff_result"]
    # pyHanko reports an unexplainable change as SuspiciousModification, i.e. level OTHER
    level = diff.modification_level if isinstance(diff, DiffResult) else \
        ModificationLevel.OTHER if diff is not None else None
    evidence = {"coverage": coverage.name, "modification_level": level.name if level else None,
                "docmdp_ok": summary["docmdp_ok"], "byte_range": list(sig.byte_range)}
    if coverage < SignatureCoverageLevel.ENTIRE_REVISION:
        v.fail("modifications", TOTAL_FAILED, "FORMAT_FAILURE",
               "the signature does not cover its whole revision", **evidence)
        return False
    if not summary["docmdp_ok"] or level is None or level == ModificationLevel.OTHER:
        reason = str(diff) if not isinstance(diff, DiffResult) else "content or structure"
        v.fail("modifications", TOTAL_FAILED, "FORMAT_FAILURE",
               f"the document was changed after sealing ({reason[:200]})", **evidence)
        return False
    detail = ("nothing added after sealing" if coverage == SignatureCoverageLevel.ENTIRE_FILE
              else f"later revisions only add allowed things ({level.name})")
    v.ok("modifications", detail, **evidence)
    return True


def _crypto(v: _Verdict, signer_info: cms.SignerInfo, cert: asn1_x509.Certificate,
            content_type: str, digest: bytes) -> bool:
    md = signer_info["digest_algorithm"]["algorithm"].native
    mechanism = signer_info["signature_algorithm"].signature_algo
    evidence = {"digest_algorithm": md, "signature_algorithm": mechanism}
    if md not in _DIGESTS:
        v.fail("integrity", INDETERMINATE, "CRYPTO_CONSTRAINTS_FAILURE",
               f"digest algorithm {md} is not accepted", **evidence)
        return False
    try:
        intact, valid = validate_sig_integrity(signer_info, cert, content_type, digest)
    except SignatureValidationError as exc:
        v.fail("signature", *_sub(exc), exc.failure_message, **evidence)
        return False
    if not intact:
        v.fail("integrity", TOTAL_FAILED, "HASH_FAILURE",
               "the signed digest does not match the document's bytes", **evidence)
        return False
    v.ok("integrity", "the signed digest matches the document's bytes", **evidence)
    if not valid:
        v.fail("signature", TOTAL_FAILED, "SIG_CRYPTO_FAILURE",
               "the signature value does not verify with the certificate's key", **evidence)
        return False
    v.ok("signature", "the signature value verifies", **evidence)
    return True


def _subfilter(sig: EmbeddedPdfSignature) -> str | None:
    value = sig.sig_object.get("/SubFilter")
    return str(value) if value is not None else None


async def _pdf_seal(session: _Session, sig: EmbeddedPdfSignature, embedded: _Revinfo,
                    *, doc_poe: datetime | None, has_dss: bool) -> SignatureReport:
    v = _Verdict()
    subfilter = _subfilter(sig)
    who: dict[str, Any] = {}
    claimed = None
    level: str | None = None
    poe: datetime | None = None
    if subfilter not in (_PADES, _PKCS7):
        v.fail("format", TOTAL_FAILED, "FORMAT_FAILURE", f"SubFilter {subfilter} is not a "
               "CMS signature this verifier supports")
        return _seal_report("seal", v, level, who, claimed, poe, sig.field_name)
    v.ok("format", "PAdES (ETSI.CAdES.detached)" if subfilter == _PADES
         else "adbe.pkcs7.detached (not PAdES)", subfilter=subfilter)
    try:
        cert = sig.signer_cert
        others = sig.other_embedded_certs
    except SignatureValidationError as exc:
        v.fail("signing-certificate", *_sub(exc), exc.failure_message)
        return _seal_report("seal", v, level, who, claimed, poe, sig.field_name)
    except (ValueError, KeyError, TypeError) as exc:
        v.fail("signing-certificate", INDETERMINATE, "NO_SIGNING_CERTIFICATE_FOUND",
               f"no readable signing certificate: {exc}")
        return _seal_report("seal", v, level, who, claimed, poe, sig.field_name)
    who = sealed_by(cert.dump())
    claimed = sig.self_reported_timestamp
    v.ok("signing-certificate", "the signing certificate is the one the seal names",
         certificate=_describe(cert))
    if _crypto(v, sig.signer_info, cert, "data", sig.compute_digest()):
        _integrity_pdf(v, sig, session.diff_policy)
    _check_eseal_profile(v, cert.dump())
    tokens = list(extract_tst_data_iter(sig.signer_info, signed=False))
    level = ("B-LTA" if doc_poe is not None else "B-LT" if has_dss else "B-T") if tokens \
        else "B-B"
    if subfilter != _PADES:
        level = None
    embedded = _merge(embedded, _archival(sig.signer_info))
    if v.failed:
        v.skip("certificate-path", "not checked: the seal itself failed")
        return _seal_report("seal", v, level, who, claimed, poe, sig.field_name)
    signature = sig.signer_info["signature"].native
    for signed_data in tokens:
        token = await _validate_token(
            session, signed_data,
            lambda alg: hashlib.new(alg, signature).digest(), embedded, poe=doc_poe)
        v.checks.append(_token_check("signature-timestamp", token))
        if token.verdict.passed and token.gen_time is not None:
            poe = token.gen_time if poe is None else min(poe, token.gen_time)
    await _validate_certificate(session, v, cert, others, embedded,
                                at=poe or session.now, poe=poe, what="")
    return _seal_report("seal", v, level, who, claimed, poe, sig.field_name)


async def _pdf_timestamp(session: _Session, sig: EmbeddedPdfSignature, embedded: _Revinfo,
                         *, poe: datetime | None) -> tuple[SignatureReport, datetime | None]:
    v = _Verdict()
    subfilter = _subfilter(sig)
    who: dict[str, Any] = {}
    if subfilter != _RFC3161:
        v.fail("format", TOTAL_FAILED, "FORMAT_FAILURE",
               f"SubFilter {subfilter} is not ETSI.RFC3161")
        return _seal_report("document-timestamp", v, None, who, None, None,
                            sig.field_name), None
    v.ok("format", "document timestamp (ETSI.RFC3161)", subfilter=subfilter)
    token = await _validate_token(session, sig.signed_data, sig.compute_digest, embedded,
                                  poe=poe)
    v.checks.extend(token.verdict.checks)
    v.worsen(token.verdict.indication, token.verdict.sub)
    if token.tsa is not None:
        who = sealed_by(token.tsa.dump())
    if not token.verdict.failed:
        _integrity_pdf(v, sig, session.diff_policy)
    gen = token.gen_time if v.passed else None
    return _seal_report("document-timestamp", v, "document-timestamp", who, token.gen_time,
                        gen, sig.field_name), gen


def _seal_report(kind: Literal["seal", "document-timestamp"], v: _Verdict, level: str | None,
                 who: Mapping[str, Any], claimed: datetime | None, poe: datetime | None,
                 field_name: str | None = None) -> SignatureReport:
    return SignatureReport(kind, v.indication, v.sub, level, who, claimed, poe,
                           tuple(v.checks), field_name)


async def _verify_pdf(session: _Session, data: bytes) -> Report:
    reader = _read_pdf(data, session.limits)
    signatures: list[EmbeddedPdfSignature] = reader.embedded_signatures
    embedded = _pdf_embedded(reader)
    has_dss = bool(embedded.ocsps or embedded.crls)
    stamps = [s for s in signatures if s.sig_object_type == "/DocTimeStamp"]
    by_sig: dict[int, SignatureReport] = {}
    valid_stamps: list[tuple[int, datetime]] = []  # (revision, genTime) of valid ones
    poe: datetime | None = None
    for stamp in reversed(stamps):  # a later document timestamp is the POE of earlier ones
        if time.monotonic() > session.deadline:
            by_sig[id(stamp)] = _out_of_time("document-timestamp", stamp, session)
            continue
        try:
            report, gen = await _pdf_timestamp(session, stamp, embedded, poe=poe)
        except Exception as exc:  # hostile bytes must give a report, not a server error
            report, gen = _unprocessable("document-timestamp", stamp, exc), None
        by_sig[id(stamp)] = report
        if gen is not None:
            valid_stamps.append((stamp.signed_revision, gen))
            poe = gen if poe is None else min(poe, gen)
    for sig in signatures:
        if id(sig) in by_sig:
            continue
        later = [g for r, g in valid_stamps if r > sig.signed_revision]
        if time.monotonic() > session.deadline:
            by_sig[id(sig)] = _out_of_time("seal", sig, session)
            continue
        try:
            by_sig[id(sig)] = await _pdf_seal(session, sig, embedded,
                                              doc_poe=min(later) if later else None,
                                              has_dss=has_dss)
        except Exception as exc:  # as above
            by_sig[id(sig)] = _unprocessable("seal", sig, exc)
    reports = [by_sig[id(s)] for s in signatures]
    return Report("pdf", *_worst(reports), reports, session.now)


def _out_of_time(kind: Literal["seal", "document-timestamp"], sig: EmbeddedPdfSignature,
                 session: _Session) -> SignatureReport:
    v = _Verdict()
    v.fail("format", INDETERMINATE, "GENERIC",
           f"not checked: the verification's time budget ({session.limits.time_budget:g} s) "
           "was used up before this signature")
    return _seal_report(kind, v, None, {}, None, None, sig.field_name)


def _unprocessable(kind: Literal["seal", "document-timestamp"], sig: EmbeddedPdfSignature,
                   exc: Exception) -> SignatureReport:
    # Hostile input, not a fault of ours: one line (the stack only at DEBUG).
    log.warning("signature %s could not be processed: %s: %s", sig.field_name,
                type(exc).__name__, str(exc)[:200])
    log.debug("signature %s could not be processed", sig.field_name, exc_info=exc)
    v = _Verdict()
    v.fail("format", TOTAL_FAILED, "FORMAT_FAILURE",
           f"the signature cannot be processed: {type(exc).__name__}: {str(exc)[:200]}")
    return _seal_report(kind, v, None, {}, None, None, sig.field_name)


# -- JAdES ---------------------------------------------------------------------------------------


def _jades_failure(exc: jades.InvalidSeal) -> tuple[str, str, str]:
    """verify_jws's message -> (check, indication, sub-indication)."""
    text = exc.detail
    if "signature does not verify" in text or "needs an EC key" in text \
            or "needs an RSA key" in text or "does not match curve" in text \
            or "wrong length" in text:
        return "signature", TOTAL_FAILED, "SIG_CRYPTO_FAILURE"
    if "does not match its sigD hash" in text:
        return "integrity", TOTAL_FAILED, "HASH_FAILURE"
    if "record is needed" in text or "not given" in text or "by name" in text:
        return "integrity", INDETERMINATE, "SIGNED_DATA_NOT_FOUND"
    if "x5t#S256" in text or "x5c" in text:
        return "signing-certificate", INDETERMINATE, "NO_SIGNING_CERTIFICATE_FOUND"
    return "format", TOTAL_FAILED, "FORMAT_FAILURE"


def _b64_der(value: Any) -> bytes:
    return base64.b64decode(value, validate=True)


def _etsi_u(jws: Mapping[str, Any]) -> tuple[list[bytes], _Revinfo, list[str]]:
    """sigTst tokens, xVals/rVals and the names of the etsiU elements (clear or base64url)."""
    header = jws.get("header") or {}
    items = header.get(jades.ETSI_U, []) if isinstance(header, dict) else []
    if not isinstance(items, list):
        raise ValueError("etsiU must be an array")
    tokens: list[bytes] = []
    revinfo = _Revinfo()
    names: list[str] = []
    for item in items:
        if isinstance(item, str):
            item = json.loads(base64.urlsafe_b64decode(item + "=" * (-len(item) % 4)))
        if not isinstance(item, dict) or len(item) != 1:
            raise ValueError("each etsiU element must be an object with one member")
        ((key, value),) = item.items()
        names.append(key)
        if key == "sigTst":
            tokens.extend(_b64_der(t["val"]) for t in value["tstTokens"])
        elif key == "xVals":
            revinfo.certs.extend(_strict_cert(_b64_der(x["x509Cert"]["val"])) for x in value)
        elif key == "rVals":
            revinfo.ocsps.extend(_strict_ocsp(_b64_der(o["val"]))
                                 for o in value.get("ocspVals", []))
            revinfo.crls.extend(_strict_crl(_b64_der(c["val"]))
                                for c in value.get("crlVals", []))
    return tokens, revinfo, names


def _protected(jws: Mapping[str, Any]) -> dict[str, Any]:
    raw = jws.get("protected")
    if not isinstance(raw, str):
        raise ValueError("no protected header")
    header = jades.parse_record(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
    if not isinstance(header, dict):
        raise ValueError("the protected header is not an object")
    return header


async def _verify_jades(session: _Session, jws: Mapping[str, Any],
                        detached: Mapping[str, bytes] | bytes | None) -> Report:
    v = _Verdict()
    who: dict[str, Any] = {}
    claimed = poe = None
    level: str | None = None

    def done() -> Report:
        report = _seal_report("seal", v, level, who, claimed, poe)
        return Report("jades", report.indication, report.sub_indication, [report],
                      session.now)

    try:
        header = _protected(jws)
    except (ValueError, TypeError, binascii.Error, SigningError) as exc:
        v.fail("format", TOTAL_FAILED, "FORMAT_FAILURE", f"unreadable protected header: {exc}")
        return done()
    alg = header.get("alg")
    if not isinstance(alg, str) or alg.lower() == "none" or alg.upper().startswith("HS"):
        v.fail("format", TOTAL_FAILED, "FORMAT_FAILURE",
               f"alg {alg!r} is not a signature (no key identifies the sealer); JAdES "
               "allows asymmetric algorithms only", alg=alg)
        return done()
    try:
        leaf_der = _b64_der(header["x5c"][0])
        leaf = asn1_x509.Certificate.load(leaf_der)
        x5c_others = [asn1_x509.Certificate.load(_b64_der(c)) for c in header["x5c"][1:]]
        who = sealed_by(leaf_der)
    except (KeyError, IndexError, TypeError, ValueError, binascii.Error) as exc:
        v.fail("signing-certificate", INDETERMINATE, "NO_SIGNING_CERTIFICATE_FOUND",
               f"no readable x5c: {exc}")
        return done()
    try:
        tokens, embedded, names = _etsi_u(jws)
    except (ValueError, TypeError, KeyError, binascii.Error, RecursionError) as exc:
        v.fail("format", TOTAL_FAILED, "FORMAT_FAILURE", f"malformed etsiU: {exc}")
        return done()
    level = "B-B"
    if "sigTst" in names:
        level = "B-LT" if {"xVals", "rVals"} & set(names) else "B-T"
        if "arcTst" in names:
            level = "B-LTA"
    if isinstance(detached, Mapping):
        detached = {k: _canonical(d) for k, d in detached.items()}
    elif detached is not None:
        detached = _canonical(detached)
    unsigned = {k: val for k, val in jws.items() if k != "header"}
    try:
        # Signature, alg, crit, x5t#S256, sigD: trust and time are checked below.
        valid_from = x509.load_der_x509_certificate(leaf_der).not_valid_before_utc
        verified = jades.verify_jws(unsigned, [leaf_der], detached=detached, at=valid_from)
    except jades.InvalidSeal as exc:
        check, indication, sub = _jades_failure(exc)
        v.fail(check, indication, sub, exc.detail, alg=alg)
        return done()
    claimed = verified.signing_time
    v.ok("format", f"JAdES {level}, JWS JSON flattened serialization", alg=alg,
         etsiU=names, detached=list(verified.detached_names))
    v.ok("signing-certificate", "x5t#S256 names x5c[0]", certificate=_describe(leaf))
    digest = hashlib.sha256(verified.payload).hexdigest() if verified.payload else None
    v.ok("signature", f"{alg} signature verifies over the protected header and payload",
         payload_sha256=digest)
    _check_eseal_profile(v, leaf_der)
    if "arcTst" in names:
        v.skip("archive-timestamp", "archive timestamps are not evaluated")
    signature = jws["signature"].encode("ascii")
    for der in tokens:
        try:
            token = await _validate_token(
                session, cms.ContentInfo.load(der)["content"],
                lambda a: hashlib.new(a, signature).digest(), embedded, poe=None)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            v.checks.append(Check("signature-timestamp", False,
                                  f"unreadable timestamp token: {exc}"))
            continue
        v.checks.append(_token_check("signature-timestamp", token))
        if token.verdict.passed and token.gen_time is not None:
            poe = token.gen_time if poe is None else min(poe, token.gen_time)
    if v.failed:
        return done()
    await _validate_certificate(session, v, leaf, x5c_others, embedded,
                                at=poe or session.now, poe=poe, what="")
    return done()


def _check_json_nesting(data: bytes, limit: int) -> None:
    """Refuse JSON nested deeper than ``limit`` before any parser recurses into it (brackets
    inside strings are skipped)."""
    depth = deepest = 0
    in_string = escaped = False
    for byte in data:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > limit:
                    raise TooComplex(f"JSON nested deeper than {limit} levels")
        elif byte in (0x5D, 0x7D):
            depth -= 1


def _canonical(data: bytes) -> bytes:
    """The JCS form a sigD hash covers; bytes that are not a record stay as they are."""
    try:
        return jades.canonicalize(data)
    except SigningError:
        return data


# -- entry points --------------------------------------------------------------------------------


def verify_pdf(data: bytes, anchors: AnchorSet, *, fetch: Fetch = default_fetch,
               now: datetime | None = None, allow_online: bool = True,
               limits: Limits = DEFAULT_LIMITS) -> Report:
    """Every seal and document timestamp of a PDF (see the module doc). Raises
    :class:`BadDocument` for something that is not a readable, signed PDF, and
    :class:`TooComplex` for one beyond ``limits``."""
    session = _Session(anchors, fetch, now, allow_online, limits)
    try:
        return asyncio.run(_verify_pdf(session, data))
    except (SigningError, RecursionError):
        raise
    except Exception as exc:  # the file's structure, outside any one signature's report
        log.info("unreadable PDF: %s: %s", type(exc).__name__, str(exc)[:200])
        raise BadDocument(f"corrupt or unsupported PDF: {str(exc)[:200]}") from None


def verify_jades(data: bytes | Mapping[str, Any], anchors: AnchorSet, *,
                 detached_payload: Mapping[str, bytes] | bytes | None = None,
                 fetch: Fetch = default_fetch, now: datetime | None = None,
                 allow_online: bool = True, limits: Limits = DEFAULT_LIMITS) -> Report:
    """A JAdES seal (JWS JSON flattened serialization): its signature, timestamps, path and
    revocation. ``detached_payload``: the record(s) a ``sigD`` seal covers, by name or alone.
    Raises :class:`BadDocument` when ``data`` is not a JWS at all."""
    if isinstance(data, bytes | bytearray):
        _check_json_nesting(bytes(data), limits.max_nesting)
    jws = jades.parse_record(bytes(data)) if isinstance(data, bytes | bytearray) else data
    if not isinstance(jws, Mapping) or "protected" not in jws or "signature" not in jws:
        raise BadDocument("not a JAdES seal (a JWS JSON flattened serialization: an object "
                          "with protected and signature)")
    session = _Session(anchors, fetch, now, allow_online, limits)
    try:
        return asyncio.run(_verify_jades(session, jws, detached_payload))
    except (SigningError, RecursionError):
        raise
    except Exception as exc:  # a shape no check above expected: the seal's, not ours
        log.info("unreadable JAdES seal: %s: %s", type(exc).__name__, str(exc)[:200])
        raise BadDocument(f"malformed JAdES seal: {str(exc)[:200]}") from None


def verify(data: bytes, anchors: AnchorSet, *,
           detached_payload: Mapping[str, bytes] | bytes | None = None,
           fetch: Fetch = default_fetch, now: datetime | None = None,
           allow_online: bool = True, limits: Limits = DEFAULT_LIMITS) -> Report:
    """A PDF (``%PDF-`` in the first KiB) or a JAdES JSON seal; anything else is
    :class:`BadDocument`. ``detached_payload`` only applies to JSON seals."""
    try:
        if b"%PDF-" in data[:1024]:
            return verify_pdf(data, anchors, fetch=fetch, now=now, allow_online=allow_online,
                              limits=limits)
        if data.lstrip()[:1] == b"{":
            return verify_jades(data, anchors, detached_payload=detached_payload, fetch=fetch,
                                now=now, allow_online=allow_online, limits=limits)
    except RecursionError:  # a structure nested or looped past what the parsers follow
        raise TooComplex("the document's structure is nested too deeply or loops") from None
    raise BadDocument("neither a PDF nor a JSON seal")
