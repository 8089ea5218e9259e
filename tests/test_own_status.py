"""``ca.status.OwnStatus``: our own OCSP and CRL URLs answered in process with the bytes the
HTTP endpoints send (the verifier must never call its own server)."""

from __future__ import annotations

import urllib.request
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp

from ca import status


def _get(url: str, body: bytes | None = None) -> bytes:
    headers = {"Content-Type": "application/ocsp-request"} if body else {}
    req = urllib.request.Request(url, data=body, headers=headers)
    with urllib.request.urlopen(req, timeout=30) as resp:
        data: bytes = resp.read()
        return data


def test_own_status_answers_like_the_endpoints(live_server: Any, settings: Any) -> None:
    store = live_server.services.store
    own = status.OwnStatus(store, live_server.services.keys, settings.base_url,
                           settings.ca.issuing_name)
    tsa = status.tsa_credential(store)
    cert = x509.load_der_x509_certificate(tsa.certificate)
    issuer = x509.load_der_x509_certificate(tsa.chain[1])
    request = ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, hashes.SHA1()).build() \
        .public_bytes(serialization.Encoding.DER)  # noqa: S303 (RFC 5019 CertID)
    base = settings.base_url
    mine = own(f"{base}/ocsp", request)
    theirs = _get(f"{live_server.url}/ocsp", request)
    assert mine is not None
    a, b = ocsp.load_der_ocsp_response(mine), ocsp.load_der_ocsp_response(theirs)
    assert a.response_status == b.response_status == ocsp.OCSPResponseStatus.SUCCESSFUL
    assert [r.serial_number for r in a.responses] == [r.serial_number for r in b.responses]
    assert mine == theirs  # pre-signed: the very same DER
    for name in (settings.ca.issuing_name, settings.ca.root_name):
        assert own(f"{base}/pki/{name}.crl", None) == _get(f"{live_server.url}/pki/{name}.crl")
    # Not ours: other hosts, other paths.
    assert own("http://other.example/ocsp", request) is None
    assert own(f"{base}/pki/{settings.ca.root_name}.crt", None) is None
    assert own(f"{base}.evil.example/ocsp", request) is None
    # A garbage request gets malformedRequest, as over HTTP.
    bad = own(f"{base}/ocsp", b"\x30\x03\x02\x01\x00")
    assert bad is not None
    assert ocsp.load_der_ocsp_response(bad).response_status == \
        ocsp.OCSPResponseStatus.MALFORMED_REQUEST
