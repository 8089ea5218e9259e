"""Sealing as one object the web layer and CLI hold: who may seal, with which key, audited.

Documents are processed in memory and never stored; the audit log keeps their digests,
the organization, the acting client and the time.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

from pyhanko.sign.timestamps import TimeStamper

from ca import status
from hsm.api import KeyManager
from signing import fetch as outbound
from signing import jades, pdf, trustlist, verify
from signing.errors import NotAllowed, SigningError
from signing.tsa import TimeStampAuthority, timestamp_token

JSON_LEVELS = ("B-B", "B-T", "B-LT")
log = logging.getLogger(__name__)


@dataclass
class SigningService:
    store: status.Store
    keys: KeyManager
    tsa: TimeStampAuthority
    timestamper: TimeStamper
    verify_url: str
    crl_issuers: tuple[str, ...] = ()
    max_pdf_bytes: int = pdf.DEFAULT_MAX_BYTES
    home: Path | None = None
    instance_name: str = "kakuin"
    region: str = ""
    base_url: str = ""
    root_name: str = "kakuin-root-ca"
    issuing_name: str = "kakuin-issuing-ca"
    # How verification fetches OCSP/CRLs named in certificates: make_signing_service gives a
    # signing.fetch.StatusFetcher (our own status in process, others cached); tests route.
    fetch: verify.Fetch = verify.default_fetch
    # Outbound requests other than status (trust lists): signing.fetch's limits and targets.
    fetch_policy: outbound.FetchPolicy = outbound.DEFAULT_POLICY
    verify_limits: verify.Limits = verify.DEFAULT_LIMITS
    # Called with every report (public verifications are counted, not stored: metrics hook).
    on_verified: Callable[[verify.Report], None] | None = None
    _anchors: tuple[bytes, trustlist.Anchors] | None = field(default=None, repr=False)

    # -- trust list ---------------------------------------------------------------------------

    def trust_list(self) -> bytes:
        """This instance's signed trust list (our CAs + the lists we imported)."""
        if self.home is None:
            raise SigningError("no home directory configured for the trust list")
        services = trustlist.local_services(
            status.ca_chain(self.store), base_url=self.base_url, root_name=self.root_name,
            issuing_name=self.issuing_name, tsa=status.tsa_credential(self.store).certificate)
        return trustlist.current_trust_list(
            self.home, status.trust_list_credential(self.store), self.keys,
            name=self.instance_name, region=self.region, base_url=self.base_url,
            services=services)

    def verify(self, data: bytes, *, detached: bytes | None = None,
               requester: str | None = None, request_id: str | None = None) -> verify.Report:
        """Verify against exactly our trust list's anchors; the document is not kept.

        Public verifications (``requester`` None: anonymous) write nothing to the database,
        so anonymous traffic cannot grow it; they reach ``on_verified`` (metrics). A named
        requester (the console) still gets an audit entry with the digest and the verdict.
        """
        report = verify.verify(data, self.anchors(), detached_payload=detached, fetch=self.fetch,
                               limits=self.verify_limits)
        if self.on_verified is not None:
            try:
                self.on_verified(report)
            except Exception:  # a metrics failure must not fail the verification
                log.exception("on_verified hook failed")
        if requester is not None:
            status.record(self.store, actor=requester, action="document.verified",
                          object_type="document", digest=hashlib.sha256(data).hexdigest(),
                          request_id=request_id,
                          details={"indication": report.indication,
                                   "sub_indication": report.sub_indication,
                                   "type": report.document_type})
        return report

    def fetch_trust_list(self, url: str) -> bytes:
        """GET another region's trust list under ``fetch_policy`` (trustlist.Fetch)."""
        return trustlist.fetch_list(url, self.fetch_policy)

    def anchors(self) -> trustlist.Anchors:
        """Exactly the anchors on our trust list (verification trusts nothing else).

        The list's signature is checked once per version of the list, not per verification.
        """
        raw = self.trust_list()
        cached = self._anchors
        if cached is not None and cached[0] == raw:
            return cached[1]
        root = status.ca_chain(self.store)[-1]
        found = trustlist.anchors(trustlist.verify_trust_list(raw, trust_roots=[root]).document)
        self._anchors = (raw, found)
        return found

    # -- who may seal -------------------------------------------------------------------------

    def credential_for(self, principal: status.Principal, organization_id: int,
                       *, request_id: str | None = None) -> status.Credential:
        """The organization's hosted seal, if ``principal`` may use it (refusals audited)."""
        if not status.may_seal(self.store, principal, organization_id):
            status.record(self.store, actor=principal.actor, action="access.denied",
                          organization_id=organization_id, object_type="seal",
                          request_id=request_id,
                          details={"attempted": "seal", "role": principal.role})
            raise NotAllowed("only the organization's own systems may use its seal")
        return status.seal_credential(self.store, organization_id)

    # -- PDF ----------------------------------------------------------------------------------

    def seal_pdf(self, principal: status.Principal, organization_id: int, document: bytes,
                 options: pdf.SealOptions, *, request_id: str | None = None,
                 actor: str | None = None) -> pdf.SealResult:
        """Seal; ``actor`` (staff reference) is recorded with the event, never in the PDF."""
        status.check_actor(actor)
        credential = self.credential_for(principal, organization_id, request_id=request_id)
        if options.verify_url is None:
            options = dataclasses.replace(options, verify_url=self.verify_url)
        validation = None
        if options.level in ("B-LT", "B-LTA"):
            validation = pdf.validation_material(self.store, self.keys, credential,
                                                 crl_issuers=self.crl_issuers)
        result = pdf.seal_pdf(document, credential, self.keys,
                              timestamper=None if options.level == "B-B" else self.timestamper,
                              validation=validation, options=options,
                              max_bytes=self.max_pdf_bytes)
        status.pause_point("seal.signed")  # crash tests: signed in the HSM, not yet audited
        (receipt,) = status.record_seals(
            self.store, principal, organization_id, [result.input_sha256], kind="pdf",
            level=result.level, actor=actor, request_id=request_id, action="seal.pdf",
            object_type="document", object_id=result.field_name, digest=result.input_sha256,
            details={"level": result.level, "output_sha256": result.output_sha256,
                     "certificate": credential.serial})
        return dataclasses.replace(result, receipt=receipt.to_dict())

    # -- JSON ---------------------------------------------------------------------------------

    def seal_json(self, principal: status.Principal, organization_id: int,
                  records: list[bytes], *, level: str = "B-B", detached: bool = False,
                  names: list[str] | None = None,
                  request_id: str | None = None) -> list[dict[str, Any]]:
        seals, _ = self.seal_json_receipts(principal, organization_id, records, level=level,
                                           detached=detached, names=names,
                                           request_id=request_id)
        return seals

    def seal_json_receipts(
            self, principal: status.Principal, organization_id: int, records: list[bytes], *,
            level: str = "B-B", detached: bool = False, names: list[str] | None = None,
            request_id: str | None = None, actor: str | None = None,
    ) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
        """Each record gets its own JAdES signature and seal event (transparency receipt);
        one audit entry per request whose digest covers the SHA-256 of every record."""
        status.check_actor(actor)
        if level not in JSON_LEVELS:
            raise SigningError(f"level must be one of {', '.join(JSON_LEVELS)}")
        credential = self.credential_for(principal, organization_id, request_id=request_id)
        material = None
        if level == "B-LT":
            material = jades.gather_validation_material(
                self.store, self.keys, credential, tsa=status.tsa_credential(self.store),
                crl_issuers=list(self.crl_issuers))
        timestamp = None
        if level in ("B-T", "B-LT"):
            def timestamp(data: bytes) -> bytes:
                return timestamp_token(self.tsa, data).dump()
        seals = jades.seal_batch(records, credential, self.keys,
                                 level=cast(Literal["B-B", "B-T", "B-LT"], level),
                                 detached=detached,
                                 names=names, timestamp=timestamp, validation_material=material)
        digests = [hashlib.sha256(jades.canonicalize(r)).hexdigest() for r in records]
        details: dict[str, Any] = {"level": level, "count": len(records),
                                   "certificate": credential.serial, "detached": detached}
        if len(digests) <= 20:
            details["record_sha256"] = digests
        receipts = status.record_seals(
            self.store, principal, organization_id, digests, kind="json", level=level,
            actor=actor, request_id=request_id, action="seal.json", object_type="record-batch",
            digest=hashlib.sha256("".join(digests).encode()).hexdigest(), details=details)
        return seals, [r.to_dict() for r in receipts]


def records_from_batch(body: bytes) -> list[bytes]:
    """``{"records": [ {...}, ... ]}`` parsed strictly (duplicate keys, NaN and bad UTF-8
    anywhere are refused), each record handed on as its own JSON text."""
    parsed = jades.parse_record(body)
    records = parsed.get("records")
    if not isinstance(records, list) or not records:
        raise SigningError("'records' must be a non-empty array of JSON objects")
    return [json.dumps(r, ensure_ascii=False).encode() for r in records]
