"""Seal a PDF on the school's own machine, with only its hashes going to kakuin.

pyHanko builds the PAdES signature locally and asks kakuin's CSC API (v1, the dialect of
pyHanko's ``CSCSigner``) to sign the hash of the signed attributes: the document itself never
leaves the caller. For B-T the timestamp request also carries only a hash.
"""

from __future__ import annotations

import asyncio
from io import BytesIO
from typing import Any

import aiohttp
from pyhanko.pdf_utils.incremental_writer import IncrementalPdfFileWriter
from pyhanko.pdf_utils.misc import PdfError
from pyhanko.sign import fields, signers
from pyhanko.sign.general import SigningError as PyHankoSigningError
from pyhanko.sign.signers.csc_signer import (
    CSCAuthorizationInfo,
    CSCAuthorizationManager,
    CSCCredentialInfo,
    CSCServiceSessionInfo,
    CSCSigner,
    fetch_certs_in_csc_credential,
)
from pyhanko.sign.timestamps import HTTPTimeStamper

from signing.errors import BadDocument, SigningError

__all__ = ["RemoteSealError", "async_seal_pdf_remote", "seal_pdf_remote"]

LEVELS = ("B-B", "B-T")


class RemoteSealError(SigningError):
    """The CSC service refused or could not be reached; the detail carries its reason."""

    status = 502
    type = "signing/remote-seal-failed"
    title = "Remote sealing failed"


class _Authorizer(CSCAuthorizationManager):
    """Asks ``credentials/authorize`` for a SAD bound to exactly the hashes about to be
    signed (kakuin's credentials are SCAL 2)."""

    def __init__(
        self,
        info: CSCServiceSessionInfo,
        credential: CSCCredentialInfo,
        session: aiohttp.ClientSession,
        timeout: int,
    ) -> None:
        super().__init__(info, credential)
        self._session = session
        self._timeout = aiohttp.ClientTimeout(total=timeout)

    async def authorize_signature(self, hash_b64s: list[str]) -> CSCAuthorizationInfo:
        body = self.format_csc_auth_request(hash_b64s=hash_b64s)
        data = await _post(
            self._session,
            self.csc_session_info.endpoint_url("credentials/authorize"),
            self.auth_headers,
            body,
            self._timeout,
        )
        return self.parse_csc_auth_response(data)


async def _post(
    session: aiohttp.ClientSession,
    url: str,
    headers: dict[str, str],
    body: dict[str, Any],
    timeout: aiohttp.ClientTimeout,
) -> dict[str, Any]:
    """POST JSON; a CSC error becomes a RemoteSealError carrying its description."""
    async with session.post(url, headers=headers, json=body, timeout=timeout) as resp:
        try:
            data = await resp.json(content_type=None)
        except ValueError:
            data = None
        if resp.status != 200 or not isinstance(data, dict):
            reason = data.get("error_description") if isinstance(data, dict) else None
            raise RemoteSealError(f"{url}: HTTP {resp.status}: {reason or resp.reason}")
        return data


def _why(exc: BaseException) -> str:
    """pyHanko wraps HTTP failures; show the innermost cause too."""
    parts, seen = [str(exc)], exc
    while seen.__cause__ is not None:
        seen = seen.__cause__
        parts.append(str(seen))
    return ": ".join(p for p in parts if p)


async def async_seal_pdf_remote(
    pdf_in: bytes,
    *,
    base_url: str,
    token: str,
    credential_id: str | None = None,
    level: str = "B-B",
    timestamp_url: str | None = None,
    field_name: str = "KakuinSeal",
    timeout: int = 60,
) -> bytes:
    """Async form of :func:`seal_pdf_remote`, for callers already inside an event loop."""
    if level not in LEVELS:
        raise ValueError(f"level must be one of {', '.join(LEVELS)}")
    base_url = base_url.rstrip("/")
    client_timeout = aiohttp.ClientTimeout(total=timeout)
    headers = {"Authorization": f"Bearer {token}"}
    try:
        async with aiohttp.ClientSession() as session:
            if credential_id is None:
                listed = await _post(
                    session, f"{base_url}/csc/v1/credentials/list", headers, {}, client_timeout
                )
                ids = listed.get("credentialIDs") or []
                if not ids:
                    raise RemoteSealError("this organization has no hosted e-seal on the service")
                credential_id = str(ids[0])
            info = CSCServiceSessionInfo(base_url, credential_id, oauth_token=token, api_ver="v1")
            credential = await fetch_certs_in_csc_credential(session, info, timeout=timeout)
            signer = CSCSigner(
                session,
                _Authorizer(info, credential, session, timeout),
                sign_timeout=timeout,
                batch_size=1,
            )
            timestamper = None
            if level == "B-T":
                timestamper = HTTPTimeStamper(
                    timestamp_url or f"{base_url}/tsa", timeout=timeout, session=session
                )
            pdf_signer = signers.PdfSigner(
                signers.PdfSignatureMetadata(
                    field_name=field_name, subfilter=fields.SigSeedSubFilter.PADES
                ),
                signer=signer,
                timestamper=timestamper,
            )
            try:
                writer = IncrementalPdfFileWriter(BytesIO(pdf_in), strict=False)
            except (PdfError, ValueError) as exc:
                raise BadDocument(f"not a readable PDF: {exc}") from exc
            out = await pdf_signer.async_sign_pdf(writer, output=BytesIO())
            result: bytes = out.getvalue()
            return result
    except (TimeoutError, PyHankoSigningError, aiohttp.ClientError) as exc:
        raise RemoteSealError(_why(exc)) from exc


def seal_pdf_remote(
    pdf_in: bytes,
    *,
    base_url: str,
    token: str,
    credential_id: str | None = None,
    level: str = "B-B",
    timestamp_url: str | None = None,
    field_name: str = "KakuinSeal",
    timeout: int = 60,
) -> bytes:
    """Seal ``pdf_in`` (PAdES B-B, or B-T with a timestamp from ``timestamp_url``, default
    kakuin's ``/tsa``) with the organization's hosted e-seal at ``base_url``, sending only
    hashes. ``credential_id`` defaults to the first one ``credentials/list`` returns."""
    return asyncio.run(
        async_seal_pdf_remote(
            pdf_in,
            base_url=base_url,
            token=token,
            credential_id=credential_id,
            level=level,
            timestamp_url=timestamp_url,
            field_name=field_name,
            timeout=timeout,
        )
    )
