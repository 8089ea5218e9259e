"""Fetch and pin a kakuin trust list (``GET /trust-list``, schema ``kakuin-trust-list/1``).

Pinning: the first fetch needs the SHA-256 of the list's signer certificate, obtained out of
band (like a root fingerprint). Checked here: the JWS shape, ``alg`` (never ``none``), the
signer against the pin, the signature (with ``cryptography``, extra ``trust``), the schema,
freshness (``issued_at`` not in the future, ``next_update`` not past), and that ``sequence``
did not go back against the ``previous`` list you kept (a replayed older list). A renewed
signer announced in ``signers`` of the previous verified list is accepted and re-pinned.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from kakuin_client.errors import TrustListError

if TYPE_CHECKING:
    from kakuin_client._http import Transport

SCHEMA = "kakuin-trust-list/1"


@dataclass(frozen=True)
class TrustList:
    document: dict[str, Any]
    raw: bytes
    signer_sha256: str
    signature_verified: bool

    @property
    def sequence(self) -> int:
        return int(self.document["sequence"])

    def anchors(self, kind: str = "root-ca") -> list[bytes]:
        """DER certificates of the granted services of ``kind`` (ours, not imported)."""
        return [base64.b64decode(s["certificate"]) for s in self.document.get("services", [])
                if s.get("type") == kind and s.get("status") == "granted"]


def _b64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _time(value: Any) -> datetime:
    return datetime.strptime(str(value), "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


def parse_trust_list(raw: bytes, *, pin_sha256: str | Sequence[str],
                     previous: TrustList | None = None, require_signature: bool = True,
                     now: datetime | None = None) -> TrustList:
    """Check ``raw`` (the JWS JSON) as described above; raise :class:`TrustListError`."""
    pins = {pin_sha256.lower()} if isinstance(pin_sha256, str) else {p.lower() for p in pin_sha256}
    if previous is not None:
        pins |= {previous.signer_sha256, *[s.lower() for s in previous.document.get("signers", [])]}
    try:
        jws = json.loads(raw)
        header = json.loads(_b64url(jws["protected"]))
        payload_b64, signature = jws["payload"], _b64url(jws["signature"])
        document = json.loads(_b64url(payload_b64))
        signer_der = base64.b64decode(header["x5c"][0])
    except (ValueError, KeyError, TypeError, IndexError) as exc:
        raise TrustListError(f"not a trust list JWS: {exc}") from exc
    alg = header.get("alg")
    if not isinstance(alg, str) or alg.lower() == "none":
        raise TrustListError(f"refused alg {alg!r}")
    signer = hashlib.sha256(signer_der).hexdigest()
    if signer not in pins:
        raise TrustListError(f"signer {signer} is not the pinned one")
    verified = _verify(alg, signer_der, f"{jws['protected']}.{payload_b64}".encode(), signature)
    if not verified and require_signature:
        raise TrustListError("install 'kakuin-client[trust]' (cryptography) to check the "
                             "signature, or pass require_signature=False")
    if not isinstance(document, dict) or document.get("schema") != SCHEMA:
        raise TrustListError("wrong schema")
    moment = now or datetime.now(UTC)
    try:
        if _time(document["issued_at"]) > moment:
            raise TrustListError("issued in the future")
        if _time(document["next_update"]) < moment:
            raise TrustListError("stale: past next_update")
        sequence = int(document["sequence"])
    except (KeyError, ValueError) as exc:
        raise TrustListError(f"malformed trust list: {exc}") from exc
    if previous is not None and sequence < previous.sequence:
        raise TrustListError(f"sequence went back ({sequence} < {previous.sequence}): replay")
    return TrustList(document, raw, signer, verified)


def _verify(alg: str, cert_der: bytes, signing_input: bytes, signature: bytes) -> bool:
    """True if verified; False if ``cryptography`` is absent; raises if the signature is bad."""
    try:
        from cryptography import x509
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
        from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
    except ImportError:
        return False
    digest = {"256": hashes.SHA256(), "384": hashes.SHA384(), "512": hashes.SHA512()}.get(alg[-3:])
    if digest is None:
        raise TrustListError(f"unsupported alg {alg!r}")
    key = x509.load_der_x509_certificate(cert_der).public_key()
    try:
        if alg.startswith("ES") and isinstance(key, ec.EllipticCurvePublicKey):
            half = len(signature) // 2
            der = encode_dss_signature(int.from_bytes(signature[:half], "big"),
                                       int.from_bytes(signature[half:], "big"))
            key.verify(der, signing_input, ec.ECDSA(digest))
        elif alg.startswith("RS") and isinstance(key, rsa.RSAPublicKey):
            key.verify(signature, signing_input, padding.PKCS1v15(), digest)
        elif alg.startswith("PS") and isinstance(key, rsa.RSAPublicKey):
            key.verify(signature, signing_input,
                       padding.PSS(padding.MGF1(digest), digest.digest_size), digest)
        else:
            raise TrustListError(f"alg {alg!r} does not fit the signer's key")
    except InvalidSignature:
        raise TrustListError("bad signature") from None
    return True


def fetch_trust_list(transport: Transport, *, pin_sha256: str | Sequence[str],
                     previous: TrustList | None = None,
                     require_signature: bool = True) -> TrustList:
    raw = transport.request("GET", "/trust-list", auth=False).body
    return parse_trust_list(raw, pin_sha256=pin_sha256, previous=previous,
                            require_signature=require_signature)
