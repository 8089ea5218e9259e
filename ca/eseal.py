"""E-seal (eシール) certificates: ETSI EN 319 412-3 legal-person subject and QCStatements.

The profile (config/profiles/eseal.toml) says what to assert; this module turns it and the
organization's identity into the subject name and the QCStatements extension that
``ca.issuer.build`` adds to the usual RFC 5280 extensions. cryptography has no QCStatements
builder, so the extension is DER-encoded here with pyHanko's asn1crypto schema.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, ClassVar

from asn1crypto import core
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.x509.name import _ASN1Type
from cryptography.x509.oid import NameOID
from pyhanko.sign.ades import qualified_asn1

from ca.errors import CAError
from ca.profiles import Profile, ProfileError

QC_STATEMENTS = x509.ObjectIdentifier("1.3.6.1.5.5.7.1.3")  # id-pe-qcStatements, RFC 3739
PKIX_QC_SYNTAX_V2 = "1.3.6.1.5.5.7.11.2"  # id-qcs-pkixQCSyntax-v2, RFC 3739
QC_COMPLIANCE = "0.4.0.1862.1.1"  # id-etsi-qcs-QcCompliance, EN 319 412-5
QC_TYPE = "0.4.0.1862.1.6"  # id-etsi-qcs-QcType
QC_CC_LEGISLATION = "0.4.0.1862.1.7"  # id-etsi-qcs-QcCClegislation

QC_TYPES = {
    "esign": "0.4.0.1862.1.6.1",
    "eseal": "0.4.0.1862.1.6.2",
    "web": "0.4.0.1862.1.6.3",
}
SEMANTICS_IDS = {"legal": "0.4.0.194121.1.2"}  # id-etsi-qcs-semanticsId-Legal, EN 319 412-1

# EN 319 412-1 §5.1.4: 3-char scheme (or 2 chars + ':' for a national scheme), country, '-', ref.
_ORG_ID = re.compile(r"^[A-Z]{2}[A-Z:][A-Z]{2}-\S+$")
_CORPORATE_NUMBER = re.compile(r"^[1-9][0-9]{12}$")
_SCHOOL_CODE = re.compile(r"^[A-Z][0-9]{12}$")


class EsealError(CAError):
    status = 422
    type = "ca/eseal-invalid"
    title = "E-seal certificate data invalid"


class _NameRegistrationAuthorities(core.SequenceOf):
    _child_spec = asn1_x509.GeneralName


class _SemanticsInformation(core.Sequence):
    _fields: ClassVar = [
        ("semantics_identifier", core.ObjectIdentifier, {"optional": True}),
        ("name_registration_authorities", _NameRegistrationAuthorities, {"optional": True}),
    ]


class _QcStatementId(qualified_asn1.QcStatementId):
    _map: ClassVar = {**qualified_asn1.QcStatementId._map, PKIX_QC_SYNTAX_V2: "pkix_qc_syntax_v2"}


class _QcStatement(qualified_asn1.QcStatement):
    _fields: ClassVar = [
        ("statement_id", _QcStatementId),
        ("statement_info", core.Any, {"optional": True}),
    ]
    _oid_specs: ClassVar = {
        **qualified_asn1.QcStatement._oid_specs,
        "pkix_qc_syntax_v2": _SemanticsInformation,
    }


class QcStatements(qualified_asn1.QcStatements):
    """pyHanko's RFC 3739 / EN 319 412-5 QCStatements, plus the RFC 3739 semantics statement
    (EN 319 412-1 legal-person semantics) pyHanko's schema does not name; also used by tests
    to decode what was issued."""

    _child_spec = _QcStatement


@dataclass(frozen=True)
class EsealSettings:
    """The profile's ``[eseal]`` table, checked once so a typo fails loudly, not silently."""

    qc_type: str
    semantics_identifier: str
    accreditation_declared: bool
    legislation: tuple[str, ...]
    registration_authorities: dict[str, str]


def eseal_settings(profile: Profile) -> EsealSettings:
    data: dict[str, Any] = profile.extra.get("eseal", {})
    accreditation = data.get("accreditation", {})
    settings = EsealSettings(
        qc_type=str(data.get("qc_type", "eseal")),
        semantics_identifier=str(data.get("semantics_identifier", "legal")),
        accreditation_declared=bool(accreditation.get("declared", False)),
        legislation=tuple(str(c) for c in accreditation.get("legislation", ())),
        registration_authorities={
            str(k): str(v) for k, v in data.get("registration_authorities", {}).items()
        },
    )
    if settings.qc_type not in QC_TYPES:
        raise ProfileError(f"{profile.name}: unknown eseal.qc_type {settings.qc_type!r}")
    if settings.semantics_identifier not in SEMANTICS_IDS:
        raise ProfileError(
            f"{profile.name}: unknown eseal.semantics_identifier {settings.semantics_identifier!r}"
        )
    if settings.accreditation_declared and not settings.legislation:
        # QcCompliance without QcCClegislation claims an EU qualified certificate (EN 319 412-5).
        raise ProfileError(f"{profile.name}: a declared accreditation needs its legislation")
    return settings


def corporate_number_identifier(number: str) -> str:
    """``NTRJP-<法人番号>`` after checking the 13-digit corporate number's check digit."""
    if not _CORPORATE_NUMBER.match(number):
        raise EsealError(f"corporate number must be 13 digits: {number!r}")
    # 法人番号: the leading digit is 9 - (sum of base digits, weighted 1,2,1,2... from the
    # right) mod 9.
    base = number[1:]
    total = sum(int(d) * (1 if i % 2 == 0 else 2) for i, d in enumerate(reversed(base)))
    if int(number[0]) != 9 - total % 9:
        raise EsealError(f"corporate number check digit is wrong: {number!r}")
    return f"NTRJP-{number}"


def school_code_identifier(code: str) -> str:
    """``SC:JP-<学校コード>``: kakuin's national scheme (EN 319 412-1 §5.1.4, "XX:")."""
    if not _SCHOOL_CODE.match(code):
        raise EsealError(f"school code must be a letter and 12 digits: {code!r}")
    return f"SC:JP-{code}"


def follows_en_319_412_1(organization_identifier: str | None) -> bool:
    return bool(organization_identifier and _ORG_ID.match(organization_identifier))


def eseal_subject(
    *,
    name_ja: str,
    organization_identifier: str | None,
    common_name: str | None = None,
    name_en: str | None = None,
    country: str = "JP",
) -> x509.Name:
    """C, O, organizationIdentifier, CN as EN 319 412-3 LEG-4.2.1 wants them.

    O is the legal (Japanese) name in UTF8String. EN 319 412-3 allows one O only, so an
    English name goes to CN (the "name commonly used", read first by foreign verifiers)
    unless ``common_name`` is given; otherwise CN repeats the Japanese name.
    C and organizationIdentifier are ASCII and stay PrintableString.
    A subject without organizationIdentifier is built but refused by the ETSI lint.
    """
    attrs = [
        x509.NameAttribute(NameOID.COUNTRY_NAME, country),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, name_ja),
    ]
    if organization_identifier is not None:
        attrs.append(
            x509.NameAttribute(
                NameOID.ORGANIZATION_IDENTIFIER,
                organization_identifier,
                _type=_ASN1Type.PrintableString,
            )
        )
    common = common_name or name_en or name_ja
    if len(common.encode("utf-8")) > 64:
        # cryptography counts ub-common-name in UTF-8 bytes; the registry refuses such names
        # (ca/names.py), this catches one registered before that rule: 422, never a 500.
        raise EsealError(
            f"the certificate's CN would be {len(common.encode())} bytes of UTF-8 (at most 64);"
            " give the organization a shorter name_en"
        )
    attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, common))
    return x509.Name(attrs)


def qc_statements(profile: Profile, *, organization_identifier: str | None) -> bytes:
    """DER of the QCStatements extension value for an e-seal of ``profile``."""
    settings = eseal_settings(profile)
    statements = []
    if settings.accreditation_declared:
        statements.append({"statement_id": "qc_compliance"})
        statements.append(
            {
                "statement_id": "qc_cc_legislation",
                "statement_info": qualified_asn1.QcCCLegislationCountryCodes(
                    list(settings.legislation)
                ),
            }
        )
    statements.append(
        {
            "statement_id": "qc_type",
            "statement_info": qualified_asn1.QcCertificateType([QC_TYPES[settings.qc_type]]),
        }
    )
    if follows_en_319_412_1(organization_identifier):
        assert organization_identifier is not None
        info: dict[str, Any] = {
            "semantics_identifier": SEMANTICS_IDS[settings.semantics_identifier]
        }
        authority = settings.registration_authorities.get(organization_identifier[:3])
        if organization_identifier[2] == ":" and authority is None:
            raise EsealError(
                f"national identifier scheme {organization_identifier[:3]!r} has no "
                "registration authority URI in the profile (EN 319 412-1 LEG-5.1.4-05)"
            )
        if authority is not None:
            info["name_registration_authorities"] = [
                asn1_x509.GeneralName(name="uniform_resource_identifier", value=authority)
            ]
        statements.append(
            {"statement_id": "pkix_qc_syntax_v2", "statement_info": _SemanticsInformation(info)}
        )
    return bytes(QcStatements(statements).dump())


def eseal_extensions(
    profile: Profile, *, organization_identifier: str | None
) -> tuple[tuple[x509.ExtensionType, bool], ...]:
    """Extensions for ``CertificateOrder.extensions``: QCStatements, non-critical (QCS-4.1-02)."""
    der = qc_statements(profile, organization_identifier=organization_identifier)
    return ((x509.UnrecognizedExtension(QC_STATEMENTS, der), False),)


__all__ = [
    "QC_STATEMENTS",
    "EsealError",
    "EsealSettings",
    "QcStatements",
    "corporate_number_identifier",
    "eseal_extensions",
    "eseal_settings",
    "eseal_subject",
    "follows_en_319_412_1",
    "qc_statements",
    "school_code_identifier",
]
