"""hsm/ against a real SoftHSM2 token through python-pkcs11."""

from __future__ import annotations

import multiprocessing
import secrets
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from cryptography.x509 import ocsp
from cryptography.x509.oid import NameOID

from hsm.api import HashAlg, KeyAlgorithm, KeyManager, SignScheme
from hsm.errors import HsmAuthError, HsmKeyExists, HsmKeyNotFound, HsmRefused, HsmUnavailable
from hsm.keys import HsmEllipticCurvePrivateKey, HsmRsaPrivateKey, private_key
from hsm.pkcs11 import Pkcs11KeyManager

_HASH = {
    HashAlg.SHA256: hashes.SHA256(),
    HashAlg.SHA384: hashes.SHA384(),
    HashAlg.SHA512: hashes.SHA512(),
}


def _verify(spki: bytes, sig: bytes, data: bytes, hash_alg: HashAlg, scheme: SignScheme) -> None:
    public = serialization.load_der_public_key(spki)
    h = _HASH[hash_alg]
    if isinstance(public, ec.EllipticCurvePublicKey):
        public.verify(sig, data, ec.ECDSA(h))
    else:
        assert isinstance(public, rsa.RSAPublicKey)
        pad: padding.AsymmetricPadding = (
            padding.PSS(padding.MGF1(h), h.digest_size)
            if scheme is SignScheme.RSA_PSS
            else padding.PKCS1v15()
        )
        public.verify(sig, data, pad, h)


@pytest.fixture(scope="module")
def all_keys(keys: Pkcs11KeyManager) -> dict[KeyAlgorithm, object]:
    return {alg: keys.generate(alg, f"all-{alg.value}") for alg in KeyAlgorithm}


@pytest.mark.parametrize("algorithm", list(KeyAlgorithm))
@pytest.mark.parametrize("hash_alg", list(HashAlg))
def test_sign_round_trip_verified_by_cryptography(keys, all_keys, algorithm, hash_alg):
    ref = all_keys[algorithm]
    schemes = (
        [SignScheme.RSA_PKCS1V15, SignScheme.RSA_PSS] if algorithm.is_rsa else [SignScheme.ECDSA]
    )
    data = secrets.token_bytes(200)
    for scheme in schemes:
        sig = keys.sign(ref, data, hash_alg, scheme)
        _verify(ref.public_key_der, sig, data, hash_alg, scheme)
        # a different message must not verify with that signature
        with pytest.raises(Exception, match=r".*"):
            _verify(ref.public_key_der, sig, data + b"x", hash_alg, scheme)


def test_generated_public_key_matches_algorithm(all_keys):
    for algorithm, ref in all_keys.items():
        public = serialization.load_der_public_key(ref.public_key_der)
        if algorithm.is_rsa:
            assert isinstance(public, rsa.RSAPublicKey)
            assert public.key_size == algorithm.rsa_bits
        else:
            assert isinstance(public, ec.EllipticCurvePublicKey)
            assert public.curve.name == algorithm.curve


def test_private_keys_are_sensitive_and_not_extractable(keys, all_keys):
    for ref in all_keys.values():
        attrs = keys.private_key_attributes(ref)
        assert attrs == {
            "sensitive": True,
            "extractable": False,
            "always_sensitive": True,
            "never_extractable": True,
            "token": True,
            "private": True,
        }
        with pytest.raises(HsmRefused):
            keys.read_private_value(ref)


def test_keys_survive_reopening_the_token(token):
    first = Pkcs11KeyManager(token.module, token.label, token.pin)
    ref = first.generate(KeyAlgorithm.ECDSA_P256, "survivor")
    first.close()
    second = Pkcs11KeyManager(token.module, token.label, token.pin)
    found = second.find(key_id=ref.key_id)
    assert found == ref
    assert second.find(label="survivor") == ref
    sig = second.sign(found, b"still here", HashAlg.SHA256, SignScheme.ECDSA)
    _verify(ref.public_key_der, sig, b"still here", HashAlg.SHA256, SignScheme.ECDSA)


def test_find_list_and_destroy(keys):
    ref = keys.generate(KeyAlgorithm.ECDSA_P384, "to-destroy")
    assert ref in keys.keys()
    with pytest.raises(HsmKeyExists):
        keys.generate(KeyAlgorithm.ECDSA_P256, "dup", key_id=ref.key_id)
    keys.destroy(ref)
    with pytest.raises(HsmKeyNotFound):
        keys.find(key_id=ref.key_id)
    with pytest.raises(HsmKeyNotFound):
        keys.sign(ref, b"x", HashAlg.SHA256, SignScheme.ECDSA)


def test_wrong_scheme_and_digest_length_are_refused(keys, all_keys):
    from hsm.errors import HsmUnsupported

    with pytest.raises(HsmUnsupported):
        keys.sign(all_keys[KeyAlgorithm.ECDSA_P256], b"x", HashAlg.SHA256, SignScheme.RSA_PSS)
    with pytest.raises(HsmUnsupported):
        keys.sign_digest(
            all_keys[KeyAlgorithm.RSA_2048], b"short", HashAlg.SHA256, SignScheme.RSA_PKCS1V15
        )


def test_concurrent_signing_from_8_threads(keys, all_keys):
    ref = all_keys[KeyAlgorithm.ECDSA_P256]
    errors: list[BaseException] = []
    results: list[tuple[bytes, bytes]] = []
    lock = threading.Lock()

    def worker() -> None:
        try:
            for _ in range(50):
                msg = secrets.token_bytes(32)
                sig = keys.sign(ref, msg, HashAlg.SHA256, SignScheme.ECDSA)
                with lock:
                    results.append((msg, sig))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(results) == 400
    for msg, sig in results:
        _verify(ref.public_key_der, sig, msg, HashAlg.SHA256, SignScheme.ECDSA)


def _sign_in_child(manager: Pkcs11KeyManager, ref, queue) -> None:
    try:
        queue.put(manager.sign(ref, b"child", HashAlg.SHA256, SignScheme.ECDSA))
    except BaseException as exc:  # report, don't hang the parent
        queue.put(repr(exc))


def test_forked_child_reinitialises_and_signs(keys, all_keys):
    ref = all_keys[KeyAlgorithm.ECDSA_P256]
    keys.sign(ref, b"parent first", HashAlg.SHA256, SignScheme.ECDSA)  # parent has sessions
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_sign_in_child, args=(keys, ref, queue))
    child.start()
    sig = queue.get(timeout=60)
    child.join(60)
    assert isinstance(sig, bytes), sig
    _verify(ref.public_key_der, sig, b"child", HashAlg.SHA256, SignScheme.ECDSA)
    # and the parent still works after the child went away
    sig2 = keys.sign(ref, b"parent", HashAlg.SHA256, SignScheme.ECDSA)
    _verify(ref.public_key_der, sig2, b"parent", HashAlg.SHA256, SignScheme.ECDSA)


def test_wrong_pin_is_a_clear_error(tokens):
    untouched = tokens.untouched
    manager = Pkcs11KeyManager(untouched.module, untouched.label, untouched.pin + "-wrong")
    with pytest.raises(HsmAuthError, match="refused the user PIN"):
        manager.keys()


def test_missing_module_and_token_are_clear_errors(token):
    with pytest.raises(HsmUnavailable, match="module not found"):
        Pkcs11KeyManager("/nonexistent/libpkcs11.so", token.label, token.pin).keys()
    with pytest.raises(HsmUnavailable, match="no token labelled"):
        Pkcs11KeyManager(token.module, "no-such-token", token.pin).keys()


def test_keymanager_protocol(keys):
    assert isinstance(keys, KeyManager)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


@pytest.mark.parametrize("algorithm", list(KeyAlgorithm))
def test_cryptography_builders_sign_through_the_hsm(keys, all_keys, algorithm, tmp_path):
    """Certificate, CRL and OCSP builders accept HSM keys; outputs verify (and in openssl)."""
    ref = all_keys[algorithm]
    key = private_key(keys, ref)
    assert isinstance(key, HsmRsaPrivateKey if algorithm.is_rsa else HsmEllipticCurvePrivateKey)
    with pytest.raises(Exception, match="never leave the HSM"):
        key.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    now = datetime.now(UTC)
    h = hashes.SHA384() if algorithm is KeyAlgorithm.ECDSA_P384 else hashes.SHA256()
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("hsm test"))
        .issuer_name(_name("hsm test"))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, h)
    )
    cert.verify_directly_issued_by(cert)
    pem = tmp_path / "cert.pem"
    pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    out = subprocess.run(
        ["openssl", "verify", "-CAfile", pem, pem], capture_output=True, text=True, check=False
    )
    assert out.returncode == 0, out.stdout + out.stderr

    crl = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(cert.subject)
        .last_update(now)
        .next_update(now + timedelta(days=1))
        .add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(42).revocation_date(now).build()
        )
        .sign(key, h)
    )
    assert crl.is_signature_valid(cert.public_key())  # type: ignore[arg-type]
    crl_pem = tmp_path / "crl.pem"
    crl_pem.write_bytes(crl.public_bytes(serialization.Encoding.PEM))
    out = subprocess.run(
        ["openssl", "crl", "-in", crl_pem, "-CAfile", pem, "-noout"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0 and "verify OK" in out.stderr + out.stdout, out.stderr

    if algorithm.is_rsa:
        pss = cert.public_key()
        sig = key.sign(
            b"pss",
            padding.PSS(padding.MGF1(hashes.SHA256()), padding.PSS.DIGEST_LENGTH),
            hashes.SHA256(),
        )
        pss.verify(
            sig,
            b"pss",
            padding.PSS(padding.MGF1(hashes.SHA256()), 32),  # type: ignore[call-arg]
            hashes.SHA256(),
        )
        digest = hashes.Hash(hashes.SHA256())
        digest.update(b"pre")
        d = digest.finalize()
        sig = key.sign(d, padding.PKCS1v15(), Prehashed(hashes.SHA256()))
        pss.verify(sig, b"pre", padding.PKCS1v15(), hashes.SHA256())  # type: ignore[call-arg]

    resp = (
        ocsp.OCSPResponseBuilder()
        .add_response(
            cert=cert,
            issuer=cert,
            algorithm=hashes.SHA256(),
            cert_status=ocsp.OCSPCertStatus.GOOD,
            this_update=now,
            next_update=now + timedelta(hours=1),
            revocation_time=None,
            revocation_reason=None,
        )
        .responder_id(ocsp.OCSPResponderEncoding.HASH, cert)
        .sign(key, h)
    )
    public = cert.public_key()
    if isinstance(public, ec.EllipticCurvePublicKey):
        public.verify(resp.signature, resp.tbs_response_bytes, ec.ECDSA(h))
    else:
        public.verify(resp.signature, resp.tbs_response_bytes, padding.PKCS1v15(), h)


def test_no_private_key_material_in_python_objects(keys, all_keys):
    """The adapter holds a reference and a public key, nothing secret."""
    key = private_key(keys, all_keys[KeyAlgorithm.RSA_2048])
    with pytest.raises(Exception, match="never leave the HSM"):
        key.private_numbers()
    assert set(vars(key)) == {"manager", "ref", "_public"}


def test_hsm_package_imports_nothing_of_ours():
    code = (
        "import sys, hsm, hsm.pkcs11, hsm.keys, hsm.softhsm; "
        "bad=[m for m in sys.modules if m.split('.')[0] in ('ca','signing','kakuin')]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
