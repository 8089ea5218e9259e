"""The client: one object per kakuin instance and API token."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from kakuin_client._http import Transport, multipart
from kakuin_client.errors import ApprovalTimeout, RequestRejected
from kakuin_client.trust import TrustList, fetch_trust_list

_DONE = frozenset({"issued"})
_FAILED = frozenset({"rejected", "failed"})


@dataclass(frozen=True)
class Verification:
    """The ETSI EN 319 102-1 answer of ``/api/v1/verify``; ``report`` is the whole JSON."""

    indication: str
    sub_indication: str | None
    report: dict[str, Any]

    @property
    def passed(self) -> bool:
        return self.indication == "TOTAL-PASSED"


class KakuinClient:
    """``KakuinClient("https://kakuin.example.jp", token="...")``.

    ``timeout`` is per HTTP request (seconds); ``retries`` how often a 429/503 or a dropped
    connection is retried with backoff (``Retry-After`` honoured).
    """

    def __init__(self, base_url: str, token: str | None = None, *, timeout: float = 60.0,
                 retries: int = 4, backoff: float = 0.5, max_backoff: float = 30.0,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.transport = Transport(base_url.rstrip("/"), token, timeout=timeout,
                                   retries=retries, backoff=backoff, max_backoff=max_backoff,
                                   sleep=sleep)

    @property
    def base_url(self) -> str:
        return self.transport.base_url

    # -- seal requests (certificates) --------------------------------------------------------

    def request_seal(self, *, algorithm: str = "ECDSA-P256", csr_pem: str | None = None,
                     organization_id: int | None = None,
                     replaces_serial: str | None = None) -> dict[str, Any]:
        """Ask for an e-seal certificate: a key hosted in kakuin's HSM, or your CSR's key."""
        body: dict[str, Any] = ({"csr": csr_pem} if csr_pem is not None
                                else {"key": {"hosted": True, "algorithm": algorithm}})
        if organization_id is not None:
            body["organization_id"] = organization_id
        if replaces_serial is not None:
            body["replaces_serial"] = replaces_serial
        result: dict[str, Any] = self.transport.json("POST", "/api/v1/seal-requests", body,
                                                     retry_on_disconnect=False)
        return result

    def seal_request(self, request_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self.transport.json("GET", f"/api/v1/seal-requests/{request_id}")
        return result

    def wait_for_approval(self, request_id: str, *, timeout: float = 3600.0,
                          poll: float = 5.0) -> dict[str, Any]:
        """Poll until the board approves (the certificate is in the answer); raises
        :class:`RequestRejected` or :class:`ApprovalTimeout`."""
        deadline = time.monotonic() + timeout
        while True:
            req = self.seal_request(request_id)
            if req.get("status") in _DONE and req.get("certificate"):
                return req
            if req.get("status") in _FAILED:
                raise RequestRejected(req)
            if time.monotonic() >= deadline:
                raise ApprovalTimeout(f"seal request {request_id} is still {req.get('status')}")
            self.transport.sleep(min(poll, max(0.0, deadline - time.monotonic())))

    # -- sealing -------------------------------------------------------------------------------

    def seal_json(self, record: Any, *, level: str = "B-T", detached: bool = False,
                  name: str | None = None) -> dict[str, Any]:
        """One record (a JSON value, or its exact text as bytes/str) -> its JAdES JWS."""
        params = f"?level={level}&detached={'true' if detached else 'false'}"
        if name is not None:
            params += f"&name={name}"
        result: dict[str, Any] = self.transport.request(
            "POST", "/api/v1/seal/json" + params, body=_record_bytes(record),
            content_type="application/json").json()
        return result

    def seal_json_batch(self, records: Sequence[Any], *, level: str = "B-T",
                        detached: bool = False) -> list[dict[str, Any]]:
        """Many records, one request; each gets its own JWS, in order."""
        body = b'{"records":[' + b",".join(_record_bytes(r) for r in records) + b"]}"
        answer = self.transport.request(
            "POST", f"/api/v1/seal/json/batch?level={level}"
            f"&detached={'true' if detached else 'false'}",
            body=body, content_type="application/json").json()
        seals: list[dict[str, Any]] = answer["seals"]
        return seals

    def seal_pdf_upload(self, pdf: bytes, *, level: str = "B-LTA", visible: bool = True,
                        **options: str) -> bytes:
        """Server-side PAdES (the PDF is uploaded). To keep the PDF on your machine use
        :meth:`seal_pdf_by_hash` instead."""
        body, ctype = multipart({"level": level, "visible": str(visible).lower(), **options},
                                {"file": ("document.pdf", pdf, "application/pdf")})
        return self.transport.request("POST", "/api/v1/seal/pdf", body=body,
                                      content_type=ctype).body

    def seal_pdf_by_hash(self, pdf: bytes, *, level: str = "B-B",
                         credential_id: str | None = None,
                         field_name: str = "KakuinSeal") -> bytes:
        """PAdES built locally with pyHanko; only hashes go to kakuin's CSC API (and its TSA
        for B-T). Needs the ``pdf`` extra: ``pip install 'kakuin-client[pdf]'``."""
        from kakuin_client.pdf import seal_pdf_by_hash

        return seal_pdf_by_hash(self.transport, pdf, level=level, credential_id=credential_id,
                                field_name=field_name)

    # -- verification and trust ---------------------------------------------------------------

    def verify(self, document: bytes, *, filename: str | None = None,
               detached: bytes | None = None) -> Verification:
        """Anonymous: the full report; indication TOTAL-PASSED / TOTAL-FAILED /
        INDETERMINATE with its sub-indication."""
        if filename is None:
            filename = "document.pdf" if document[:5] == b"%PDF-" else "document.json"
        ctype = "application/pdf" if filename.endswith(".pdf") else "application/json"
        files = {"file": (filename, document, ctype)}
        if detached is not None:
            files["detached"] = ("detached.json", detached, "application/json")
        body, mp = multipart({}, files)
        report = self.transport.request("POST", "/api/v1/verify", body=body, content_type=mp,
                                        auth=False).json()
        return Verification(report["indication"], report.get("sub_indication"), report)

    def trust_list(self, *, pin_sha256: str | Sequence[str],
                   previous: TrustList | None = None) -> TrustList:
        """``GET /trust-list``, checked against the pinned signer certificate(s)."""
        return fetch_trust_list(self.transport, pin_sha256=pin_sha256, previous=previous)


def _record_bytes(record: Any) -> bytes:
    if isinstance(record, bytes):
        return record
    if isinstance(record, str):
        return record.encode("utf-8")
    return json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
