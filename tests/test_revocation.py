"""Revocation over the API, seen by openssl through OCSP and CRLs, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import subprocess
import urllib.request
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from ca import audit
from kakuin.cli import main
from tests.cafixtures import Env, _call, _csr


def _issue(env: Env) -> tuple[str, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    _, req = _call(env.url, "POST", "/api/v1/seal-requests", env.school, {"csr": _csr(key)})
    status, req = _call(
        env.url, "POST", f"/api/v1/seal-requests/{req['id']}/approve", env.officer_a
    )
    assert status == 200, req
    pem = req["certificate"]["pem"]
    return req["certificate"]["serial"], x509.load_pem_x509_certificate(pem.encode())


def _ocsp(env: Env, leaf: Path, *extra: str) -> str:
    pki = env.home / "pki"
    out = subprocess.run(
        [
            "openssl",
            "ocsp",
            *extra,
            "-issuer",
            pki / "kakuin-issuing-ca.pem",
            "-cert",
            leaf,
            "-url",
            f"{env.url}/ocsp",
            "-CAfile",
            pki / "kakuin-root-ca.pem",
            "-verify_other",
            pki / "kakuin-issuing-ca.pem",
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert "Response verify OK" in out.stderr + out.stdout, out.stderr + out.stdout
    return out.stdout


def _crl(env: Env, tmp_path: Path) -> Path:
    req = urllib.request.Request(f"{env.url}/pki/kakuin-issuing-ca.crl")
    with urllib.request.urlopen(req, timeout=30) as resp:
        assert resp.headers["Content-Type"] == "application/pkix-crl"
        der = resp.read()
    path = tmp_path / "issuing.crl"
    path.write_bytes(der)
    pem = tmp_path / "issuing.crl.pem"
    subprocess.run(["openssl", "crl", "-inform", "DER", "-in", path, "-out", pem], check=True)
    return pem


def test_revoke_suspend_unsuspend_seen_by_openssl(env: Env, tmp_path: Path) -> None:
    serial, cert = _issue(env)
    leaf = tmp_path / "leaf.pem"
    leaf.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    assert ": good" in _ocsp(env, leaf, "-sha256")

    status, body = _call(
        env.url,
        "POST",
        f"/api/v1/certificates/{serial}/revoke",
        env.officer_a,
        {"reason": "certificateHold"},
    )
    assert status == 200 and body["status"] == "hold", body
    out = _ocsp(env, leaf, "-sha256", "-no_nonce")
    assert ": revoked" in out and "certificateHold" in out

    status, body = _call(env.url, "POST", f"/api/v1/certificates/{serial}/unsuspend", env.officer_a)
    assert status == 200 and body["status"] == "issued"
    assert ": good" in _ocsp(env, leaf)

    status, body = _call(
        env.url,
        "POST",
        f"/api/v1/certificates/{serial}/revoke",
        env.officer_a,
        {"reason": "cessationOfOperation", "invalidity_date": "2020-01-01T00:00:00Z"},
    )
    assert status == 422  # before the certificate existed
    status, body = _call(
        env.url,
        "POST",
        f"/api/v1/certificates/{serial}/revoke",
        env.officer_a,
        {"reason": "cessationOfOperation"},
    )
    assert status == 200 and body["status"] == "revoked"
    out = _ocsp(env, leaf, "-sha256")
    assert ": revoked" in out and "cessationOfOperation" in out

    crl_pem = _crl(env, tmp_path)
    pki = env.home / "pki"
    text = subprocess.run(
        [
            "openssl",
            "crl",
            "-in",
            crl_pem,
            "-noout",
            "-text",
            "-CAfile",
            pki / "kakuin-issuing-ca.pem",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "verify OK" in text.stderr + text.stdout
    assert serial.upper().zfill(len(serial) + len(serial) % 2) in text.stdout.replace(":", "")
    assert "Cessation Of Operation" in text.stdout

    verify = subprocess.run(
        [
            "openssl",
            "verify",
            "-crl_check",
            "-CRLfile",
            crl_pem,
            "-CAfile",
            pki / "kakuin-root-ca.pem",
            "-untrusted",
            pki / "kakuin-issuing-ca.pem",
            leaf,
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert verify.returncode != 0 and "certificate revoked" in verify.stdout + verify.stderr

    status, body = _call(
        env.url,
        "POST",
        f"/api/v1/certificates/{serial}/revoke",
        env.officer_a,
        {"reason": "keyCompromise"},
    )
    assert status == 409  # revoked is final


def test_who_may_revoke(env: Env) -> None:
    serial, _ = _issue(env)
    for token in (env.officer_b,):
        status, problem = _call(
            env.url,
            "POST",
            f"/api/v1/certificates/{serial}/revoke",
            token,
            {"reason": "superseded"},
        )
        assert status == 403, problem
    status, problem = _call(
        env.url,
        "POST",
        f"/api/v1/certificates/{serial}/revoke",
        env.school,
        {"reason": "superseded"},
    )
    assert status == 403 and "keyCompromise" in problem["detail"]
    status, problem = _call(
        env.url, "POST", f"/api/v1/certificates/{serial}/revoke", env.school, {"reason": "bogus"}
    )
    assert status == 422
    status, body = _call(
        env.url,
        "POST",
        f"/api/v1/certificates/{serial}/revoke",
        env.school,
        {"reason": "keyCompromise"},
    )
    assert status == 200 and body["revocation_reason"] == "keyCompromise"


def test_key_revoked_for_compromise_is_never_certified_again(env: Env) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    _, req = _call(env.url, "POST", "/api/v1/seal-requests", env.school, {"csr": _csr(key)})
    _, req = _call(env.url, "POST", f"/api/v1/seal-requests/{req['id']}/approve", env.officer_a)
    serial = req["certificate"]["serial"]
    status, _ = _call(
        env.url,
        "POST",
        f"/api/v1/certificates/{serial}/revoke",
        env.officer_a,
        {"reason": "keyCompromise"},
    )
    assert status == 200
    status, problem = _call(
        env.url, "POST", "/api/v1/seal-requests", env.school, {"csr": _csr(key)}
    )
    assert status == 409 and "keyCompromise" in problem["detail"]


def test_cli_revoke_unsuspend_status(env: Env, settings) -> None:
    serial, _ = _issue(env)
    runner = CliRunner()
    environ = {
        "KAKUIN_DATABASE_URL": str(env.store.engine.url.render_as_string(hide_password=False))
    }
    home = ["--home", str(settings.home)]
    out = runner.invoke(
        main,
        [*home, "cert", "revoke", serial, "--reason", "certificateHold"],
        env=environ,
        catch_exceptions=False,
    )
    assert out.exit_code == 0 and "hold" in out.output, out.output
    out = runner.invoke(main, [*home, "cert", "status", serial], env=environ)
    assert json.loads(out.output)["status"] == "hold"
    out = runner.invoke(main, [*home, "cert", "unsuspend", serial], env=environ)
    assert out.exit_code == 0 and "issued" in out.output
    out = runner.invoke(main, [*home, "cert", "unsuspend", serial], env=environ)
    assert out.exit_code == 1 and "not suspended" in out.output
    out = runner.invoke(main, [*home, "cert", "status", "zz"], env=environ)
    assert out.exit_code == 1 and "hexadecimal" in out.output


@pytest.mark.parametrize("reason", ["affiliationChanged", "superseded"])
def test_board_reasons(env: Env, reason: str) -> None:
    serial, _ = _issue(env)
    status, body = _call(
        env.url, "POST", f"/api/v1/certificates/{serial}/revoke", env.officer_a, {"reason": reason}
    )
    assert status == 200 and body["revocation_reason"] == reason
    with env.store.session() as s:
        entries = audit.entries(s, limit=1000)
        assert audit.verify(s).ok
    assert any(
        e.action == "certificate.revoked" and e.object_id and e.object_id.endswith(serial)
        for e in entries
    )


def test_ocsp_post_is_answered_below_flask(env: Env) -> None:
    """The fast path: same protocol answer, no Flask hooks (no X-Request-ID)."""
    req = urllib.request.Request(f"{env.url}/ocsp", data=b"\x30\x00", method="POST",
                                 headers={"Content-Type": "application/ocsp-request"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        assert resp.headers["Content-Type"] == "application/ocsp-response"
        assert "X-Request-ID" not in resp.headers
        assert resp.headers["Cache-Control"] == "no-store"
        from cryptography.x509 import ocsp as x509_ocsp

        parsed = x509_ocsp.load_der_ocsp_response(resp.read())
        assert parsed.response_status == x509_ocsp.OCSPResponseStatus.MALFORMED_REQUEST
    with urllib.request.urlopen(f"{env.url}/healthz", timeout=30) as resp:
        assert resp.headers["X-Request-ID"]
