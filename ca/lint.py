"""Certificate linting with pkilint, used before anything is signed in the HSM.

Like Let's Encrypt's pre-issuance linting: the certificate is built and signed with a
throwaway key, linted, and only a clean one is signed for real.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

from pkilint import etsi, finding_filter, loader
from pkilint.etsi.etsi_constants import CertificateType
from pkilint.pkix import certificate, extension, name
from pkilint.validation import ValidationFindingSeverity

# Severities at or above which issuance is refused.
BLOCKING = ("FATAL", "ERROR")


@dataclass(frozen=True)
class Finding:
    severity: str
    code: str
    message: str | None
    path: str

    def __str__(self) -> str:
        msg = f": {self.message}" if self.message else ""
        return f"{self.severity} {self.code} @ {self.path}{msg}"


@cache
def _pkix_validator() -> Any:
    return certificate.create_pkix_certificate_validator_container(
        certificate.create_decoding_validators(
            name.ATTRIBUTE_TYPE_MAPPINGS, extension.EXTENSION_MAPPINGS
        ),
        [
            certificate.create_issuer_validator_container([]),
            certificate.create_validity_validator_container(),
            certificate.create_subject_validator_container([]),
            certificate.create_extensions_validator_container([]),
            certificate.create_spki_validator_container([]),
        ],
    )


def _findings(results: Any) -> list[Finding]:
    out = []
    for result in results:
        for desc in result.finding_descriptions:
            out.append(
                Finding(
                    severity=desc.finding.severity.name,
                    code=desc.finding.code,
                    message=desc.message,
                    path=str(result.node.path),
                )
            )
    return out


def lint_pkix(der: bytes) -> list[Finding]:
    """RFC 5280 lints (pkilint's ``lint_pkix_cert``)."""
    doc = loader.RFC5280CertificateDocumentLoader().load_der_document(der, "certificate")
    return _findings(_pkix_validator().validate(doc.root))


@cache
def _etsi_validator(certificate_type: CertificateType) -> tuple[Any, Any]:
    validator = certificate.create_pkix_certificate_validator_container(
        etsi.create_decoding_validators(certificate_type),
        etsi.create_validators(certificate_type),
    )
    return validator, etsi.create_etsi_finding_filters(certificate_type)


def lint_etsi(der: bytes, certificate_type: CertificateType) -> list[Finding]:
    """ETSI EN 319 412 lints (pkilint's ``lint_etsi_cert lint -t <type>``).

    The ETSI validator is built on pkilint's RFC 5280 one, so it includes the ``lint_pkix``
    checks; findings superseded by stricter requirements are filtered as the CLI does.
    """
    validator, filters = _etsi_validator(certificate_type)
    doc = loader.RFC5280CertificateDocumentLoader().load_der_document(der, "certificate")
    results, _ = finding_filter.filter_results(filters, validator.validate(doc.root))
    return _findings(results)


def lint_etsi_legal_person(der: bytes) -> list[Finding]:
    """EN 319 412-3 legal person, the type of an e-seal (``NCP-LEGAL-PERSON-CERTIFICATE``)."""
    return lint_etsi(der, CertificateType.NCP_LEGAL_PERSON_CERTIFICATE)


# Certificate kind (Profile.kind) -> linter. Any other kind gets the RFC 5280 baseline.
_LINTERS: dict[str, Callable[[bytes], list[Finding]]] = {
    "eseal": lint_etsi_legal_person,
}


def lint_for_profile(der: bytes, profile_kind: str) -> list[Finding]:
    """The lints for a certificate of ``profile_kind``: ETSI legal person for e-seals,
    RFC 5280 for the CA, OCSP and TSA certificates (no ETSI end-entity profile fits them)."""
    return _LINTERS.get(profile_kind, lint_pkix)(der)


def blocking(findings: list[Finding], ignore: tuple[str, ...] = ()) -> list[Finding]:
    """Findings that stop issuance; ``ignore`` names finding codes a deployment tolerates."""
    return [f for f in findings if f.severity in BLOCKING and f.code not in ignore]


__all__ = [
    "BLOCKING",
    "Finding",
    "ValidationFindingSeverity",
    "blocking",
    "lint_etsi",
    "lint_etsi_legal_person",
    "lint_for_profile",
    "lint_pkix",
]
