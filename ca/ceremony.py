"""Key ceremony: root and issuing CA keys in the HSM, the CA certificates, published files.

Runs once per home. It refuses (and says why) when the store already has a root or the
token already holds a key with one of the ceremony's labels, so it can never overwrite.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID
from sqlalchemy import select

from ca import audit
from ca.errors import Conflict
from ca.issuer import CertificateOrder, IssuingAuthority, issue
from ca.models import Certificate
from ca.profiles import Profile
from ca.store import Store
from hsm.api import KeyAlgorithm, KeyManager, KeyRef
from hsm.errors import HsmKeyNotFound
from hsm.keys import HsmPrivateKey, private_key


class CeremonyAlreadyDone(Conflict):
    type = "ca/ceremony-already-done"
    title = "Key ceremony already performed"


@dataclass(frozen=True)
class CeremonyPlan:
    organization: str
    country: str
    base_url: str
    pki_dir: Path
    root_name: str
    root_common_name: str
    root_algorithm: KeyAlgorithm
    issuing_name: str
    issuing_common_name: str
    issuing_algorithm: KeyAlgorithm
    ocsp_common_name: str
    ocsp_algorithm: KeyAlgorithm
    tsa_common_name: str
    tsa_algorithm: KeyAlgorithm

    @property
    def ocsp_name(self) -> str:
        return f"{self.issuing_name}-ocsp"

    @property
    def tsa_name(self) -> str:
        return f"{self.issuing_name}-tsa"

    def labels(self) -> tuple[str, ...]:
        return (self.root_name, self.issuing_name, self.ocsp_name, self.tsa_name)


@dataclass(frozen=True)
class CeremonyResult:
    root: x509.Certificate
    issuing: x509.Certificate
    ocsp: x509.Certificate
    tsa: x509.Certificate
    files: tuple[Path, ...]


def _name(plan: CeremonyPlan, common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, plan.country),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, plan.organization),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def already_done(store: Store, keys: KeyManager, plan: CeremonyPlan) -> str | None:
    """Why the ceremony must not run, or None when it may."""
    with store.session() as s:
        root = s.scalars(
            select(Certificate).where(Certificate.kind == "root", Certificate.status == "issued")
        ).first()
        if root is not None:
            return f"the store already holds root CA {root.subject!r} (serial {root.serial})"
    for label in plan.labels():
        try:
            ref = keys.find(label=label)
        except HsmKeyNotFound:
            continue
        return (
            f"the HSM token already holds a key labelled {label!r} "
            f"(id {ref.key_id_hex}); use a fresh token"
        )
    return None


def run(
    store: Store,
    keys: KeyManager,
    plan: CeremonyPlan,
    profiles: dict[str, Profile],
    *,
    actor: str = "key-ceremony",
) -> CeremonyResult:
    reason = already_done(store, keys, plan)
    if reason:
        raise CeremonyAlreadyDone(f"refusing to run the key ceremony again: {reason}")
    generated: list[KeyRef] = []
    try:
        return _run(store, keys, plan, profiles, actor, generated)
    except BaseException as exc:
        _abort(store, keys, generated, actor, exc)
        raise


def _abort(
    store: Store, keys: KeyManager, generated: list[KeyRef], actor: str, exc: BaseException
) -> None:
    """Undo a half-run ceremony so it can be run again: its keys go, its rows are voided."""
    ids = [ref.key_id_hex for ref in generated]
    for ref in generated:
        keys.destroy(ref)
    with store.session() as s:
        for row in s.scalars(select(Certificate).where(Certificate.hsm_key_id.in_(ids))):
            row.status = "failed"
        audit.record(
            s,
            actor=actor,
            action="ceremony.aborted",
            object_type="ca",
            details={"error": f"{type(exc).__name__}: {exc}"[:500], "destroyed_keys": ids},
        )


def _run(
    store: Store,
    keys: KeyManager,
    plan: CeremonyPlan,
    profiles: dict[str, Profile],
    actor: str,
    generated: list[KeyRef],
) -> CeremonyResult:
    def generate(algorithm: KeyAlgorithm, label: str) -> tuple[HsmPrivateKey, str]:
        ref = keys.generate(algorithm, label)
        generated.append(ref)
        with store.session() as s:
            audit.record(
                s,
                actor=actor,
                action="hsm.key_generated",
                object_type="hsm-key",
                object_id=ref.key_id_hex,
                digest=ref.public_key_sha256,
                details={"label": label, "algorithm": algorithm.value},
            )
        return private_key(keys, ref), ref.key_id_hex

    def issue_with_new_key(authority: IssuingAuthority | None, algorithm: KeyAlgorithm,
                           label: str, profile: str, subject: x509.Name
                           ) -> tuple[x509.Certificate, HsmPrivateKey]:
        key, key_id = generate(algorithm, label)
        if authority is None:  # the root signs itself
            authority = IssuingAuthority(label, key, None, plan.base_url, subject=subject)
        cert = issue(store, authority, CertificateOrder(
            profiles[profile], subject, key.public_key(), hsm_key_id=key_id), actor=actor)
        return cert, key

    root, root_key = issue_with_new_key(None, plan.root_algorithm, plan.root_name, "root-ca",
                                        _name(plan, plan.root_common_name))
    root_authority = IssuingAuthority(plan.root_name, root_key, root, plan.base_url)
    issuing, issuing_key = issue_with_new_key(
        root_authority, plan.issuing_algorithm, plan.issuing_name, "issuing-ca",
        _name(plan, plan.issuing_common_name))
    issuing_authority = IssuingAuthority(plan.issuing_name, issuing_key, issuing, plan.base_url)
    ocsp, _ = issue_with_new_key(issuing_authority, plan.ocsp_algorithm, plan.ocsp_name,
                                 "ocsp-responder", _name(plan, plan.ocsp_common_name))
    tsa, _ = issue_with_new_key(issuing_authority, plan.tsa_algorithm, plan.tsa_name, "tsa",
                                _name(plan, plan.tsa_common_name))

    files = publish(
        plan.pki_dir,
        {
            plan.root_name: root,
            plan.issuing_name: issuing,
            plan.ocsp_name: ocsp,
            plan.tsa_name: tsa,
        },
        chain=(issuing, root),
    )
    with store.session() as s:
        audit.record(
            s,
            actor=actor,
            action="ceremony.completed",
            object_type="ca",
            object_id=plan.root_name,
            details={"files": [p.name for p in files]},
        )
    return CeremonyResult(root, issuing, ocsp, tsa, files)


def publish(
    pki_dir: Path, certs: dict[str, x509.Certificate], chain: tuple[x509.Certificate, ...]
) -> tuple[Path, ...]:
    """Write ``<name>.crt`` (DER, the AIA URL's format), ``<name>.pem`` and ``chain.pem``."""
    pki_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, cert in certs.items():
        for suffix, encoding in (
            (".crt", serialization.Encoding.DER),
            (".pem", serialization.Encoding.PEM),
        ):
            path = pki_dir / f"{name}{suffix}"
            path.write_bytes(cert.public_bytes(encoding))
            written.append(path)
    chain_path = pki_dir / "chain.pem"
    chain_path.write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in chain))
    written.append(chain_path)
    return tuple(written)
