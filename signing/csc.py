"""Remote signing by hash: the Cloud Signature Consortium API (v2, and v1 for pyHanko).

The privacy path: a school system hashes its document locally and sends only digests, so the
document never reaches kakuin. Credentials are the caller's organization's hosted e-seals.

Signature activation data (SAD) is an AES-GCM sealed token, so whichever gunicorn worker
gets ``signHash`` can check it without shared memory. It binds the caller, the credential,
the exact multiset of hashes, the hash algorithm (when given), the count and an expiry; it is
spent once across workers through ``ca.status.consume_token``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from asn1crypto import algos
from cryptography import x509
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ca import status
from hsm.api import HashAlg, KeyManager, KeyRef, SignScheme
from hsm.errors import HsmKeyNotFound
from signing.errors import SigningError

__all__ = [
    "SPECS",
    "Authorization",
    "CscError",
    "CscService",
    "load_sad_key",
]

SPECS = {"v1": "1.0.4.0", "v2": "2.0.0.0"}
METHODS = ["credentials/list", "credentials/info", "credentials/authorize", "signatures/signHash"]
SAD_PURPOSE = "csc-sad"
_SAD_AAD = b"kakuin/csc-sad/v1"
_CREDENTIAL_ID = re.compile(r"^([1-9][0-9]{0,8})-([0-9a-f]{1,40})$")

_HASH_OIDS: dict[str, HashAlg] = {
    "2.16.840.1.101.3.4.2.1": HashAlg.SHA256,
    "2.16.840.1.101.3.4.2.2": HashAlg.SHA384,
    "2.16.840.1.101.3.4.2.3": HashAlg.SHA512,
}
_HASH_BY_SIZE = {h.digest_size: h for h in _HASH_OIDS.values()}
_OID_BY_HASH = {h: oid for oid, h in _HASH_OIDS.items()}

# signAlgo OID -> (key type, hash implied by the OID or None, scheme).
_SIGN_ALGOS: dict[str, tuple[str, HashAlg | None, SignScheme]] = {
    "1.2.840.10045.4.3.2": ("ec", HashAlg.SHA256, SignScheme.ECDSA),
    "1.2.840.10045.4.3.3": ("ec", HashAlg.SHA384, SignScheme.ECDSA),
    "1.2.840.10045.4.3.4": ("ec", HashAlg.SHA512, SignScheme.ECDSA),
    "1.2.840.10045.2.1": ("ec", None, SignScheme.ECDSA),
    "1.2.840.113549.1.1.11": ("rsa", HashAlg.SHA256, SignScheme.RSA_PKCS1V15),
    "1.2.840.113549.1.1.12": ("rsa", HashAlg.SHA384, SignScheme.RSA_PKCS1V15),
    "1.2.840.113549.1.1.13": ("rsa", HashAlg.SHA512, SignScheme.RSA_PKCS1V15),
    "1.2.840.113549.1.1.1": ("rsa", None, SignScheme.RSA_PKCS1V15),
    "1.2.840.113549.1.1.10": ("rsa", None, SignScheme.RSA_PSS),
}
_CURVE_OIDS = {"secp256r1": "1.2.840.10045.3.1.7", "secp384r1": "1.3.132.0.34"}


class CscError(SigningError):
    """A failure in CSC terms: an ``error`` code and description with the spec's HTTP status
    (CSC clients parse ``{"error", "error_description"}``, not problem+json)."""

    type = "signing/csc"
    title = "CSC request refused"

    def __init__(self, detail: str, *, error: str = "invalid_request", status: int = 400) -> None:
        super().__init__(detail)
        self.error = error
        self.status = status


def _invalid(detail: str) -> CscError:
    return CscError(detail)


@dataclass(frozen=True)
class Authorization:
    """What ``credentials/authorize`` returns: the opaque SAD and its lifetime in seconds."""

    sad: str
    expires_in: int


@dataclass(frozen=True)
class _Sad:
    id: str
    subject: str
    credential_id: str
    hashes_digest: str
    num_signatures: int
    hash_oid: str | None
    expires: int


def load_sad_key(path: Path) -> bytes:
    """The SAD sealing secret, made (0600, 32 random bytes) on first use.

    Every worker must share it, so it lives in a file under HOME rather than in memory; the
    file appears atomically (link of a complete temp file), so a racing reader never sees a
    partial key.
    """
    if not path.exists():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, secrets.token_bytes(32))
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    key = path.read_bytes()
    if len(key) < 32:
        raise ValueError(f"{path}: SAD key must be at least 32 bytes")
    return key


def _hashes_digest(raw: list[bytes]) -> str:
    """One value for the exact multiset of hashes (order does not matter, duplicates do)."""
    h = hashlib.sha256()
    for item in sorted(raw):
        h.update(len(item).to_bytes(1, "big") + item)
    return h.hexdigest()


def _decode_hashes(hashes_b64: Any, max_batch: int) -> list[bytes]:
    if not isinstance(hashes_b64, list) or not hashes_b64:
        raise _invalid("Missing (or invalid type) array parameter hash")
    if len(hashes_b64) > max_batch:
        raise _invalid("Numbers of signatures is too high")
    raw: list[bytes] = []
    for item in hashes_b64:
        if not isinstance(item, str):
            raise _invalid("Invalid Base64 hash string parameter")
        try:
            value = base64.b64decode(item, validate=True)
        except (binascii.Error, ValueError):
            raise _invalid("Invalid Base64 hash string parameter") from None
        if len(value) not in _HASH_BY_SIZE:
            raise _invalid("Invalid digest value length")
        raw.append(value)
    if len({len(v) for v in raw}) != 1:
        raise _invalid("Invalid digest value length")
    return raw


def _hash_for_oid(oid: Any) -> HashAlg | None:
    if oid is None:
        return None
    if not isinstance(oid, str) or oid not in _HASH_OIDS:
        raise _invalid("Invalid parameter hashAlgo")
    return _HASH_OIDS[oid]


def _generalized(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y%m%d%H%M%SZ")


class CscService:
    """The CSC operations over our store and HSM; one per process, built before fork.

    ``sad_key`` (at least 32 bytes, the same in every worker: see :func:`load_sad_key`) seals
    SADs; ``clock`` exists so tests can age them.
    """

    def __init__(
        self,
        store: status.Store,
        keys: KeyManager,
        sad_key: bytes,
        *,
        sad_lifetime: timedelta = timedelta(minutes=5),
        max_batch: int = 100,
        clock: Callable[[], datetime] | None = None,
        name: str = "kakuin e-seal service",
    ) -> None:
        if len(sad_key) < 32:
            raise ValueError("sad_key must be at least 32 bytes")
        self.store = store
        self.keys = keys
        self.sad_lifetime = sad_lifetime
        self.max_batch = max_batch
        self.clock = clock or (lambda: datetime.now(UTC))
        self.name = name
        aead_key = HKDF(
            algorithm=hashes.SHA256(), length=32, salt=None, info=b"kakuin csc sad v1"
        ).derive(sad_key)
        self._aead = AESGCM(aead_key)
        self._key_refs: dict[bytes, KeyRef] = {}

    # -- service and credentials ---------------------------------------------------------

    def info(self, version: str) -> dict[str, Any]:
        """``info``: bearer API tokens issued by kakuin are the only auth ("external")."""
        return {
            "specs": SPECS[version],
            "name": self.name,
            "region": "JP",
            "lang": "ja",
            "description": "角印: e-seals for Japanese schools; remote signing by hash only",
            "authType": ["external"],
            "methods": list(METHODS),
        }

    def credentials_list(self, principal: status.Principal) -> list[str]:
        """The caller's own organization's hosted e-seal (none for others' organizations)."""
        org = principal.organization_id
        if org is None or not status.may_seal(self.store, principal, org):
            return []
        try:
            cred = status.seal_credential(self.store, org)
        except status.NotFound:
            return []
        return [f"{org}-{cred.serial}"]

    def credentials_info(
        self,
        principal: status.Principal,
        credential_id: str,
        *,
        version: str = "v2",
        certificates: str = "single",
        cert_info: bool = False,
        request_id: str | None = None,
    ) -> dict[str, Any]:
        """Key, certificate(s) and authorization mode of one credential.

        SCAL is "2" (SAD bound to hashes), written as the spec's "1"/"2": pyHanko's
        ``CSCSigner`` refuses anything else.
        """
        if certificates not in ("none", "single", "chain"):
            raise _invalid("Invalid parameter certificates")
        cred = self._resolve(principal, credential_id, "csc.credentials-info", request_id)
        leaf = x509.load_der_x509_certificate(cred.certificate)
        public = leaf.public_key()
        key_ref = self._key_ref(cred.key_id, missing_ok=True)
        key: dict[str, Any] = {
            "status": "enabled" if key_ref is not None else "disabled",
            "algo": self._algos_for(public),
        }
        if isinstance(public, ec.EllipticCurvePublicKey):
            key["len"] = public.curve.key_size
            key["curve"] = _CURVE_OIDS.get(public.curve.name, "")
        elif isinstance(public, rsa.RSAPublicKey):
            key["len"] = public.key_size
        # Only valid certificates are credentials: revoked, suspended or expired ones vanish.
        cert: dict[str, Any] = {"status": "valid"}
        if certificates != "none":
            ders = cred.chain if certificates == "chain" else cred.chain[:1]
            cert["certificates"] = [base64.b64encode(d).decode() for d in ders]
        if cert_info:
            cert.update(
                issuerDN=leaf.issuer.rfc4514_string(),
                serialNumber=cred.serial,
                subjectDN=leaf.subject.rfc4514_string(),
                validFrom=_generalized(leaf.not_valid_before_utc),
                validTo=_generalized(leaf.not_valid_after_utc),
            )
        out: dict[str, Any] = {
            "description": f"e-seal of {cred.organization_name or cred.organization_id}",
            "key": key,
            "cert": cert,
            "SCAL": "2",
            "multisign": self.max_batch,
            "lang": "ja",
        }
        if version == "v1":
            out.update(authMode="explicit", PIN={"presence": "false"}, OTP={"presence": "false"})
        else:
            out["auth"] = {"mode": "explicit", "objects": []}
        return out

    # -- authorization and signing ------------------------------------------------------

    def authorize(
        self,
        principal: status.Principal,
        credential_id: str,
        *,
        num_signatures: Any,
        hashes_b64: Any,
        hash_algo: str | None = None,
        request_id: str | None = None,
    ) -> Authorization:
        """A SAD for exactly these hashes, this caller and this credential, for a few
        minutes. Hashes are mandatory (SCAL 2): an unbound SAD would sign anything."""
        self._resolve(principal, credential_id, "csc.authorize", request_id)
        if isinstance(num_signatures, bool) or not isinstance(num_signatures, int):
            raise _invalid("Missing (or invalid type) integer parameter numSignatures")
        if num_signatures < 1:
            raise _invalid("Invalid value for parameter numSignatures")
        if num_signatures > self.max_batch:
            raise _invalid("Numbers of signatures is too high")
        raw = _decode_hashes(hashes_b64, self.max_batch)
        if len(raw) != num_signatures:
            raise _invalid("Invalid value for parameter numSignatures")
        alg = _hash_for_oid(hash_algo)
        if alg is not None and alg.digest_size != len(raw[0]):
            raise _invalid("Invalid digest value length")
        lifetime = int(self.sad_lifetime.total_seconds())
        sad = _Sad(
            id=secrets.token_hex(16),
            subject=principal.actor,
            credential_id=credential_id,
            hashes_digest=_hashes_digest(raw),
            num_signatures=num_signatures,
            hash_oid=hash_algo,
            expires=int(self.clock().timestamp()) + lifetime,
        )
        return Authorization(self._seal(sad), lifetime)

    def sign_hash(
        self,
        principal: status.Principal,
        credential_id: str,
        *,
        sad: str,
        hashes_b64: Any,
        sign_algo: str,
        hash_algo: str | None = None,
        sign_algo_params: Any = None,
        request_id: str | None = None,
        actor: str | None = None,
        receipts: list[dict[str, str]] | None = None,
    ) -> list[str]:
        """Sign the hashes the SAD authorized, once; signatures as the algorithm produces
        them (ECDSA: DER ECDSA-Sig-Value), base64. Audited by digest and count only; each
        hash is a seal event (with ``actor``) whose receipt is appended to ``receipts``."""
        if actor is not None and not isinstance(actor, str):
            raise _invalid("Invalid parameter actor")
        try:
            status.check_actor(actor)
        except status.InvalidRequest:
            raise _invalid("Invalid parameter actor") from None
        cred = self._resolve(principal, credential_id, "csc.signHash", request_id)
        if not isinstance(sad, str) or not sad:
            raise _invalid("Missing (or invalid type) string parameter SAD")
        raw = _decode_hashes(hashes_b64, self.max_batch)
        claims = self._open(sad)
        if claims.subject != principal.actor or claims.credential_id != credential_id:
            raise _invalid("Invalid parameter SAD")
        if int(self.clock().timestamp()) >= claims.expires:
            raise _invalid("SAD expired")
        if claims.hashes_digest != _hashes_digest(raw) or len(raw) != claims.num_signatures:
            raise _invalid("Hash is not authorized by the SAD")
        key_ref = self._key_ref(cred.key_id)
        assert key_ref is not None
        hash_alg, scheme = self._mechanism(
            key_ref, sign_algo, _hash_for_oid(hash_algo), sign_algo_params
        )
        if hash_alg.digest_size != len(raw[0]):
            raise _invalid("Invalid digest value length")
        if claims.hash_oid is not None and claims.hash_oid != _OID_BY_HASH[hash_alg]:
            raise _invalid("Invalid parameter hashAlgo")
        expires_at = datetime.fromtimestamp(claims.expires, UTC)
        if not status.consume_token(
            self.store, claims.id, purpose=SAD_PURPOSE, expires_at=expires_at
        ):
            raise _invalid("Invalid parameter SAD: already used")
        signatures = [self.keys.sign_digest(key_ref, digest, hash_alg, scheme) for digest in raw]
        assert cred.organization_id is not None
        # The seal event names the signed hash (SHA-256 of it when it is longer).
        done = status.record_seals(
            self.store,
            principal,
            cred.organization_id,
            [d.hex() if len(d) == 32 else hashlib.sha256(d).hexdigest() for d in raw],
            kind="csc",
            level=None,
            actor=actor,
            request_id=request_id,
            action="csc.signHash",
            object_type="certificate",
            object_id=cred.serial,
            digest=hashlib.sha256(b"".join(raw)).hexdigest(),
            details={
                "count": len(raw),
                "hash_algorithm": hash_alg.value,
                "sign_algorithm": sign_algo,
                "sad": claims.id,
            },
        )
        if receipts is not None:
            receipts.extend(r.to_dict() for r in done)
        return [base64.b64encode(s).decode() for s in signatures]

    # -- internals ----------------------------------------------------------------------

    def _resolve(
        self, principal: status.Principal, credential_id: str, action: str, request_id: str | None
    ) -> status.Credential:
        """The credential if the caller may use it: 403 (audited) for another organization's,
        400 for one that is not (or no longer) a valid hosted e-seal."""
        if not isinstance(credential_id, str) or not credential_id:
            raise _invalid("Missing (or invalid type) string parameter credentialID")
        match = _CREDENTIAL_ID.match(credential_id)
        if match is None:
            raise _invalid("Invalid parameter credentialID")
        org, serial = int(match.group(1)), match.group(2)
        if not status.may_seal(self.store, principal, org):
            status.record(
                self.store,
                actor=principal.actor,
                action="access.denied",
                organization_id=org,
                object_type="csc-credential",
                object_id=credential_id,
                request_id=request_id,
                details={"attempted": action, "role": principal.role},
            )
            raise CscError(
                "this credential belongs to another organization",
                error="access_denied",
                status=403,
            )
        try:
            cred = status.seal_credential(self.store, org)
        except status.NotFound:
            raise _invalid("Invalid parameter credentialID") from None
        if cred.serial != serial:
            raise _invalid("Invalid parameter credentialID")
        return cred

    def _key_ref(self, key_id: bytes, *, missing_ok: bool = False) -> KeyRef | None:
        ref = self._key_refs.get(key_id)
        if ref is None:
            try:
                ref = self.keys.find(key_id=key_id)
            except HsmKeyNotFound:
                if missing_ok:
                    return None
                raise CscError(
                    "the credential's key is not available", error="server_error", status=503
                ) from None
            self._key_refs[key_id] = ref
        return ref

    @staticmethod
    def _algos_for(public: Any) -> list[str]:
        kind = "ec" if isinstance(public, ec.EllipticCurvePublicKey) else "rsa"
        return [oid for oid, (k, _, _) in _SIGN_ALGOS.items() if k == kind]

    @staticmethod
    def _mechanism(
        key_ref: KeyRef, sign_algo: Any, hash_alg: HashAlg | None, params_b64: str | None
    ) -> tuple[HashAlg, SignScheme]:
        """(hash, scheme) from signAlgo/hashAlgo/signAlgoParams; they must agree with each
        other and with the key."""
        if not isinstance(sign_algo, str) or not sign_algo:
            raise _invalid("Missing (or invalid type) string parameter signAlgo")
        entry = _SIGN_ALGOS.get(sign_algo)
        kind = "rsa" if key_ref.algorithm.is_rsa else "ec"
        if entry is None or entry[0] != kind:
            raise _invalid("Invalid parameter signAlgo")
        _, implied, scheme = entry
        if implied is not None and hash_alg is not None and implied != hash_alg:
            raise _invalid("Invalid parameter hashAlgo")
        if scheme is SignScheme.RSA_PSS:
            pss_hash = CscService._pss_hash(params_b64)
            if hash_alg is not None and hash_alg != pss_hash:
                raise _invalid("Invalid parameter hashAlgo")
            return pss_hash, scheme
        if params_b64 is not None:
            raise _invalid("Invalid parameter signAlgoParams")
        chosen = implied or hash_alg
        if chosen is None:
            raise _invalid("Missing (or invalid type) string parameter hashAlgo")
        return chosen, scheme

    @staticmethod
    def _pss_hash(params_b64: str | None) -> HashAlg:
        """The HSM does PSS with MGF1 of the same hash and salt = hash length: only that."""
        if not isinstance(params_b64, str):
            raise _invalid("Missing (or invalid type) string parameter signAlgoParams")
        try:
            params = algos.RSASSAPSSParams.load(base64.b64decode(params_b64, validate=True))
            hash_name = params["hash_algorithm"]["algorithm"].native
            mgf = params["mask_gen_algorithm"]
            ok = (
                mgf["algorithm"].native == "mgf1"
                and mgf["parameters"]["algorithm"].native == hash_name
                and params["trailer_field"].native == "trailer_field_bc"
            )
            alg = HashAlg(hash_name)
            ok = ok and params["salt_length"].native == alg.digest_size
        except (ValueError, TypeError, KeyError, binascii.Error):
            raise _invalid("Invalid parameter signAlgoParams") from None
        if not ok:
            raise _invalid("Invalid parameter signAlgoParams: MGF1 and salt = hash length only")
        return alg

    def _seal(self, sad: _Sad) -> str:
        payload = json.dumps(sad.__dict__, separators=(",", ":")).encode()
        nonce = secrets.token_bytes(12)
        sealed = nonce + self._aead.encrypt(nonce, payload, _SAD_AAD)
        return base64.urlsafe_b64encode(sealed).decode().rstrip("=")

    def _open(self, token: str) -> _Sad:
        try:
            blob = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
            if len(blob) < 12 + 16 or len(blob) > 2048:
                raise ValueError
            payload = self._aead.decrypt(blob[:12], blob[12:], _SAD_AAD)
            return _Sad(**json.loads(payload))
        except (InvalidTag, ValueError, TypeError, binascii.Error):
            raise _invalid("Invalid parameter SAD") from None
