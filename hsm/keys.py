"""HSM keys dressed as ``cryptography`` private keys.

cryptography's certificate, CRL and OCSP builders call ``key.sign(data, ...)`` on whatever
private-key object they are given; by subclassing its abstract key classes the standard
builders sign through the HSM and no private key ever exists in this process.
Everything that would reveal the private key raises.
"""

from __future__ import annotations

from typing import Any, NoReturn

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

from hsm.api import HashAlg, KeyManager, KeyRef, SignScheme
from hsm.errors import HsmUnsupported

_HASHES = {"sha256": HashAlg.SHA256, "sha384": HashAlg.SHA384, "sha512": HashAlg.SHA512}


def _hash_alg(algorithm: Any) -> tuple[HashAlg, bool]:
    """Map a cryptography hash (or Prehashed) to ours; say whether data is a digest."""
    prehashed = isinstance(algorithm, Prehashed)
    name = algorithm._algorithm.name if prehashed else getattr(algorithm, "name", None)
    if name not in _HASHES:
        raise HsmUnsupported(f"hash {name!r} is not supported by kakuin's HSM keys")
    return _HASHES[name], prehashed


def _no_export() -> NoReturn:
    raise HsmUnsupported("private keys never leave the HSM")


class HsmEllipticCurvePrivateKey(ec.EllipticCurvePrivateKey):
    def __init__(self, manager: KeyManager, ref: KeyRef) -> None:
        if ref.algorithm.is_rsa:
            raise ValueError("not an EC key")
        self.manager = manager
        self.ref = ref
        pub = serialization.load_der_public_key(ref.public_key_der)
        assert isinstance(pub, ec.EllipticCurvePublicKey)
        self._public = pub

    def sign(
        self,
        data: bytes | bytearray | memoryview,
        signature_algorithm: ec.EllipticCurveSignatureAlgorithm,
    ) -> bytes:
        if not isinstance(signature_algorithm, ec.ECDSA):
            raise HsmUnsupported("only ECDSA signatures are supported")
        hash_alg, prehashed = _hash_alg(signature_algorithm.algorithm)
        digest = bytes(data) if prehashed else hash_alg.digest(bytes(data))
        return self.manager.sign_digest(self.ref, digest, hash_alg, SignScheme.ECDSA)

    def public_key(self) -> ec.EllipticCurvePublicKey:
        return self._public

    @property
    def curve(self) -> ec.EllipticCurve:
        return self._public.curve

    @property
    def key_size(self) -> int:
        return self._public.key_size

    def exchange(self, algorithm: ec.ECDH, peer_public_key: ec.EllipticCurvePublicKey) -> bytes:
        raise HsmUnsupported("kakuin's HSM keys sign only")

    def private_numbers(self) -> ec.EllipticCurvePrivateNumbers:
        _no_export()

    def private_bytes(self, *args: Any, **kwargs: Any) -> bytes:
        _no_export()

    def __copy__(self) -> HsmEllipticCurvePrivateKey:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> HsmEllipticCurvePrivateKey:
        return self


class HsmRsaPrivateKey(rsa.RSAPrivateKey):
    def __init__(self, manager: KeyManager, ref: KeyRef) -> None:
        if not ref.algorithm.is_rsa:
            raise ValueError("not an RSA key")
        self.manager = manager
        self.ref = ref
        pub = serialization.load_der_public_key(ref.public_key_der)
        assert isinstance(pub, rsa.RSAPublicKey)
        self._public = pub

    def sign(
        self,
        data: bytes | bytearray | memoryview,
        padding_: padding.AsymmetricPadding,
        algorithm: hashes.HashAlgorithm | Prehashed | Any,
    ) -> bytes:
        hash_alg, prehashed = _hash_alg(algorithm)
        digest = bytes(data) if prehashed else hash_alg.digest(bytes(data))
        if isinstance(padding_, padding.PKCS1v15):
            scheme = SignScheme.RSA_PKCS1V15
        elif isinstance(padding_, padding.PSS):
            salt = padding_._salt_length
            if salt not in (padding.PSS.DIGEST_LENGTH, hash_alg.digest_size) and not (
                salt is padding.PSS.AUTO or salt is padding.PSS.MAX_LENGTH
            ):
                raise HsmUnsupported("PSS salt must equal the digest length")
            mgf = getattr(padding_, "_mgf", None)
            mgf_hash = getattr(mgf, "_algorithm", None)
            if mgf_hash is not None and getattr(mgf_hash, "name", None) != hash_alg.value:
                raise HsmUnsupported("PSS MGF1 hash must equal the signature hash")
            scheme = SignScheme.RSA_PSS
        else:
            raise HsmUnsupported(f"padding {padding_.name} is not supported")
        return self.manager.sign_digest(self.ref, digest, hash_alg, scheme)

    def public_key(self) -> rsa.RSAPublicKey:
        return self._public

    @property
    def key_size(self) -> int:
        return self._public.key_size

    def decrypt(self, ciphertext: bytes, padding: padding.AsymmetricPadding) -> bytes:
        raise HsmUnsupported("kakuin's HSM keys sign only")

    def private_numbers(self) -> rsa.RSAPrivateNumbers:
        _no_export()

    def private_bytes(self, *args: Any, **kwargs: Any) -> bytes:
        _no_export()

    def __copy__(self) -> HsmRsaPrivateKey:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> HsmRsaPrivateKey:
        return self


HsmPrivateKey = HsmEllipticCurvePrivateKey | HsmRsaPrivateKey


def private_key(manager: KeyManager, ref: KeyRef) -> HsmPrivateKey:
    """A ``cryptography`` private key whose ``sign`` runs in the HSM."""
    if ref.algorithm.is_rsa:
        return HsmRsaPrivateKey(manager, ref)
    return HsmEllipticCurvePrivateKey(manager, ref)
