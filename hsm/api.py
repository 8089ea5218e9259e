"""The small interface the rest of kakuin sees: key references, algorithms, a KeyManager.

Callers hold a :class:`KeyRef` (an identifier plus the public key), never a private key.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol, runtime_checkable


class KeyAlgorithm(StrEnum):
    RSA_2048 = "RSA-2048"
    RSA_3072 = "RSA-3072"
    RSA_4096 = "RSA-4096"
    ECDSA_P256 = "ECDSA-P256"
    ECDSA_P384 = "ECDSA-P384"

    @property
    def is_rsa(self) -> bool:
        return self.value.startswith("RSA")

    @property
    def rsa_bits(self) -> int:
        if not self.is_rsa:
            raise ValueError(f"{self.value} is not RSA")
        return int(self.value.split("-")[1])

    @property
    def curve(self) -> str:
        """SEC 2 curve name, as PKCS#11 and cryptography name it."""
        return {"ECDSA-P256": "secp256r1", "ECDSA-P384": "secp384r1"}[self.value]

    @property
    def default_hash(self) -> HashAlg:
        return HashAlg.SHA384 if self is KeyAlgorithm.ECDSA_P384 else HashAlg.SHA256


class HashAlg(StrEnum):
    SHA256 = "sha256"
    SHA384 = "sha384"
    SHA512 = "sha512"

    @property
    def digest_size(self) -> int:
        return _DIGEST_SIZES[self.value]

    def digest(self, data: bytes) -> bytes:
        return _HASHERS[self.value](data).digest()


# Looked up per signature: constants beat hashlib.new() on the hot path.
_DIGEST_SIZES = {"sha256": 32, "sha384": 48, "sha512": 64}
_HASHERS = {"sha256": hashlib.sha256, "sha384": hashlib.sha384, "sha512": hashlib.sha512}


class SignScheme(StrEnum):
    RSA_PKCS1V15 = "rsa-pkcs1v15"
    RSA_PSS = "rsa-pss"
    ECDSA = "ecdsa"


@dataclass(frozen=True)
class KeyRef:
    """A private key held in the HSM: its CKA_ID, CKA_LABEL, algorithm and public key.

    ``public_key_der`` is the DER SubjectPublicKeyInfo, so any library can load it.
    """

    key_id: bytes
    label: str
    algorithm: KeyAlgorithm
    public_key_der: bytes = field(repr=False)

    @property
    def key_id_hex(self) -> str:
        return self.key_id.hex()

    @property
    def public_key_sha256(self) -> str:
        return hashlib.sha256(self.public_key_der).hexdigest()


@dataclass(frozen=True)
class TokenInfo:
    module: str
    manufacturer: str
    library_description: str
    slot_description: str
    token_label: str
    token_model: str
    token_serial: str
    mechanisms: tuple[str, ...]


@runtime_checkable
class KeyManager(Protocol):
    """What kakuin needs from key custody: make, find, list and use private keys."""

    def generate(
        self, algorithm: KeyAlgorithm, label: str, key_id: bytes | None = None
    ) -> KeyRef: ...

    def find(self, *, key_id: bytes | None = None, label: str | None = None) -> KeyRef: ...

    def keys(self) -> list[KeyRef]: ...

    def destroy(self, key: KeyRef) -> None: ...

    def sign_digest(
        self, key: KeyRef, digest: bytes, hash_alg: HashAlg, scheme: SignScheme
    ) -> bytes:
        """Sign a precomputed digest; ECDSA signatures come back DER-encoded."""
        ...

    def sign(self, key: KeyRef, data: bytes, hash_alg: HashAlg, scheme: SignScheme) -> bytes: ...

    def info(self) -> TokenInfo: ...

    def close(self) -> None: ...
