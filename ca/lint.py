"""Certificate linting with pkilint, used before anything is signed in the HSM.

Like Let's Encrypt's pre-issuance linting: the certificate is built and signed with a
throwaway key, linted, and only a clean one is signed for real.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Any

from pkilint import loader
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


def blocking(findings: list[Finding]) -> list[Finding]:
    return [f for f in findings if f.severity in BLOCKING]


__all__ = ["BLOCKING", "Finding", "ValidationFindingSeverity", "blocking", "lint_pkix"]
