"""CRLs: real HSM signatures, checked by OpenSSL and pkilint, numbered safely under concurrency.

Each test gets a fresh database (SQLite and PostgreSQL) holding copies of the session CA's
certificate rows, so the keys in the session's SoftHSM token sign. Revocations are written
straight into the certificate rows: this module tests publishing, not the revocation API.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from sqlalchemy import select

from ca import audit, crl
from ca.issuer import CertificateOrder, issue
from ca.models import Certificate, Crl, CrlCounter
from ca.store import Store, upgrade
from tests.dbutil import database
from tests.test_enrollment import _copy_ca_rows

REPO = Path(__file__).resolve().parent.parent
LINT_CRL = Path(sys.executable).parent / "lint_crl"
PEM = serialization.Encoding.PEM


@dataclass(frozen=True)
class Env:
    store: Store
    issuing: crl.CrlAuthority
    root: crl.CrlAuthority
    pki: Path  # the session's published CA certificates
    out: Path  # where this test writes CRLs


@pytest.fixture(params=["sqlite", "postgresql"])
def env(request: pytest.FixtureRequest, services, tmp_path: Path) -> Iterator[Env]:
    with database(request.param, tmp_path) as url:
        upgrade(url)
        store = Store(url)
        _copy_ca_rows(services.store, store)
        names = services.settings.ca
        authorities = crl.load_authorities(store, services.keys, root_name=names.root_name,
                                           issuing_name=names.issuing_name)
        try:
            yield Env(store, authorities[0], authorities[1], services.settings.pki_dir,
                      tmp_path / "out")
        finally:
            store.dispose(close=True)


def _issue(services, store: Store, count: int) -> list[x509.Certificate]:
    """End-entity certificates shaped like e-seals (CDP, AIA, contentCommitment)."""
    profile = dataclasses.replace(
        services.profiles["ocsp-responder"], name="eseal-like", key_usages=("content_commitment",),
        extended_key_usages=(), ocsp_no_check=False, crl_distribution_points=True,
        authority_information_access=True)
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    return [issue(store, services.ca.authority(),
                  CertificateOrder(profile, x509.Name([x509.NameAttribute(
                      NameOID.COMMON_NAME, f"school {i}")]), key), actor="test")
            for i in range(count)]


def _set(store: Store, cert: x509.Certificate, **values) -> None:
    with store.session() as s:
        row = s.scalars(select(Certificate).where(
            Certificate.serial == format(cert.serial_number, "x"))).one()
        for name, value in values.items():
            setattr(row, name, value)


def _revoke(store: Store, cert: x509.Certificate, reason: str | None, *,
            at: datetime | None = None, invalidity: datetime | None = None) -> None:
    _set(store, cert, status="hold" if reason == "certificateHold" else "revoked",
         revocation_reason=reason, revoked_at=at or datetime.now(UTC),
         invalidity_date=invalidity)


def _publish(env: Env, authority: crl.CrlAuthority | None = None, **kwargs) -> Crl:
    a = authority or env.issuing
    return crl.publish(env.store, issuer_name=a.name, issuer_cert=a.certificate,
                       issuer_key=a.key, **kwargs)


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, check=False, timeout=120)


def _lint(path: Path, kind: str) -> list[str]:
    """pkilint findings at WARNING or above (the text format prints one per line)."""
    out = _run(str(LINT_CRL), "lint", "-t", kind, "-p", "PKIX", "-s", "WARNING",
               "--document-format", "DER", str(path))
    assert out.returncode in (0, 1), out.stderr
    return [line for line in out.stdout.splitlines() if line.strip()]


def _openssl_serial(cert: x509.Certificate) -> str:
    """A serial as ``openssl crl -text`` prints it: upper-case hex in whole octets."""
    text = f"{cert.serial_number:X}"
    return "0" * (len(text) % 2) + text


def _pem_file(path: Path, der: bytes) -> Path:
    path.write_bytes(x509.load_der_x509_crl(der).public_bytes(PEM))
    return path


def test_issuing_crl_verifies_lists_reasons_and_lints_clean(env: Env, services) -> None:
    compromised, held, unspecified, good = _issue(services, env.store, 4)
    invalid_since = datetime(2025, 4, 1, 9, 30, tzinfo=UTC)
    _revoke(env.store, compromised, "keyCompromise", invalidity=invalid_since)
    _revoke(env.store, held, "certificateHold")
    _revoke(env.store, unspecified, "unspecified")
    now = datetime.now(UTC)

    row = _publish(env, now=now)
    assert crl.write_file(env.out, env.issuing.name, row)
    path = env.out / f"{env.issuing.name}.crl"
    # The file is where the certificates' CDP points.
    cdp = compromised.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    assert cdp[0].full_name[0].value.endswith(f"/pki/{path.name}")

    verify = _run("openssl", "crl", "-in", str(path), "-inform", "DER", "-noout",
                  "-CAfile", str(env.pki / f"{env.issuing.name}.pem"))
    assert verify.returncode == 0 and "verify OK" in verify.stderr, verify.stderr
    text = _run("openssl", "crl", "-in", str(path), "-inform", "DER", "-noout", "-text").stdout
    for cert, reason in ((compromised, "Key Compromise"), (held, "Certificate Hold")):
        block = text.split(f"Serial Number: {_openssl_serial(cert)}", 1)[1][:400]
        assert reason in block.split("Serial Number:")[0]
    assert f"Serial Number: {_openssl_serial(unspecified)}" in text
    assert _openssl_serial(good) not in text
    assert "Invalidity Date" in text and "Apr  1 09:30:00 2025 GMT" in text
    assert "Unspecified" not in text  # RFC 5280: omit the reason code rather than say it
    assert _lint(path, "CRL") == []

    parsed = x509.load_der_x509_crl(row.der)
    assert len(parsed) == 3
    assert parsed.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == 1
    ski = env.issuing.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    aki = parsed.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == ski.value.digest
    assert parsed.last_update_utc == now.replace(microsecond=0) == row.this_update
    assert parsed.next_update_utc == row.this_update + timedelta(hours=24) == row.next_update
    entry = parsed.get_revoked_certificate_by_serial_number(compromised.serial_number)
    assert entry is not None
    assert entry.extensions.get_extension_for_class(
        x509.InvalidityDate).value.invalidity_date_utc == invalid_since
    with env.store.session() as s:
        last = audit.entries(s, limit=1000)[-1]
        assert audit.verify(s).ok
    assert (last.action, last.object_id) == ("crl.published", f"{env.issuing.name}/1")
    assert last.digest == hashlib.sha256(row.der).hexdigest()


def test_root_crl_lists_a_revoked_issuing_ca_and_openssl_refuses_the_chain(
        env: Env, services, tmp_path: Path) -> None:
    (leaf,) = _issue(services, env.store, 1)
    leaf_pem = tmp_path / "leaf.pem"
    leaf_pem.write_bytes(leaf.public_bytes(PEM))
    chain = ["-CAfile", str(env.pki / f"{env.root.name}.pem"),
             "-untrusted", str(env.pki / f"{env.issuing.name}.pem")]

    empty = _publish(env, env.root)
    path = env.out / f"{env.root.name}.crl"
    assert crl.write_file(env.out, env.root.name, empty)
    verify = _run("openssl", "crl", "-in", str(path), "-inform", "DER", "-noout",
                  "-CAfile", str(env.pki / f"{env.root.name}.pem"))
    assert verify.returncode == 0 and "verify OK" in verify.stderr, verify.stderr
    assert _lint(path, "ARL") == []

    crls = [_pem_file(tmp_path / "issuing.pem", _publish(env).der),
            _pem_file(tmp_path / "root.pem", empty.der)]
    args = [a for c in crls for a in ("-CRLfile", str(c))]
    ok = _run("openssl", "verify", "-crl_check_all", *args, *chain, str(leaf_pem))
    assert ok.returncode == 0 and ok.stdout.strip().endswith("OK"), ok.stdout + ok.stderr

    _set(env.store, env.issuing.certificate, status="revoked", revocation_reason="cACompromise",
         revoked_at=datetime.now(UTC))
    revoked = _publish(env, env.root)
    assert crl.write_file(env.out, env.root.name, revoked)
    assert _lint(path, "ARL") == []
    assert len(x509.load_der_x509_crl(revoked.der)) == 1
    _pem_file(tmp_path / "root.pem", revoked.der)
    bad = _run("openssl", "verify", "-crl_check_all", *args, *chain, str(leaf_pem))
    assert bad.returncode != 0 and "certificate revoked" in bad.stdout + bad.stderr


def test_openssl_crl_check_fails_for_a_revoked_seal_only(env: Env, services,
                                                         tmp_path: Path) -> None:
    revoked, good = _issue(services, env.store, 2)
    _revoke(env.store, revoked, "keyCompromise")
    crl_pem = _pem_file(tmp_path / "crl.pem", _publish(env).der)
    results = {}
    for name, cert in (("revoked", revoked), ("good", good)):
        pem = tmp_path / f"{name}.pem"
        pem.write_bytes(cert.public_bytes(PEM))
        results[name] = _run("openssl", "verify", "-crl_check", "-CRLfile", str(crl_pem),
                             "-CAfile", str(env.pki / f"{env.root.name}.pem"), "-untrusted",
                             str(env.pki / f"{env.issuing.name}.pem"), str(pem))
    assert results["good"].returncode == 0, results["good"].stdout + results["good"].stderr
    assert results["revoked"].returncode != 0
    assert "certificate revoked" in results["revoked"].stdout + results["revoked"].stderr


def test_numbers_increase_and_expired_entries_go_after_one_more_crl(env: Env,
                                                                   services) -> None:
    long_expired, just_expired, valid = _issue(services, env.store, 3)
    now = datetime.now(UTC)
    for cert in (long_expired, just_expired, valid):
        _revoke(env.store, cert, "superseded", at=now - timedelta(days=40))
    _set(env.store, long_expired, not_after=now - timedelta(days=30))
    _set(env.store, just_expired, not_after=now - timedelta(hours=1))

    first = _publish(env, now=now)
    listed = {e.serial_number for e in x509.load_der_x509_crl(first.der)}
    # RFC 5280 §3.3: listed on one CRL issued after expiry, then dropped.
    assert listed == {just_expired.serial_number, valid.serial_number}
    later = _publish(env, now=now + timedelta(days=1), validity=timedelta(hours=6))
    assert {e.serial_number for e in x509.load_der_x509_crl(later.der)} == {valid.serial_number}
    assert later.next_update - later.this_update == timedelta(hours=6)
    third = _publish(env)
    assert (first.number, later.number, third.number) == (1, 2, 3)
    assert crl.latest(env.store, env.issuing.name).number == 3  # type: ignore[union-attr]
    with env.store.session() as s:
        numbers = s.scalars(select(Crl.number).order_by(Crl.id)).all()
    assert list(numbers) == [1, 2, 3]


def test_a_lost_counter_restarts_above_the_stored_crls(env: Env) -> None:
    for _ in range(3):
        _publish(env)
    with env.store.session() as s:
        s.delete(s.get(CrlCounter, env.issuing.name))
    assert _publish(env).number == 4


def test_due_after_revocation_lifted_hold_and_before_next_update(env: Env, services) -> None:
    a, b = _issue(services, env.store, 2)
    name, refresh = env.issuing.name, timedelta(hours=12)
    now = datetime.now(UTC)
    assert crl.due(env.store, name, now, refresh)  # none yet
    _publish(env)
    assert not crl.due(env.store, name, now, refresh)
    assert crl.due(env.store, name, now + timedelta(hours=13), refresh)  # 11 h left

    _revoke(env.store, a, "certificateHold")
    assert crl.due(env.store, name, now, refresh)
    _publish(env)
    assert not crl.due(env.store, name, now, refresh)
    _revoke(env.store, a, "keyCompromise")  # hold made final: same count, other reason
    assert crl.due(env.store, name, now, refresh)
    _publish(env)
    _revoke(env.store, b, "certificateHold")
    _publish(env)
    _set(env.store, b, status="issued", revocation_reason=None, revoked_at=None)  # unsuspended
    assert crl.due(env.store, name, now, refresh)


def test_due_with_many_recent_changes(env: Env, services) -> None:
    """More than ten changes since the last CRL are looked up in one pass over it."""
    certs = _issue(services, env.store, 12)
    for cert in certs:
        _revoke(env.store, cert, "superseded")
    now, refresh = datetime.now(UTC), timedelta(hours=12)
    _publish(env)
    assert not crl.due(env.store, env.issuing.name, now, refresh)
    _revoke(env.store, certs[0], "keyCompromise")
    assert crl.due(env.store, env.issuing.name, now, refresh)


def test_publish_due_publishes_and_keeps_files_current(env: Env, services) -> None:
    authorities = [env.issuing, env.root]
    first = crl.publish_due(env.store, authorities=authorities, pki_dir=env.out)
    assert [(c.issuer_name, c.number) for c in first] == [(env.issuing.name, 1),
                                                          (env.root.name, 1)]
    assert crl.publish_due(env.store, authorities=authorities, pki_dir=env.out) == []
    (cert,) = _issue(services, env.store, 1)
    _revoke(env.store, cert, "affiliationChanged")
    # Another instance publishes: this one's file still catches up.
    other = _publish(env)
    assert crl.publish_due(env.store, authorities=authorities, pki_dir=env.out) == []
    assert crl.file_number(env.out / f"{env.issuing.name}.crl") == other.number == 2
    assert crl.file_number(env.out / f"{env.root.name}.crl") == 1


def test_write_file_never_replaces_a_newer_crl(env: Env) -> None:
    older, newer = _publish(env), _publish(env)
    assert crl.write_file(env.out, env.issuing.name, newer)
    assert not crl.write_file(env.out, env.issuing.name, older)
    assert (env.out / f"{env.issuing.name}.crl").read_bytes() == newer.der
    assert [p.name for p in env.out.iterdir() if not p.name.startswith(".")] == [
        f"{env.issuing.name}.crl"]


def test_partitioned_crl_names_its_distribution_point(env: Env, services) -> None:
    a, b = _issue(services, env.store, 2)
    _revoke(env.store, a, "keyCompromise")
    _revoke(env.store, b, "keyCompromise")
    _set(env.store, b, shard=1)
    with pytest.raises(ValueError, match="distribution_point"):
        _publish(env, shard=1)
    url = "http://127.0.0.1:8080/pki/kakuin-issuing-ca.1.crl"
    part = _publish(env, shard=1, distribution_point=url)
    assert (part.issuer_name, part.number) == (f"{env.issuing.name}.1", 1)
    parsed = x509.load_der_x509_crl(part.der)
    assert [e.serial_number for e in parsed] == [b.serial_number]
    idp = parsed.extensions.get_extension_for_class(x509.IssuingDistributionPoint)
    assert idp.critical and idp.value.full_name is not None
    assert idp.value.full_name[0].value == url
    assert crl.write_file(env.out, part.issuer_name, part)
    assert _lint(env.out / f"{part.issuer_name}.crl", "CRL") == []
    assert len(x509.load_der_x509_crl(_publish(env).der)) == 2  # the full CRL has both


def test_an_unknown_stored_reason_still_lists_the_certificate(env: Env, services,
                                                              caplog) -> None:
    (cert,) = _issue(services, env.store, 1)
    _revoke(env.store, cert, "noSuchReason")
    parsed = x509.load_der_x509_crl(_publish(env).der)
    entry = parsed.get_revoked_certificate_by_serial_number(cert.serial_number)
    assert entry is not None and len(entry.extensions) == 0  # revoked, reason unspecified
    assert "unknown revocation reason 'noSuchReason'" in caplog.text


def test_a_signature_the_certificate_does_not_verify_is_never_returned(services) -> None:
    now = datetime.now(UTC)
    with pytest.raises(InvalidSignature):
        crl.build_crl(services.ca.authority().certificate, ec.generate_private_key(
            ec.SECP256R1()), number=1, this_update=now, next_update=now + timedelta(hours=1),
            entries=[])


@pytest.mark.parametrize("key", [ec.generate_private_key(ec.SECP384R1()),
                                 rsa.generate_private_key(65537, 2048)], ids=["p384", "rsa"])
def test_entries_encode_exactly_as_cryptographys_builder(key) -> None:
    """The hand-made entries are byte-identical to what ``cryptography`` builds."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Test CA")])
    now = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(1).not_valid_before(now)
            .not_valid_after(now + timedelta(days=1)).add_extension(ski, critical=False)
            .sign(key, hashes.SHA384() if isinstance(key, ec.EllipticCurvePrivateKey)
                  else hashes.SHA256()))
    serials = [1, 0x7F, 0x80, 0xFF, 0x100, 2**159 - 1, 2**127, secrets.randbits(128) | 1]
    times = [now, datetime(1950, 1, 1, tzinfo=UTC), datetime(2049, 12, 31, 23, 59, 59,
                                                             tzinfo=UTC),
             datetime(2050, 1, 1, tzinfo=UTC), datetime(2200, 6, 1, 12, tzinfo=UTC)]
    reasons = [None, *x509.ReasonFlags]
    entries = [crl.Revoked(serial, times[i % len(times)], reasons[i % len(reasons)],
                           times[(i + 1) % len(times)] if i % 2 else None)
               for i, serial in enumerate(serials * 3)]
    entries = [e._replace(serial=e.serial + i * 2**130 if e.serial < 2**128 else e.serial)
               for i, e in enumerate(entries)]

    def reference(e: crl.Revoked) -> x509.RevokedCertificate:
        b = x509.RevokedCertificateBuilder().serial_number(e.serial).revocation_date(e.revoked_at)
        if e.reason not in (None, x509.ReasonFlags.unspecified):
            b = b.add_extension(x509.CRLReason(e.reason), critical=False)
        if e.invalidity_date is not None:
            b = b.add_extension(x509.InvalidityDate(e.invalidity_date), critical=False)
        return b.build()

    aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)
    for chosen in (entries, []):
        expected = x509.CertificateRevocationListBuilder(
            name, now, now + timedelta(hours=24),
            [x509.Extension(x509.CRLNumber.oid, False, x509.CRLNumber(2**64)),
             x509.Extension(aki.oid, False, aki)],
            [reference(e) for e in chosen]).sign(
                key, hashes.SHA384() if isinstance(key, ec.EllipticCurvePrivateKey)
                else hashes.SHA256())
        ours = x509.load_der_x509_crl(crl.build_crl(
            cert, key, number=2**64, this_update=now, next_update=now + timedelta(hours=24),
            entries=chosen))
        assert ours.tbs_certlist_bytes == expected.tbs_certlist_bytes
        assert ours.signature_algorithm_oid == expected.signature_algorithm_oid
        assert ours.is_signature_valid(key.public_key())
        assert len(ours) == len(chosen)


# --- two processes publishing at once -----------------------------------------------------------

PUBLISHES_PER_PROCESS = 20


def _child(home: str, url: str, name: str, ready: str, go: str) -> None:
    """One publisher process: its own HSM session (SoftHSM via the home's settings) and
    its own database connections, publishing as fast as it can once told to start."""
    from kakuin.services import make_key_manager
    from kakuin.settings import load_settings

    settings = load_settings(home)
    store = Store(url)
    keys = make_key_manager(settings)
    issuing, _ = crl.load_authorities(store, keys, root_name=settings.ca.root_name,
                                      issuing_name=name)
    keys.info()  # log in before the race
    Path(ready).touch()
    while not Path(go).exists():
        time.sleep(0.005)
    numbers = []
    for _ in range(PUBLISHES_PER_PROCESS):
        row = crl.publish(store, issuer_name=name, issuer_cert=issuing.certificate,
                          issuer_key=issuing.key)
        numbers.append(row.number)
    print(json.dumps(numbers))
    keys.close()
    store.dispose(close=True)


@pytest.mark.parametrize("kind", ["postgresql", "sqlite"])
def test_two_processes_publishing_at_once_get_distinct_increasing_numbers(
        kind: str, services, tmp_path: Path) -> None:
    """Real HSM signing in both children (the session token, shared through SOFTHSM2_CONF)."""
    with database(kind, tmp_path) as url:
        upgrade(url)
        store = Store(url)
        try:
            _copy_ca_rows(services.store, store)
            name = services.settings.ca.issuing_name
            (cert,) = _issue(services, store, 1)
            _revoke(store, cert, "keyCompromise")
            env = {**os.environ, "SOFTHSM2_CONF": str(services.settings.softhsm_conf)}
            go = tmp_path / "go"
            children = []
            for i in range(2):
                ready = tmp_path / f"ready-{i}"
                home = str(services.settings.home)
                code = (f"from tests.test_crl import _child; _child({home!r}, {url!r}, "
                        f"{name!r}, {str(ready)!r}, {str(go)!r})")
                children.append((ready, subprocess.Popen(
                    [sys.executable, "-c", code], cwd=REPO, env=env, stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE, text=True)))
            deadline = time.monotonic() + 60
            while not all(r.exists() for r, _ in children):
                assert time.monotonic() < deadline, "children did not get ready"
                assert all(p.poll() is None for _, p in children), children[0][1].stderr
                time.sleep(0.01)
            go.touch()
            results = []
            for _, proc in children:
                out, err = proc.communicate(timeout=300)
                assert proc.returncode == 0, err
                results.append(json.loads(out.strip().splitlines()[-1]))

            for numbers in results:
                assert numbers == sorted(set(numbers)), numbers  # each one strictly increasing
            everything = sorted(results[0] + results[1])
            assert everything == list(range(1, 2 * PUBLISHES_PER_PROCESS + 1))
            with store.session() as s:
                rows = s.scalars(select(Crl).order_by(Crl.number)).all()
                assert s.get(CrlCounter, name).last_number == 2 * PUBLISHES_PER_PROCESS  # type: ignore[union-attr]
            assert [r.number for r in rows] == everything
            for earlier, later in itertools.pairwise(rows):
                assert earlier.this_update <= later.this_update  # number order = time order
            for r in rows:
                parsed = x509.load_der_x509_crl(r.der)
                assert parsed.extensions.get_extension_for_class(
                    x509.CRLNumber).value.crl_number == r.number
                assert parsed.is_signature_valid(services.ca.authority().key.public_key())
                assert [e.serial_number for e in parsed] == [cert.serial_number]
            # Interleaved, not one child after the other: the race really happened.
            assert results[0] != list(range(1, PUBLISHES_PER_PROCESS + 1)) or \
                results[1] != list(range(PUBLISHES_PER_PROCESS + 1, 2 * PUBLISHES_PER_PROCESS + 1))
        finally:
            store.dispose(close=True)
