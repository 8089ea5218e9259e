"""The CA as one object the web layer and CLI can hold: store, HSM, profiles, names."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from ca import crl, ocsp, status
from ca.authorities import issuing_authority
from ca.faults import pause_point
from ca.issuer import CertificateOrder, IssuingAuthority, issue
from ca.models import Certificate
from ca.profiles import Profile
from ca.store import Store
from hsm.api import KeyAlgorithm, KeyManager

log = logging.getLogger("kakuin.ca")


@dataclass
class CAService:
    store: Store
    keys: KeyManager
    profiles: dict[str, Profile]
    issuing_name: str
    base_url: str
    root_name: str = "kakuin-root-ca"
    pki_dir: Path | None = None
    crl_validity: timedelta = crl.DEFAULT_VALIDITY
    # Pre-issuance linting (pkilint) is on in every deployment; bench/issue.py turns it off
    # only to measure what it costs.
    lint_before_signing: bool = True
    _authority: IssuingAuthority | None = field(default=None, repr=False)
    _crl_authorities: list[crl.CrlAuthority] | None = field(default=None, repr=False)

    def authority(self) -> IssuingAuthority:
        """The issuing CA, loaded once (certificate from the store, key handle from the HSM)."""
        if self._authority is None:
            self._authority = issuing_authority(self.store, self.keys, self.issuing_name,
                                                self.base_url)
        return self._authority

    def crl_authorities(self) -> list[crl.CrlAuthority]:
        if self._crl_authorities is None:
            self._crl_authorities = crl.load_authorities(
                self.store, self.keys, root_name=self.root_name, issuing_name=self.issuing_name)
        return self._crl_authorities

    def publish_crl(self, issuer_name: str, *, actor: str = "crl-publisher") -> crl.Crl:
        authority = next((a for a in self.crl_authorities() if a.name == issuer_name), None)
        if authority is None:
            raise ValueError(f"{issuer_name} publishes no CRL here")
        row = crl.publish(self.store, issuer_name=authority.name,
                          issuer_cert=authority.certificate, issuer_key=authority.key,
                          validity=self.crl_validity, actor=actor)
        if self.pki_dir is not None:
            crl.write_file(self.pki_dir, authority.name, row)
        return row

    def status_changed(self, cert: Certificate) -> None:
        """Make a revocation, suspension or its lifting visible at once: re-sign the
        certificate's OCSP response and publish its issuer's CRL again. A crash before
        this runs is harmless: the OCSP hot path re-signs a stored response that no longer
        matches the certificate, and the scheduler's ``crl.publish_due`` sees the change."""
        pause_point("status.changed")
        if cert.issuer_name == self.issuing_name:
            ocsp.resign(self.store, self.keys, cert.issuer_name, cert.serial)
        self.publish_crl(cert.issuer_name, actor="revocation")

    def ensure_trust_list_signer(self, now: datetime | None = None,
                                 renew_before: timedelta = timedelta(days=30)) -> bool:
        """Issue (or renew before expiry) the trust-list signer certificate; True if issued."""
        now = now or datetime.now(UTC)
        try:
            current = status.trust_list_credential(self.store, now=now)
        except status.NotFound:
            current = None
        if current is not None:
            cert = x509.load_der_x509_certificate(current.certificate)
            if cert.not_valid_after_utc - now > renew_before:
                return False
        authority = self.authority()
        ref = self.keys.generate(KeyAlgorithm.ECDSA_P256,
                                 f"{self.issuing_name}-tsl-{now:%Y%m%dT%H%M%SZ}")
        subject = x509.Name([
            x509.NameAttribute(NameOID.COUNTRY_NAME, "JP"),
            *authority.issuer_name.get_attributes_for_oid(NameOID.ORGANIZATION_NAME),
            x509.NameAttribute(NameOID.COMMON_NAME, "kakuin Trust List Signer"),
        ])
        public_key = serialization.load_der_public_key(ref.public_key_der)
        try:
            issue(self.store, authority, CertificateOrder(
                self.profiles["trust-list-signer"], subject, public_key,  # type: ignore[arg-type]
                hsm_key_id=ref.key_id_hex), actor="trust-list-signer", now=now)
        except BaseException:
            self.keys.destroy(ref)
            raise
        return True

    def maintain(self, now: datetime | None = None) -> dict[str, Any]:
        """The scheduled work: CRLs due for re-publication, OCSP responses nearing their
        nextUpdate, and a responder certificate nearing expiry. Safe to run from several
        workers at once (CRL numbers are allocated under a database lock)."""
        now = now or datetime.now(UTC)
        renewed = ocsp.ensure_responder_certificate(
            self.store, self.keys, self.authority(), self.profiles["ocsp-responder"], now=now)
        published = crl.publish_due(self.store, authorities=self.crl_authorities(),
                                    validity=self.crl_validity, now=now, pki_dir=self.pki_dir)
        refreshed = ocsp.refresh_stale(self.store, self.keys, self.issuing_name, now,
                                       include_missing=True)
        tsl = self.ensure_trust_list_signer(now)
        return {"crls_published": [f"{c.issuer_name}#{c.number}" for c in published],
                "ocsp_refreshed": refreshed, "responder_renewed": renewed is not None,
                "trust_list_signer_issued": tsl}
