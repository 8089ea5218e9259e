"""Seal a PDF by hash only: pyHanko prepares the PAdES signature on this machine and an
external signer asks kakuin's CSC API (v1) to sign the hash of the signed attributes.

What leaves the machine: the signed attributes' digest (``credentials/authorize`` and
``signatures/signHash``) and, for B-T, a timestamp request carrying the signature's digest.
Never the PDF. Needs the ``pdf`` extra (pyHanko, asn1crypto); imports nothing of kakuin.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
from io import BytesIO
from typing import Any

from asn1crypto import algos, tsp
from asn1crypto import x509 as asn1_x509
from pyhanko.pdf_utils.incremental_writer import IncrementalPdfFileWriter
from pyhanko.sign import fields, signers
from pyhanko.sign.timestamps.api import TimeStamper
from pyhanko_certvalidator.registry import SimpleCertificateStore

from kakuin_client._http import Transport
from kakuin_client.errors import KakuinError

LEVELS = ("B-B", "B-T")
_HASH_OIDS = {"sha256": "2.16.840.1.101.3.4.2.1", "sha384": "2.16.840.1.101.3.4.2.2",
              "sha512": "2.16.840.1.101.3.4.2.3"}
_ECDSA_OIDS = {"sha256": "1.2.840.10045.4.3.2", "sha384": "1.2.840.10045.4.3.3",
               "sha512": "1.2.840.10045.4.3.4"}
_RSA_OID = "1.2.840.113549.1.1.1"


class _CscSigner(signers.Signer):
    """pyHanko signer whose raw signature is one CSC ``signHash`` over our digest."""

    def __init__(self, transport: Transport, credential_id: str,
                 chain: list[asn1_x509.Certificate]) -> None:
        leaf = chain[0]
        self._transport, self._credential = transport, credential_id
        self._ec = leaf.public_key.algorithm == "ec"
        mechanism = "sha256_ecdsa" if self._ec else "sha256_rsa"
        super().__init__(signing_cert=leaf,
                         cert_registry=SimpleCertificateStore.from_certs(chain),
                         signature_mechanism=algos.SignedDigestAlgorithm(
                             {"algorithm": mechanism}))
        self._size = 2 * (leaf.public_key.bit_size // 8) + 16 if self._ec else \
            leaf.public_key.bit_size // 8

    async def async_sign_raw(self, data: bytes, digest_algorithm: str,
                             dry_run: bool = False) -> bytes:
        if dry_run:
            return bytes(self._size)
        digest = hashlib.new(digest_algorithm, data).digest()
        return await asyncio.to_thread(self._sign_hash, digest, digest_algorithm)

    def _sign_hash(self, digest: bytes, digest_algorithm: str) -> bytes:
        hashes = [base64.b64encode(digest).decode()]
        hash_oid = _HASH_OIDS[digest_algorithm]
        sad = self._transport.json("POST", "/csc/v1/credentials/authorize", {
            "credentialID": self._credential, "numSignatures": 1, "hash": hashes,
            "hashAlgo": hash_oid})["SAD"]
        sign_algo = _ECDSA_OIDS[digest_algorithm] if self._ec else _RSA_OID
        answer = self._transport.json("POST", "/csc/v1/signatures/signHash", {
            "credentialID": self._credential, "SAD": sad, "hash": hashes,
            "hashAlgo": hash_oid, "signAlgo": sign_algo})
        return base64.b64decode(answer["signatures"][0])


class _Tsa(TimeStamper):
    """RFC 3161 over our transport (retries, recording); the request holds a digest only."""

    def __init__(self, transport: Transport, url: str) -> None:
        super().__init__()
        self._transport, self._url = transport, url

    async def async_request_tsa_response(self, req: tsp.TimeStampReq) -> tsp.TimeStampResp:
        resp = await asyncio.to_thread(
            self._transport.request, "POST", self._url, body=req.dump(),
            content_type="application/timestamp-query", auth=False)
        return tsp.TimeStampResp.load(resp.body)


def credentials(transport: Transport) -> list[str]:
    ids: list[str] = transport.json("POST", "/csc/v1/credentials/list", {}).get(
        "credentialIDs") or []
    return ids


def seal_pdf_by_hash(transport: Transport, pdf: bytes, *, level: str = "B-B",
                     credential_id: str | None = None, field_name: str = "KakuinSeal",
                     timestamp_url: str = "/tsa") -> bytes:
    """PAdES B-B (or B-T) of ``pdf`` by the organization's hosted e-seal; see module doc."""
    if level not in LEVELS:
        raise ValueError(f"level must be one of {', '.join(LEVELS)}")
    if credential_id is None:
        ids = credentials(transport)
        if not ids:
            raise KakuinError("this organization has no hosted e-seal on the service")
        credential_id = ids[0]
    info: dict[str, Any] = transport.json("POST", "/csc/v1/credentials/info", {
        "credentialID": credential_id, "certificates": "chain"})
    chain = [asn1_x509.Certificate.load(base64.b64decode(c))
             for c in info["cert"]["certificates"]]
    pdf_signer = signers.PdfSigner(
        signers.PdfSignatureMetadata(field_name=field_name,
                                     subfilter=fields.SigSeedSubFilter.PADES),
        signer=_CscSigner(transport, credential_id, chain),
        timestamper=_Tsa(transport, timestamp_url) if level == "B-T" else None)
    writer = IncrementalPdfFileWriter(BytesIO(pdf), strict=False)
    out = pdf_signer.sign_pdf(writer, output=BytesIO())
    return bytes(out.getvalue())


__all__ = ["LEVELS", "credentials", "seal_pdf_by_hash"]
