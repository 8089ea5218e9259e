"""A pyHanko ``Signer`` whose private key stays in our HSM.

pyHanko builds the CMS container; only the raw signature crosses into :mod:`hsm`
(``KeyManager.sign_digest``), so the key never leaves the token. pyHanko's own
``PKCS11Signer`` would open a PKCS#11 session of its own beside ours, which SoftHSM 2.6 does
not survive under concurrent use (design.md, measured pitfalls); our key manager keeps one.

Signers are cached per (key manager, key id, certificate serial), and each keeps what every
signature repeats as DER: the signing-certificate-v2 attribute, the certificate set, the
signer identifier and algorithm identifiers. pyHanko rebuilds those from parsed asn1crypto
objects for every document, and asn1crypto re-encodes a parsed certificate whenever it is
placed into a new structure: two thirds of pyHanko's ~40 ms per PAdES signature (measured,
bench/seal.py). The output is the same CMS (tests/test_pdf.py compares the two).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

from asn1crypto import algos, cms, x509
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from pyhanko.sign.general import as_signing_certificate_v2, simple_cms_attribute
from pyhanko.sign.signers import Signer
from pyhanko.sign.signers.pdf_cms import PdfCMSSignedAttributes
from pyhanko_certvalidator.registry import SimpleCertificateStore

from ca.status import Credential
from hsm.api import HashAlg, KeyAlgorithm, KeyManager, KeyRef, SignScheme

__all__ = ["HsmSigner", "signature_size", "signer_for"]

_MECHANISMS = {
    KeyAlgorithm.ECDSA_P256: "sha256_ecdsa",
    KeyAlgorithm.ECDSA_P384: "sha384_ecdsa",
}


def signature_size(algorithm: KeyAlgorithm) -> int:
    """Largest raw signature (DER for ECDSA) the key can produce, in bytes."""
    return len(_dummy_signature(algorithm))


def _dummy_signature(algorithm: KeyAlgorithm) -> bytes:
    """A placeholder exactly as long as the longest real signature (dry runs size the CMS)."""
    if algorithm.is_rsa:
        return b"\x00" * (algorithm.rsa_bits // 8)
    size = 32 if algorithm is KeyAlgorithm.ECDSA_P256 else 48
    big = 1 << (8 * size - 1)  # high bit set: a leading zero, the longest form
    return encode_dss_signature(big, big)


class HsmSigner(Signer):
    """Signs with an HSM-held key: ECDSA (SHA-256 for P-256, SHA-384 for P-384) or RSA
    PKCS#1 v1.5 with SHA-256, the mechanisms every PAdES validator accepts."""

    def __init__(self, keys: KeyManager, key: KeyRef, credential: Credential) -> None:
        chain = [x509.Certificate.load(der) for der in credential.chain]
        if key.public_key_der != chain[0].public_key.dump():
            raise ValueError(f"HSM key {key.key_id_hex} does not match certificate "
                             f"{credential.serial}")
        mechanism = _MECHANISMS.get(key.algorithm, "sha256_rsa")
        super().__init__(
            signing_cert=chain[0],
            cert_registry=SimpleCertificateStore.from_certs(chain[1:]),  # the leaf goes in anyway
            signature_mechanism=algos.SignedDigestAlgorithm({"algorithm": mechanism}),
        )
        self.keys = keys
        self.key = key
        self.credential = credential
        self.hash = HashAlg(mechanism.split("_", 1)[0])
        self.scheme = SignScheme.RSA_PKCS1V15 if key.algorithm.is_rsa else SignScheme.ECDSA
        self._dummy = _dummy_signature(key.algorithm)
        self.max_signature = len(self._dummy)
        leaf = chain[0]
        # what every signature repeats, encoded once
        self._content_type = simple_cms_attribute("content_type", "data").dump()
        self._signing_certificate = cms.CMSAttribute(
            {"type": "signing_certificate_v2", "values": [as_signing_certificate_v2(leaf)]}
        ).dump()
        self._certificates = cms.CertificateSet(
            [cms.CertificateChoices(name="certificate", value=c) for c in chain]
        ).dump()
        self._sid = cms.SignerIdentifier(
            {"issuer_and_serial_number": {"issuer": leaf.issuer,
                                          "serial_number": leaf.serial_number}}
        ).dump()
        self._digest_algorithm = algos.DigestAlgorithm({"algorithm": self.hash.value}).dump()
        self._signature_algorithm = algos.SignedDigestAlgorithm({"algorithm": mechanism}).dump()

    async def async_sign_raw(
        self, data: bytes, digest_algorithm: str, dry_run: bool = False
    ) -> bytes:
        if dry_run:
            return self._dummy
        if digest_algorithm != self.hash.value:
            raise ValueError(f"{self.key.algorithm} signs with {self.hash}, not {digest_algorithm}")
        return self.keys.sign_digest(self.key, self.hash.digest(data), self.hash, self.scheme)

    def _plain_pades(self, content_type: Any = "data") -> bool:
        """The case the fast paths cover: a PDF signature with pyHanko's default attributes."""
        return (
            content_type == "data"
            and self.signed_attr_prov_spec is None
            and self.unsigned_attr_prov_spec is None
            and not self.attribute_certs
            and self.embed_roots
        )

    async def signed_attrs(
        self,
        data_digest: bytes,
        digest_algorithm: str,
        attr_settings: PdfCMSSignedAttributes | None = None,
        content_type: Any = "data",
        use_pades: bool = False,
        timestamper: Any = None,
        dry_run: bool = False,
        is_pdf_sig: bool = True,
    ) -> cms.CMSAttributes:
        """PAdES: content type, message digest, signing-certificate-v2 (no signing-time),
        exactly as pyHanko's CAdES provider makes them, from cached DER."""
        settings = attr_settings or PdfCMSSignedAttributes()
        if use_pades and is_pdf_sig and self._plain_pades(content_type) and (
            settings.cades_signed_attrs is None
        ):
            return cms.CMSAttributes(
                [
                    cms.CMSAttribute.load(self._content_type),
                    simple_cms_attribute("message_digest", data_digest),
                    cms.CMSAttribute.load(self._signing_certificate),
                ]
            )
        return await super().signed_attrs(
            data_digest, digest_algorithm, attr_settings=attr_settings,
            content_type=content_type, use_pades=use_pades, timestamper=timestamper,
            dry_run=dry_run, is_pdf_sig=is_pdf_sig,
        )

    async def async_sign_prescribed_attributes(
        self,
        digest_algorithm: str,
        signed_attrs: cms.CMSAttributes,
        cms_version: Any = "v1",
        dry_run: bool = False,
        timestamper: Any = None,
        encap_content_info: Any = None,
    ) -> cms.ContentInfo:
        """pyHanko's packaging, with the fixed parts loaded from DER instead of rebuilt."""
        if (
            encap_content_info not in (None, {"content_type": "data"})
            or cms_version != "v1"
            or not self._plain_pades()
            or digest_algorithm.lower() != self.hash.value
        ):
            return await super().async_sign_prescribed_attributes(
                digest_algorithm, signed_attrs, cms_version=cms_version, dry_run=dry_run,
                timestamper=timestamper, encap_content_info=encap_content_info,
            )
        signature = await self.async_sign_raw(signed_attrs.dump(), self.hash.value, dry_run)
        unsigned = await self.unsigned_attrs(
            self.hash.value, signature, signed_attrs=signed_attrs, timestamper=timestamper,
            dry_run=dry_run,
        )
        info: dict[str, Any] = {
            "version": "v1",
            "sid": cms.SignerIdentifier.load(self._sid),
            "digest_algorithm": algos.DigestAlgorithm.load(self._digest_algorithm),
            "signed_attrs": signed_attrs,
            "signature_algorithm": algos.SignedDigestAlgorithm.load(self._signature_algorithm),
            "signature": signature,
        }
        if unsigned is not None:
            info["unsigned_attrs"] = unsigned
        signed_data = {
            "version": "v1",
            "digest_algorithms": [algos.DigestAlgorithm.load(self._digest_algorithm)],
            "encap_content_info": {"content_type": "data"},
            "certificates": cms.CertificateSet.load(self._certificates),
            "signer_infos": [cms.SignerInfo(info)],
        }
        return cms.ContentInfo({"content_type": "signed_data", "content": signed_data})


_CACHE: OrderedDict[tuple[int, bytes, str], HsmSigner] = OrderedDict()
_CACHE_SIZE = 256
_LOCK = threading.Lock()


def signer_for(keys: KeyManager, credential: Credential) -> HsmSigner:
    """The (cached) signer for ``credential``'s HSM key; a renewed certificate has a new
    serial and so gets a new entry."""
    cache_key = (id(keys), credential.key_id, credential.serial)
    with _LOCK:
        signer = _CACHE.get(cache_key)
        if signer is not None and signer.keys is keys and signer.credential == credential:
            _CACHE.move_to_end(cache_key)
            return signer
    signer = HsmSigner(keys, keys.find(key_id=credential.key_id), credential)
    with _LOCK:
        _CACHE[cache_key] = signer
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
    return signer
