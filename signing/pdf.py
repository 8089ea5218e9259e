"""PAdES sealing (ETSI EN 319 142-1 baseline B-B, B-T, B-LT, B-LTA) through pyHanko.

The PDF is processed in memory and never stored; callers audit the digests in
:class:`SealResult`. Every seal is an incremental update, so earlier signatures and document
timestamps stay valid. What pyHanko would otherwise repeat per document is done once: the
signer (certificates parsed, key found) is cached by :func:`signing.keys.signer_for`, the
signature reserve is computed from the certificate and token sizes instead of a trial CMS
(pyHanko's estimate costs ~20 ms a document), and the stamp's font subset is cached.

Revocation data never comes from the network here: the certificates carry the public base URL
in AIA/CDP, which need not be reachable from the sealing host (nor in tests). It is built
in-process from :mod:`ca.status` (:func:`validation_material`) and handed to pyHanko.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import logging
import math
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cached_property
from typing import Any

from asn1crypto import crl as asn1_crl
from asn1crypto import ocsp as asn1_ocsp
from asn1crypto import x509 as asn1_x509
from pyhanko.pdf_utils.incremental_writer import IncrementalPdfFileWriter
from pyhanko.pdf_utils.misc import PdfError
from pyhanko.pdf_utils.reader import PdfFileReader
from pyhanko.sign import fields, signers
from pyhanko.sign.general import SigningError as PyHankoSigningError
from pyhanko.sign.signers.pdf_cms import PdfCMSSignedAttributes
from pyhanko.sign.timestamps import TimeStamper
from pyhanko.sign.timestamps.common_utils import TimestampRequestError
from pyhanko_certvalidator import ValidationContext

from ca import status
from ca.status import Credential
from hsm.api import KeyManager
from hsm.errors import HsmError
from signing.errors import BadDocument, SigningError, TooLarge, Unavailable
from signing.keys import HsmSigner, signer_for
from signing.stamp import KakuinStampStyle, stamp_time

__all__ = [
    "DEFAULT_MAX_BYTES",
    "LEVELS",
    "SealOptions",
    "SealResult",
    "ValidationMaterial",
    "needs_renewal",
    "renew_lta",
    "seal_pdf",
    "validation_material",
]



class _FetchingOffIsIntended(logging.Filter):
    """pyHanko warns on every B-LT seal that fetching is off; here that is the design."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "fetching is not allowed" not in record.getMessage()


logging.getLogger("pyhanko.sign.signers.pdf_signer").addFilter(_FetchingOffIsIntended())

LEVELS = ("B-B", "B-T", "B-LT", "B-LTA")
#: Upload limit unless the deployment sets one (documents are held in memory).
DEFAULT_MAX_BYTES = 20 * 1024 * 1024
SEAL_FIELD_PREFIX = "kakuin-seal-"
TIMESTAMP_FIELD_PREFIX = "kakuin-timestamp-"
#: Default stamp side (pt, about 42 mm) and its distance from the page's top right corner.
STAMP_SIZE = 120.0
STAMP_MARGIN = 36.0
MIN_STAMP_SIDE = 36.0  # half an inch: below that neither the name nor the QR code is legible
MAX_COORDINATE = 14_400.0  # PDF user space limit (ISO 32000-1 C.2: 200 in)
MAX_PAGES = 1_000_000
MAX_FIELD_NAME = 64  # also the audit entry's object id: checked before signing
MAX_TEXT = 500  # reason, location
# CMS bytes beyond certificates, signature and token: signed attributes (content type, digest,
# ESS signing-certificate-v2: ~200 bytes), signer info, algorithm identifiers, tags. Generous.
_CMS_OVERHEAD = 2048
_TOKEN_SLACK = 1024  # a token's length varies with its serial, time and nonce


def _plain(text: str) -> bool:
    """No control characters (C0, C1) and no lone surrogates: text a PDF and the audit log
    can carry as it is."""
    return not any(unicodedata.category(c) in ("Cc", "Cs") for c in text)


@dataclass(frozen=True)
class SealOptions:
    """How to seal. ``page`` is 1-based (the first page is 1; -1 is the last page);
    ``box`` is (x1, y1, x2, y2) in PDF points from the page's lower left corner.

    The seal goes into ``field`` if the document has an empty signature field of that name
    (drawn if that field has an area, whatever ``visible`` says), else into a new field:
    visible at ``box`` (default: a ``STAMP_SIZE`` square in the top right corner of
    ``page``), or invisible. ``verify_url`` is printed on the stamp and in its QR code.
    """

    level: str = "B-LTA"
    visible: bool = True
    page: int = 1
    box: tuple[float, float, float, float] | None = None
    field: str | None = None
    reason: str | None = None
    location: str | None = None
    verify_url: str | None = None

    def __post_init__(self) -> None:
        """Everything is checked here, before any HSM signature: a value that could not be
        drawn, stored or audited afterwards must be refused now (a 4xx, nothing signed)."""
        if self.level not in LEVELS:
            raise SigningError(f"level must be one of {', '.join(LEVELS)}, "
                               f"not {self.level[:20]!r}")
        if self.page == 0 or abs(self.page) > MAX_PAGES:
            raise SigningError("pages are numbered from 1 (or from -1 for the last page)")
        if self.box is not None:
            if len(self.box) != 4 or not all(
                    math.isfinite(v) and abs(v) <= MAX_COORDINATE for v in self.box):
                raise SigningError(f"box must be four finite numbers within ±{MAX_COORDINATE:g}")
            x1, y1, x2, y2 = self.box
            if not (x2 - x1 >= MIN_STAMP_SIDE and y2 - y1 >= MIN_STAMP_SIDE):
                raise SigningError("box must be (x1, y1, x2, y2) with x2 > x1 and y2 > y1, "
                                   f"each side at least {MIN_STAMP_SIDE:g} pt (a legible seal)")
        if self.field is not None and (
                not self.field or "." in self.field or len(self.field) > MAX_FIELD_NAME
                or not _plain(self.field)):
            raise SigningError(f"field must be a printable name of 1 to {MAX_FIELD_NAME} "
                               "characters without '.'")
        for name in ("reason", "location"):
            value = getattr(self, name)
            if value is not None and (len(value) > MAX_TEXT or not _plain(value)):
                raise SigningError(f"{name} must be printable text of at most {MAX_TEXT} "
                                   "characters")


@dataclass(frozen=True)
class SealResult:
    """The sealed PDF and what an audit entry keeps of it: digests, never content."""

    pdf: bytes = field(repr=False)
    input_sha256: str
    output_sha256: str
    level: str
    signing_time: datetime
    field_name: str
    # The transparency receipt (salt, commitment) once the seal event is recorded.
    receipt: dict[str, str] | None = None


@dataclass(frozen=True)
class ValidationMaterial:
    """Trust anchors, intermediates and revocation data (DER) for long-term validation.

    OCSP responses and CRLs expire, so don't keep one past :attr:`fresh_until`.
    """

    trust_roots: tuple[bytes, ...]
    certificates: tuple[bytes, ...] = ()
    ocsps: tuple[bytes, ...] = ()
    crls: tuple[bytes, ...] = ()

    @cached_property
    def _parsed(self) -> tuple[list[Any], list[Any], list[Any], list[Any]]:
        return (
            [asn1_x509.Certificate.load(d) for d in self.trust_roots],
            [asn1_x509.Certificate.load(d) for d in self.certificates],
            [asn1_ocsp.OCSPResponse.load(d) for d in self.ocsps],
            [asn1_crl.CertificateList.load(d) for d in self.crls],
        )

    def context(self, moment: datetime | None = None) -> ValidationContext:
        """A fresh pyHanko validation context that never fetches (it gathers state, so one
        per operation)."""
        roots, certs, ocsps, crls = self._parsed
        return ValidationContext(
            trust_roots=roots,
            other_certs=certs,
            ocsps=ocsps,
            crls=crls,
            allow_fetching=False,
            moment=moment,
        )

    @cached_property
    def fresh_until(self) -> datetime | None:
        """The earliest nextUpdate among the OCSP responses and CRLs."""
        _, _, ocsps, crls = self._parsed
        times = [c["tbs_cert_list"]["next_update"].native for c in crls]
        for resp in ocsps:
            for single in resp.basic_ocsp_response["tbs_response_data"]["responses"]:
                times.append(single["next_update"].native)
        times = [t for t in times if t is not None]
        return min(times) if times else None


def validation_material(
    store: Any,
    keys: KeyManager,
    credential: Credential | None = None,
    *,
    crl_issuers: Sequence[str] = (),
    timestamping: bool = True,
    leaves: Iterable[bytes] = (),
) -> ValidationMaterial:
    """Everything a B-LT/B-LTA validator needs, made in-process from :mod:`ca.status`.

    OCSP responses for ``credential``'s certificate, the TSA's (``timestamping``) and any
    other ``leaves`` of the same issuing CA (e.g. an older TSA certificate of a document being
    renewed); the CRLs of that CA and of ``crl_issuers`` (pass the root's name: its CRL
    covers the issuing CA certificate); the certificates up to the root.
    """
    tsa = status.tsa_credential(store) if timestamping else None
    creds = [c for c in (credential, tsa) if c is not None]
    if not creds:
        raise ValueError("give a credential or timestamping=True")
    if len(creds[0].chain) < 2:
        raise Unavailable(f"no issuer certificate for {creds[0].serial} in the store")
    issuer_name, issuing = creds[0].issuer_name, creds[0].chain[1]
    roots: list[bytes] = []
    others: list[bytes] = []
    for der in sorted({*status.ca_chain(store), *(d for c in creds for d in c.chain[1:])}):
        is_root = asn1_x509.Certificate.load(der).self_signed != "no"
        (roots if is_root else others).append(der)
    subjects = dict.fromkeys([*(c.certificate for c in creds), *leaves])
    try:
        ocsps = [status.ocsp_response_der(store, keys, issuer_name, s, issuing) for s in subjects]
    except (status.CAError, HsmError) as exc:
        raise Unavailable(f"no OCSP response for long-term validation: {exc}") from exc
    crls = []
    for name in dict.fromkeys((issuer_name, *crl_issuers)):
        crl = status.crl_der(store, name)
        if crl is not None:
            crls.append(crl)
    return ValidationMaterial(tuple(roots), tuple(others), tuple(ocsps), tuple(crls))


# --- reading -------------------------------------------------------------------------------


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _open(pdf: bytes, max_bytes: int | None) -> PdfFileReader:
    """Parse an upload, or say clearly why it can't be sealed."""
    if max_bytes is not None and len(pdf) > max_bytes:
        raise TooLarge(f"the document is {len(pdf)} bytes; the limit is {max_bytes}")
    # ISO 32000 lets the header start anywhere in the first 1024 bytes
    if b"%PDF-" not in pdf[:1024]:
        raise BadDocument("not a PDF (no %PDF- header)")
    try:
        reader = PdfFileReader(io.BytesIO(pdf), strict=True)
        encrypted = reader.encrypted
        if not encrypted:
            pages = reader.root["/Pages"]
            int(pages["/Count"])
    except Exception as exc:  # any failure on untrusted bytes is the document's
        raise BadDocument(f"corrupt or unsupported PDF: {_reason(exc)}") from exc
    if encrypted:
        raise BadDocument(
            "the PDF is encrypted (password protected); remove the encryption and seal again"
        )
    return reader


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:200]


def _page_count(reader: PdfFileReader) -> int:
    return int(reader.root["/Pages"]["/Count"])


def _page_index(reader: PdfFileReader, page: int) -> int:
    count = _page_count(reader)
    if not (1 <= page <= count or -count <= page <= -1):
        raise BadDocument(f"page {page} does not exist; the document has {count} page(s)")
    return page - 1 if page > 0 else count + page


def _page_box(reader: PdfFileReader, index: int) -> tuple[float, float, float, float]:
    """The page's visible area (CropBox, else MediaBox, both inheritable)."""
    page_ref, _ = reader.find_page_for_modification(index)
    node = page_ref.get_object()
    for key in ("/CropBox", "/MediaBox"):
        current = node
        while current is not None:
            if key in current:
                x1, y1, x2, y2 = (float(v) for v in current[key])
                return min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2)
            parent = current.get("/Parent")
            current = parent.get_object() if parent is not None else None
    return 0.0, 0.0, 595.28, 841.89  # A4, when the file doesn't say


def _field_names(reader: PdfFileReader) -> dict[str, bool]:
    """Signature field name -> already filled."""
    return {
        name: value is not None
        for name, value, _ in fields.enumerate_sig_fields(reader, filled_status=None)
    }


def _free_name(taken: Iterable[str], prefix: str) -> str:
    used = set(taken)
    n = 1
    while f"{prefix}{n}" in used:
        n += 1
    return f"{prefix}{n}"


# --- sealing -------------------------------------------------------------------------------


async def _reserve(signer: HsmSigner, timestamper: TimeStamper | None) -> int:
    """Bytes to reserve for the CMS (hex: twice its DER length), sized from what it holds:
    certificates, signature, token. Safe because every part has a known maximum."""
    size = sum(len(c) for c in signer.credential.chain) + signer.max_signature + _CMS_OVERHEAD
    if timestamper is not None:
        token = await timestamper.async_dummy_response(signer.hash.value)  # cached by pyHanko
        size += len(token.dump()) + _TOKEN_SLACK
    return 2 * size


def seal_pdf(
    pdf: bytes,
    credential: Credential,
    keys: KeyManager,
    *,
    timestamper: TimeStamper | None = None,
    validation: ValidationMaterial | None = None,
    options: SealOptions | None = None,
    max_bytes: int | None = DEFAULT_MAX_BYTES,
) -> SealResult:
    """Seal ``pdf`` with ``credential``'s HSM key at ``options.level``.

    B-T and up need ``timestamper`` (kakuin's :class:`signing.tsa.LocalTimeStamper`);
    B-LT and B-LTA need ``validation`` (:func:`validation_material`). Raises
    :class:`TooLarge`, :class:`BadDocument` (not a PDF, corrupt, encrypted, no such page,
    field already signed, changes forbidden by a certification signature) or
    :class:`Unavailable` (HSM, TSA or our own revocation data failing).
    """
    options = options or SealOptions()
    level = options.level
    if level != "B-B" and timestamper is None:
        raise SigningError(f"{level} needs a timestamper")
    if level in ("B-LT", "B-LTA") and validation is None:
        raise SigningError(f"{level} needs validation material")
    reader = _open(pdf, max_bytes)
    try:
        signer = signer_for(keys, credential)
    except (HsmError, ValueError) as exc:
        raise Unavailable(f"the seal's HSM key: {exc}") from exc
    try:
        return asyncio.run(_seal(pdf, reader, signer, timestamper, validation, options))
    except SigningError:
        raise
    except (HsmError, TimestampRequestError) as exc:
        raise Unavailable(f"{type(exc).__name__}: {_reason(exc)}") from exc
    except PyHankoSigningError as exc:
        raise _signing_problem(exc) from exc
    except (PdfError, KeyError, IndexError, TypeError, ValueError, ArithmeticError,
            RecursionError) as exc:
        # Hostile structure or geometry (e.g. an existing field with a 0.0001 pt /Rect makes
        # pyHanko divide by zero): found while preparing, before anything is signed.
        raise BadDocument(f"cannot seal this PDF: {_reason(exc)}") from exc


def _signing_problem(exc: PyHankoSigningError) -> SigningError:
    text = _reason(exc)
    if "could not be validated" in text or "timestamp" in text.lower():
        return Unavailable(f"long-term validation data: {text}")
    return BadDocument(f"cannot seal this PDF: {text}")


async def _seal(
    pdf: bytes,
    reader: PdfFileReader,
    signer: HsmSigner,
    timestamper: TimeStamper | None,
    validation: ValidationMaterial | None,
    options: SealOptions,
) -> SealResult:
    level = options.level
    credential = signer.credential
    existing = _field_names(reader)
    name = options.field or _free_name(existing, SEAL_FIELD_PREFIX)
    if existing.get(name):
        raise BadDocument(f"signature field {name!r} is already signed")
    spec = None
    if name not in existing:
        box = None
        index = _page_index(reader, options.page)
        if options.visible:
            box = options.box or _default_box(_page_box(reader, index))
        spec = fields.SigFieldSpec(sig_field_name=name, on_page=index, box=box)  # type: ignore[arg-type]
    long_term = level in ("B-LT", "B-LTA")
    context = validation.context() if long_term and validation is not None else None
    meta = signers.PdfSignatureMetadata(
        field_name=name,
        subfilter=fields.SigSeedSubFilter.PADES,
        reason=options.reason,
        location=options.location,
        embed_validation_info=long_term,
        use_pades_lta=level == "B-LTA",
        timestamp_field_name=_free_name(existing, TIMESTAMP_FIELD_PREFIX) if long_term else None,
        validation_context=context,
    )
    # Drawn only into a widget with an area: always ours, also in an existing visible field.
    style = KakuinStampStyle(
        organization_name=credential.organization_name or "",
        verify_url=options.verify_url or "",
    )
    stamper = timestamper if level != "B-B" else None
    pdf_signer = signers.PdfSigner(
        meta, signer, timestamper=stamper, stamp_style=style, new_field_spec=spec
    )
    writer = IncrementalPdfFileWriter.from_reader(reader)
    now = datetime.now(UTC)
    session = pdf_signer.init_signing_session(writer, existing_fields_only=spec is None)
    session.system_time = now  # one time for the CMS, the /M entry and the stamp
    info = await session.perform_presign_validation(writer)
    tbs = session.prepare_tbs_document(
        validation_info=info,
        bytes_reserved=await _reserve(signer, stamper),
        appearance_text_params={"ts": stamp_time(now)},
    )
    buffer = io.BytesIO()
    prepared, output = tbs.digest_tbs_document(output=buffer)
    post = await tbs.perform_signature(
        prepared.document_digest, PdfCMSSignedAttributes(signing_time=now)
    )
    await post.post_signature_processing(output)
    sealed = buffer.getvalue()
    return SealResult(sealed, _digest(pdf), _digest(sealed), level, now, name)


def _default_box(page: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
    """Top right, where a 角印 goes on Japanese forms (over the issuer's name)."""
    x1, y1, x2, y2 = page
    side = min(STAMP_SIZE, (x2 - x1) / 2, (y2 - y1) / 2)
    margin = min(STAMP_MARGIN, (x2 - x1) / 8, (y2 - y1) / 8)
    return (x2 - margin - side, y2 - margin - side, x2 - margin, y2 - margin)


# --- B-LTA upkeep --------------------------------------------------------------------------


def renew_lta(
    pdf: bytes,
    *,
    timestamper: TimeStamper,
    validation: ValidationMaterial,
    max_bytes: int | None = None,
) -> bytes:
    """Extend a B-LTA document's life: validation data for its last document timestamp goes
    into the DSS, then a new document timestamp covers everything (pyHanko's archival
    timestamp chain update). Pass ``validation`` with the old timestamp's TSA certificate
    among its ``leaves`` if kakuin's TSA certificate changed since."""
    reader = _open(pdf, max_bytes)
    if not reader.embedded_timestamp_signatures:
        raise BadDocument("the PDF has no document timestamp (it is not B-LTA)")
    names = _field_names(reader)
    stamper = signers.PdfTimeStamper(
        timestamper, field_name=_free_name(names, TIMESTAMP_FIELD_PREFIX)
    )
    output = io.BytesIO()
    try:
        asyncio.run(
            stamper.async_update_archival_timestamp_chain(
                reader, validation.context(), in_place=False, output=output
            )
        )
    except (HsmError, TimestampRequestError) as exc:
        raise Unavailable(f"{type(exc).__name__}: {_reason(exc)}") from exc
    except PyHankoSigningError as exc:
        raise _signing_problem(exc) from exc
    except (PdfError, KeyError, IndexError, TypeError, ValueError) as exc:
        raise BadDocument(f"cannot renew this PDF: {_reason(exc)}") from exc
    return output.getvalue()


def last_timestamp_expiry(pdf: bytes, max_bytes: int | None = None) -> datetime | None:
    """When the certificate of the TSA that made the last document timestamp expires
    (None: no document timestamp)."""
    reader = _open(pdf, max_bytes)
    stamps = reader.embedded_timestamp_signatures
    if not stamps:
        return None
    cert = stamps[-1].signer_cert
    expiry: datetime = cert["tbs_certificate"]["validity"]["not_after"].native
    return expiry


def needs_renewal(
    pdf: bytes, within: timedelta, *, now: datetime | None = None, max_bytes: int | None = None
) -> bool:
    """True when the last document timestamp's TSA certificate expires within ``within``:
    after that the timestamp no longer proves anything, so re-timestamp before it."""
    expiry = last_timestamp_expiry(pdf, max_bytes)
    return expiry is not None and expiry - (now or datetime.now(UTC)) <= within
