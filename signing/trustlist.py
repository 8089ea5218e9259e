"""Trust lists: the CAs this instance vouches for, signed, plus the other regions' lists it
imports (loosely ETSI TS 119 612, in JSON).

Why: trust stops at a region's border. A school in Sapporo can check a record sealed in
Kisarazu only if it knows which CAs to trust; each kakuin instance therefore publishes the CAs
it operates as a signed list (``GET /trust-list``), its operator imports the lists of the
regions it accepts (``kakuin trust import URL|FILE --pin SHA256``), and verification trusts
exactly the anchors on the resulting list: no OS or browser store, nothing implicit.

Document (``schema`` "kakuin-trust-list/1")::

    {"schema", "issuer": {"name", "region", "base_url"}, "sequence", "issued_at",
     "next_update", "signers": [SHA-256 hex of the signer certificates, signing one first],
     "services": [SERVICE, ...],
     "imported": [{"name", "source_url", "pinned_signer_sha256", "sequence", "issuer",
                   "services": [SERVICE, ...]}, ...]}
    SERVICE = {"name", "type": "root-ca" | "issuing-ca" | "tsa", "certificate": base64 DER,
               "sha256", "not_before", "not_after", "status": "granted" | "withdrawn",
               "ocsp"?, "crl"?}

Times are RFC 3339 UTC seconds ("2026-11-24T09:00:00Z"). ``ocsp``/``crl`` say where the status
of certificates *issued by* that CA is published (TSL ServiceSupplyPoints); a TSA has neither.
``sequence`` strictly increases per issuer (Unix time of signing, or the previous one + 1), so
an importer can refuse an older list replayed to undo a withdrawal. ``next_update`` is seven
days after issue: a list past it is stale, neither imported nor used for anchors.

Signature: JAdES B-B, JWS JSON flattened serialization, attached payload = the RFC 8785 form
of the document (``signing.jades.seal_json``), by a certificate with EKU id-tsl-kp-tslSigning
(0.4.0.2231.3.0, ETSI TS 119 612), so no document e-seal can pass for a list signature. JAdES
rather than CMS: the document is JSON, and any JOSE library checks it with the key of x5c[0].

Import: the first import of a list needs the SHA-256 of its signer certificate, obtained out of
band like a root fingerprint. Refused: another signer, a bad signature, a wrong schema, a stale
list, one issued in the future, a lower sequence than the stored one of the same issuer (the
same sequence with other content too: equivocation). A re-import without ``pin`` accepts the
stored pin or a signer announced in ``signers`` of the stored, verified list, and moves the pin
to it: that is how a renewed signer certificate reaches importers without a new exchange.
Stored as ``HOME/trust/imported/<name>.json`` (raw JWS + pin; re-verified on every load), our
own signed list as ``HOME/trust/published.json``: files, so sealing stays free of DB writes.

Anchors (``anchors``): granted ``root-ca`` services of our ``services`` and of every
``imported`` entry are roots, granted ``issuing-ca`` services intermediates; withdrawn
certificates are listed so a verifier refuses paths through them (an issuing CA sits in x5c,
so leaving it out of the intermediates alone would not stop it). Not transitive: an imported
list's own ``imported`` section is ignored; we vouch only for regions our operator chose.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import dataclasses
import fcntl
import hashlib
import json
import logging
import os
import re
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.x509.oid import NameOID

from ca.status import Credential
from hsm.api import KeyManager
from signing import fetch as outbound
from signing import jades
from signing.errors import SigningError

__all__ = [
    "MAX_LIST_BYTES",
    "MEDIA_TYPE",
    "NEXT_UPDATE",
    "SCHEMA",
    "TSL_SIGNING_EKU",
    "Anchors",
    "ImportedList",
    "TrustList",
    "TrustListError",
    "anchors",
    "build_trust_list",
    "current_trust_list",
    "fetch_list",
    "import_trust_list",
    "load_imported",
    "local_services",
    "refresh_imported",
    "remove_imported",
    "sign_trust_list",
    "verify_trust_list",
]

log = logging.getLogger(__name__)

SCHEMA = "kakuin-trust-list/1"
MEDIA_TYPE = "application/jose+json"
TSL_SIGNING_EKU = x509.ObjectIdentifier("0.4.0.2231.3.0")
NEXT_UPDATE = timedelta(days=7)
MAX_LIST_BYTES = 4 * 1024 * 1024
MAX_SERVICES = 1000
CLOCK_SKEW = timedelta(minutes=5)
SERVICE_TYPES = ("root-ca", "issuing-ca", "tsa")
STATUSES = ("granted", "withdrawn")
_VOLATILE = ("sequence", "issued_at", "next_update")
_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_TIME = "%Y-%m-%dT%H:%M:%SZ"

#: URL -> the bytes found there (at most MAX_LIST_BYTES + 1 read).
Fetch = Callable[[str], bytes]


class TrustListError(SigningError):
    status = 422
    type = "signing/trust-list"
    title = "Trust list refused"


@dataclass(frozen=True)
class TrustList:
    """A trust list whose signature, signer and schema were checked."""

    document: dict[str, Any]
    jws: dict[str, Any]
    signer_sha256: str

    @property
    def sequence(self) -> int:
        return int(self.document["sequence"])

    @property
    def issuer_url(self) -> str:
        return str(self.document["issuer"]["base_url"])

    @property
    def next_update(self) -> datetime:
        return _parse_time(self.document["next_update"], "next_update")


@dataclass(frozen=True)
class ImportedList:
    name: str
    source_url: str
    pinned_signer_sha256: str
    trust_list: TrustList

    def entry(self) -> dict[str, Any]:
        """This import as an ``imported`` member of our own list."""
        doc = self.trust_list.document
        return {
            "name": self.name,
            "source_url": self.source_url,
            "pinned_signer_sha256": self.pinned_signer_sha256,
            "sequence": doc["sequence"],
            "issuer": doc["issuer"],
            "services": doc["services"],
        }


@dataclass(frozen=True)
class Anchors:
    """What verification trusts (DER): ``roots`` end a path, ``intermediates`` may help build
    one, a path through ``withdrawn`` fails."""

    roots: tuple[bytes, ...]
    intermediates: tuple[bytes, ...]
    withdrawn: tuple[bytes, ...]


# -- building and signing ------------------------------------------------------------------------


def _time(value: datetime) -> str:
    return value.astimezone(UTC).strftime(_TIME)


def _parse_time(value: Any, what: str) -> datetime:
    try:
        return datetime.strptime(value, _TIME).replace(tzinfo=UTC)
    except (TypeError, ValueError) as exc:
        raise TrustListError(f"{what} must be RFC 3339 UTC like 2026-11-24T09:00:00Z") from exc


def _sha256(der: bytes) -> str:
    return hashlib.sha256(der).hexdigest()


def _service(
    cert_der: bytes, kind: str, *, now: datetime, ocsp: str | None = None, crl: str | None = None
) -> dict[str, Any]:
    cert = x509.load_der_x509_certificate(cert_der)
    cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    granted = cert.not_valid_before_utc <= now <= cert.not_valid_after_utc
    out: dict[str, Any] = {
        "name": str(cn[0].value) if cn else cert.subject.rfc4514_string(),
        "type": kind,
        "certificate": base64.b64encode(cert_der).decode("ascii"),
        "sha256": _sha256(cert_der),
        "not_before": _time(cert.not_valid_before_utc),
        "not_after": _time(cert.not_valid_after_utc),
        "status": "granted" if granted else "withdrawn",
    }
    if ocsp:
        out["ocsp"] = ocsp
    if crl:
        out["crl"] = crl
    return out


def local_services(
    ca_chain: Sequence[bytes],
    *,
    base_url: str,
    root_name: str,
    issuing_name: str,
    tsa: bytes | None = None,
    now: datetime | None = None,
) -> list[dict[str, Any]]:
    """Our CAs (``ca.status.ca_chain``) and TSA as services, with the OCSP/CRL URLs that
    protocol_api publishes; expired ones are withdrawn (revoked ones are not in the chain)."""
    now = now or datetime.now(UTC)
    base = base_url.rstrip("/")
    out = []
    for der in ca_chain:
        cert = x509.load_der_x509_certificate(der)
        if cert.subject == cert.issuer:
            out.append(_service(der, "root-ca", now=now, crl=f"{base}/pki/{root_name}.crl"))
        else:
            crl = f"{base}/pki/{issuing_name}.crl"
            out.append(_service(der, "issuing-ca", now=now, ocsp=f"{base}/ocsp", crl=crl))
    if tsa is not None:
        out.append(_service(tsa, "tsa", now=now))
    return out


def _order(services: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Deterministic order, so an unchanged list has unchanged content."""
    return sorted((dict(s) for s in services), key=lambda s: (s["type"], s["sha256"]))


def build_trust_list(
    *,
    name: str,
    region: str,
    base_url: str,
    services: Sequence[Mapping[str, Any]],
    sequence: int,
    signers: Sequence[str] = (),
    imported: Sequence[ImportedList] = (),
    now: datetime | None = None,
) -> dict[str, Any]:
    """The unsigned document. Stale imports are left out: we do not vouch for a list its
    own operator no longer keeps current."""
    now = (now or datetime.now(UTC)).replace(microsecond=0)
    fresh = [i for i in imported if i.trust_list.next_update >= now]
    return {
        "schema": SCHEMA,
        "issuer": {"name": name, "region": region, "base_url": base_url.rstrip("/")},
        "sequence": sequence,
        "issued_at": _time(now),
        "next_update": _time(now + NEXT_UPDATE),
        "signers": list(signers),
        "services": _order(services),
        "imported": [i.entry() for i in sorted(fresh, key=lambda i: i.name)],
    }


def _require_tsl_signer(cert_der: bytes) -> None:
    cert = x509.load_der_x509_certificate(cert_der)
    try:
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        eku = None
    if eku is None or TSL_SIGNING_EKU not in eku:
        raise TrustListError("the signer certificate lacks EKU id-tsl-kp-tslSigning")


def sign_trust_list(
    document: Mapping[str, Any],
    signer: Credential,
    keys: KeyManager,
    *,
    now: datetime | None = None,
) -> dict[str, Any]:
    """The JAdES B-B JWS of ``document``, with the signer named first in ``signers`` (a
    verifier requires that); refuses a signer that is not a trust-list signer."""
    _require_tsl_signer(signer.certificate)
    fingerprint = _sha256(signer.certificate)
    others = [s for s in document.get("signers", []) if s != fingerprint]
    raw = json.dumps({**document, "signers": [fingerprint, *others]}, ensure_ascii=False)
    return jades.seal_json(raw.encode("utf-8"), signer, keys, now=now)


# -- verification --------------------------------------------------------------------------------


def _b64(value: Any, what: str) -> bytes:
    try:
        return base64.b64decode(value, validate=True)
    except (TypeError, ValueError, binascii.Error) as exc:
        raise TrustListError(f"{what} is not base64") from exc


def _check_service(s: Any, where: str) -> None:
    if not isinstance(s, dict):
        raise TrustListError(f"{where} must be an object")
    if s.get("type") not in SERVICE_TYPES or s.get("status") not in STATUSES:
        raise TrustListError(f"{where}: unknown type or status")
    if not isinstance(s.get("name"), str) or not s["name"]:
        raise TrustListError(f"{where}: name must be a non-empty string")
    for url in ("ocsp", "crl"):
        if url in s and (
            not isinstance(s[url], str) or urlsplit(s[url]).scheme not in ("http", "https")
        ):
            raise TrustListError(f"{where}: {url} must be an http(s) URL")
    der = _b64(s.get("certificate"), f"{where}.certificate")
    try:
        cert = x509.load_der_x509_certificate(der)
        is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    except ValueError as exc:
        raise TrustListError(f"{where}: not a DER certificate") from exc
    if s.get("sha256") != _sha256(der):
        raise TrustListError(f"{where}: sha256 does not match the certificate")
    if (s.get("not_before"), s.get("not_after")) != (
        _time(cert.not_valid_before_utc),
        _time(cert.not_valid_after_utc),
    ):
        raise TrustListError(f"{where}: validity does not match the certificate")
    if is_ca != (s["type"] != "tsa"):
        raise TrustListError(f"{where}: a {s['type']} certificate with cA={is_ca}")
    if s["type"] == "root-ca" and cert.subject != cert.issuer:
        raise TrustListError(f"{where}: a root-ca must be self-issued")


def _check_services(value: Any, where: str) -> None:
    if not isinstance(value, list) or len(value) > MAX_SERVICES:
        raise TrustListError(f"{where} must be an array of at most {MAX_SERVICES}")
    for i, s in enumerate(value):
        _check_service(s, f"{where}[{i}]")


def _check_document(doc: Any) -> None:
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
        raise TrustListError(f"not a {SCHEMA} document")
    issuer = doc.get("issuer")
    if not isinstance(issuer, dict) or not all(
        isinstance(issuer.get(k), str) for k in ("name", "region", "base_url")
    ):
        raise TrustListError("issuer must have string name, region and base_url")
    seq = doc.get("sequence")
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
        raise TrustListError("sequence must be a non-negative integer")
    issued = _parse_time(doc.get("issued_at"), "issued_at")
    if _parse_time(doc.get("next_update"), "next_update") <= issued:
        raise TrustListError("next_update must be after issued_at")
    signers = doc.get("signers")
    if not isinstance(signers, list) or not all(
        isinstance(s, str) and _SHA256.fullmatch(s) for s in signers
    ):
        raise TrustListError("signers must be an array of lowercase SHA-256 hex strings")
    _check_services(doc.get("services"), "services")
    imported = doc.get("imported")
    if not isinstance(imported, list):
        raise TrustListError("imported must be an array")
    for i, entry in enumerate(imported):
        if not isinstance(entry, dict):
            raise TrustListError(f"imported[{i}] must be an object")
        _check_services(entry.get("services"), f"imported[{i}].services")


def _parse_jws(raw: bytes | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(raw, Mapping):
        return dict(raw)
    if len(raw) > MAX_LIST_BYTES:
        raise TrustListError(f"a trust list is at most {MAX_LIST_BYTES} bytes")
    try:
        value: dict[str, Any] = jades.parse_record(raw)
    except SigningError as exc:
        raise TrustListError(f"not a JWS JSON document: {exc.detail}") from exc
    return value


def _header(jws: Mapping[str, Any]) -> dict[str, Any]:
    protected = jws.get("protected")
    if not isinstance(protected, str):
        raise TrustListError("protected header missing")
    try:
        raw = base64.urlsafe_b64decode(protected + "=" * (-len(protected) % 4))
        header: dict[str, Any] = jades.parse_record(raw)
        leaf = _b64(header["x5c"][0], "x5c[0]")
    except (SigningError, KeyError, IndexError, TypeError, binascii.Error) as exc:
        raise TrustListError("protected header or x5c unreadable") from exc
    header["_leaf"] = leaf
    return header


def verify_trust_list(
    jws: bytes | Mapping[str, Any],
    *,
    pins: Collection[str] = (),
    trust_roots: Sequence[bytes] = (),
    now: datetime | None = None,
    fresh: bool = True,
) -> TrustList:
    """Check signature, signer and schema. Trust comes from ``pins`` (accepted signer
    certificate SHA-256s: the pinned certificate is the anchor, whoever issued it) or else
    ``trust_roots`` (our own list under our root). The signer must be valid at the signing
    time; ``fresh`` also refuses a list past its next_update or from the future."""
    now = now or datetime.now(UTC)
    value = _parse_jws(jws)
    header = _header(value)
    leaf = header.pop("_leaf")
    fingerprint = _sha256(leaf)
    if pins:
        if fingerprint not in pins:
            raise TrustListError(f"signer certificate {fingerprint} does not match the pin")
        roots: Sequence[bytes] = [leaf]
    elif trust_roots:
        roots = trust_roots
    else:
        raise TrustListError("nothing to trust the signer by: give a pin")
    _require_tsl_signer(leaf)
    iat = header.get("iat")
    if not isinstance(iat, int) or isinstance(iat, bool):
        raise TrustListError("the signature carries no iat")
    try:
        verified = jades.verify_jws(value, roots, at=datetime.fromtimestamp(iat, UTC))
    except jades.InvalidSeal as exc:
        raise TrustListError(f"signature: {exc.detail}") from exc
    if not verified.payload:
        raise TrustListError("the trust list must be an attached payload")
    try:
        document = jades.parse_record(verified.payload)
    except SigningError as exc:
        raise TrustListError(f"payload: {exc.detail}") from exc
    _check_document(document)
    if fingerprint not in document["signers"]:
        raise TrustListError("the list does not name its signer in signers")
    if fresh:
        if _parse_time(document["next_update"], "next_update") < now:
            raise TrustListError(f"stale: next_update {document['next_update']} has passed")
        if _parse_time(document["issued_at"], "issued_at") > now + CLOCK_SKEW:
            raise TrustListError(f"issued_at {document['issued_at']} is in the future")
    return TrustList(document, value, fingerprint)


# -- storage and import --------------------------------------------------------------------------


def _dir(home: Path) -> Path:
    return Path(home) / "trust"


@contextlib.contextmanager
def _locked(home: Path) -> Iterator[None]:
    """One writer at a time across workers and the CLI (flock on HOME/trust/.lock)."""
    path = _dir(home)
    (path / "imported").mkdir(parents=True, exist_ok=True)
    with open(path / ".lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _write(path: Path, data: bytes) -> None:
    """Whole or not at all: readers never see half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _read_stored(path: Path) -> ImportedList:
    data = json.loads(path.read_bytes())
    pin = data["pinned_signer_sha256"]
    trust_list = verify_trust_list(data["jws"], pins={pin}, fresh=False)
    return ImportedList(data["name"], data["source_url"], pin, trust_list)


def load_imported(home: Path) -> list[ImportedList]:
    """Every stored import, re-verified against its pin (stale ones included: the caller
    decides; ``build_trust_list`` drops them). A file that no longer verifies is skipped
    with a warning: less trust, never more."""
    out = []
    for path in sorted((_dir(home) / "imported").glob("*.json")):
        try:
            out.append(_read_stored(path))
        except (SigningError, OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring imported trust list %s: %s", path, exc)
    return out


def fetch_list(url: str, policy: outbound.FetchPolicy = outbound.DEFAULT_POLICY) -> bytes:
    """GET a trust list through :mod:`signing.fetch` (http(s), same-host redirects, no
    private targets unless allowed, time and size limits); refusals are TrustListError."""
    limited = dataclasses.replace(policy, max_bytes=min(policy.max_bytes, MAX_LIST_BYTES))
    try:
        return outbound.fetch(url, policy=limited, accept=MEDIA_TYPE).data
    except outbound.FetchError as exc:
        raise TrustListError(f"cannot fetch {exc}") from None


def _read_source(source: str, fetch: Fetch | None) -> tuple[bytes, str]:
    """(bytes, source URL) of an http(s) URL or a local file path; anything else is refused
    in one line (``file:`` URLs included: give the path)."""
    scheme = urlsplit(source).scheme
    if scheme in ("http", "https"):
        return (fetch or fetch_list)(source), source
    if scheme and len(scheme) > 1:  # "C:" would be a drive letter, not a scheme
        raise TrustListError(f"only http(s) URLs or a local file path, not a {scheme}: URL")
    path = Path(source)
    try:
        if path.stat().st_size > MAX_LIST_BYTES:
            raise TrustListError(f"{source} is larger than {MAX_LIST_BYTES} bytes")
        return path.read_bytes(), path.resolve().as_uri()
    except OSError as exc:
        raise TrustListError(f"cannot read {source}: {exc.strerror or exc}") from None


def _default_name(base_url: str) -> str:
    parts = urlsplit(base_url)
    slug = re.sub(r"[^a-z0-9]+", "-", f"{parts.hostname or ''}-{parts.port or ''}".lower())
    return slug.strip("-")[:63] or "imported"


def import_trust_list(
    home: Path,
    source: str,
    *,
    pin: str | None = None,
    name: str | None = None,
    fetch: Fetch | None = None,
    now: datetime | None = None,
) -> ImportedList:
    """Fetch (http/https URL) or read (file path) another region's list, check it (module
    doc: pin, signature, schema, freshness, rollback) and store it. Returns what was stored."""
    if pin is not None:
        pin = pin.lower().replace(":", "")
        if not _SHA256.fullmatch(pin):
            raise TrustListError("the pin must be a SHA-256 hex fingerprint")
    if name is not None and not _NAME.fullmatch(name):
        raise TrustListError("name: 1-63 of a-z, 0-9 and '-', starting alphanumeric")
    raw, source_url = _read_source(source, fetch)
    with _locked(home):
        stored = load_imported(home)
        previous = [s for s in stored if s.source_url == source_url or s.name == name]
        if pin is not None:
            pins = {pin}
        elif previous:
            pins = {previous[0].pinned_signer_sha256, *previous[0].trust_list.document["signers"]}
        else:
            raise TrustListError("the first import of a trust list needs --pin")
        new = verify_trust_list(raw, pins=pins, now=now)
        same_issuer = [s for s in stored if s.trust_list.issuer_url == new.issuer_url]
        for prior in (s.trust_list for s in same_issuer):
            if new.sequence < prior.sequence:
                raise TrustListError(f"rollback: sequence {new.sequence} < {prior.sequence} stored")
            if new.sequence == prior.sequence and new.document != prior.document:
                raise TrustListError(f"sequence {new.sequence} reused with other content")
        name = name or (same_issuer[0].name if same_issuer else _default_name(new.issuer_url))
        clash = [s for s in stored if s.name == name and s.trust_list.issuer_url != new.issuer_url]
        if clash:
            raise TrustListError(
                f"{name!r} already holds the list of {clash[0].trust_list.issuer_url}"
            )
        result = ImportedList(name, source_url, new.signer_sha256, new)
        record = {
            "name": name,
            "source_url": source_url,
            "pinned_signer_sha256": new.signer_sha256,
            "imported_at": _time(now or datetime.now(UTC)),
            "jws": new.jws,
        }
        target = _dir(home) / "imported" / f"{name}.json"
        _write(target, json.dumps(record, ensure_ascii=False, indent=1).encode("utf-8"))
        for old in same_issuer:  # renamed: one file per issuer
            if old.name != name:
                (_dir(home) / "imported" / f"{old.name}.json").unlink(missing_ok=True)
    return result


def remove_imported(home: Path, name: str) -> bool:
    """Stop trusting a region (e.g. its signer key was compromised); False if unknown."""
    if not _NAME.fullmatch(name):
        raise TrustListError("name: 1-63 of a-z, 0-9 and '-', starting alphanumeric")
    with _locked(home):
        path = _dir(home) / "imported" / f"{name}.json"
        existed = path.exists()
        path.unlink(missing_ok=True)
    return existed


def refresh_imported(
    home: Path, *, fetch: Fetch | None = None, now: datetime | None = None
) -> dict[str, str]:
    """Re-fetch every import that came from a URL (the scheduler's job: lists go stale in
    seven days). Name -> "ok" or why it was refused; a refused refresh keeps the old list."""
    out = {}
    for item in load_imported(home):
        if not item.source_url.startswith(("http://", "https://")):
            continue
        try:
            import_trust_list(home, item.source_url, name=item.name, fetch=fetch, now=now)
            out[item.name] = "ok"
        except SigningError as exc:
            out[item.name] = exc.detail
    return out


# -- our published list and the anchors ----------------------------------------------------------


def current_trust_list(
    home: Path,
    signer: Credential,
    keys: KeyManager,
    *,
    name: str,
    region: str,
    base_url: str,
    services: Sequence[Mapping[str, Any]],
    announce: Sequence[str] = (),
    now: datetime | None = None,
) -> bytes:
    """Our signed list as served (the JWS JSON bytes), re-signed only when its content or
    signer changed or half its validity has passed, so relying parties see a stable
    sequence and the HSM does not sign per request. Cached in HOME/trust/published.json.
    ``announce``: fingerprints of the next signer certificates, so importers follow a
    renewal (module doc)."""
    now = (now or datetime.now(UTC)).replace(microsecond=0)
    path = _dir(home) / "published.json"
    with _locked(home):
        raw, previous = _published(path)
        doc = build_trust_list(
            name=name,
            region=region,
            base_url=base_url,
            services=services,
            sequence=0,
            signers=[_sha256(signer.certificate), *announce],
            imported=load_imported(home),
            now=now,
        )
        if previous is not None:
            issued = _parse_time(previous["issued_at"], "issued_at")
            half = issued + (_parse_time(previous["next_update"], "next_update") - issued) / 2
            unchanged = all(previous.get(k) == v for k, v in doc.items() if k not in _VOLATILE)
            if unchanged and issued <= now < half:
                return raw
        doc["sequence"] = max(int(now.timestamp()), previous["sequence"] + 1 if previous else 0)
        data = json.dumps(sign_trust_list(doc, signer, keys, now=now)).encode("ascii")
        _write(path, data)
        return data


def _published(path: Path) -> tuple[bytes, dict[str, Any] | None]:
    """Our published file and its payload (we wrote it; relying parties verify it). An
    unreadable one is replaced: the Unix-time sequence still only grows."""
    try:
        raw = path.read_bytes()
        b64 = str(json.loads(raw)["payload"])
        doc = json.loads(base64.urlsafe_b64decode(b64 + "=" * (-len(b64) % 4)))
        _parse_time(doc["issued_at"], "issued_at")
        _parse_time(doc["next_update"], "next_update")
        return raw, doc if isinstance(doc["sequence"], int) else None
    except (OSError, ValueError, KeyError, TypeError, binascii.Error, TrustListError):
        return b"", None


def anchors(document: Mapping[str, Any]) -> Anchors:
    """The verification anchors of a trust list document (ours, built or verified): exactly
    its granted CAs and those of its imported entries (see the module doc). A certificate
    withdrawn by any list is withdrawn: the more cautious word wins."""
    found: dict[bytes, str] = {}
    groups = [document["services"], *(i["services"] for i in document.get("imported", []))]
    for s in (s for services in groups for s in services):
        der = base64.b64decode(s["certificate"])
        if found.get(der) != "withdrawn":
            found[der] = s["type"] if s["status"] == "granted" else "withdrawn"
    return Anchors(
        *(
            tuple(d for d, t in found.items() if t == k)
            for k in ("root-ca", "issuing-ca", "withdrawn")
        )
    )
