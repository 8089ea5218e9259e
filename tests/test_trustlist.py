"""Trust lists (signing/trustlist.py): our signed list, pinned imports of another region's list
(from a file and over real HTTP), refusals (pin, tampering, schema, staleness, rollback) and the
verification anchors. The other region is a CA made here in software whose list signer key
lives in the HSM; our signer is issued by the session's issuing CA.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from joserfc import jws as jose_jws
from joserfc.jwk import ECKey
from joserfc.registry import HeaderParameter
from werkzeug.serving import make_server

from ca import status
from ca.issuer import CertificateOrder, issue
from hsm.api import KeyAlgorithm
from signing import fetch as outbound
from signing import jades, trustlist
from signing.trustlist import TrustListError

SAPPORO = "https://tsl.sapporo.example.jp"


def _sha(der: bytes) -> str:
    return hashlib.sha256(der).hexdigest()


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "JP"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "札幌市教育委員会"),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


def _cert(
    cn: str,
    public: Any,
    issuer: x509.Certificate | None,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    ca: bool,
    eku: list[x509.ObjectIdentifier] | None = None,
) -> x509.Certificate:
    now = datetime.now(UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(issuer.subject if issuer else _name(cn))
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if eku:
        builder = builder.add_extension(x509.ExtendedKeyUsage(eku), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _hsm_credential(services: Any, cert_for: Any, chain_above: tuple[bytes, ...]) -> Any:
    """An HSM key and a certificate for it made by ``cert_for(public_key, key_id_hex)``."""
    ref = services.keys.generate(KeyAlgorithm.ECDSA_P256, f"test-tsl-{secrets.token_hex(4)}")
    cert = cert_for(serialization.load_der_public_key(ref.public_key_der), ref.key_id_hex)
    return status.Credential(
        key_id=ref.key_id,
        algorithm="EllipticCurvePublicKey",
        certificate=_der(cert),
        chain=(_der(cert), *chain_above),
        serial=format(cert.serial_number, "x"),
        issuer_name="test",
        organization_id=None,
        organization_name=None,
    )


@dataclass(frozen=True)
class Region:
    """Another kakuin instance: its CA certificates and two list signers (for rollover)."""

    root: bytes
    issuing: bytes
    signer: status.Credential
    next_signer: status.Credential

    def services(self, **status_of: str) -> list[dict[str, Any]]:
        out = trustlist.local_services(
            [self.issuing, self.root],
            base_url=SAPPORO,
            root_name="sapporo-root",
            issuing_name="sapporo-issuing",
        )
        return [
            {**s, "status": status_of.get(s["type"].replace("-", "_"), s["status"])} for s in out
        ]

    def signed(self, services: Any, keys: Any, *, sequence: int, **kw: Any) -> dict[str, Any]:
        signer = kw.pop("signer", self.signer)
        doc = trustlist.build_trust_list(
            name="札幌市教育委員会",
            region="北海道",
            base_url=SAPPORO,
            services=self.services() if services is None else services,
            sequence=sequence,
            **kw,
        )
        return trustlist.sign_trust_list(doc, signer, keys)


@pytest.fixture(scope="module")
def region(services: Any) -> Region:
    root_key = ec.generate_private_key(ec.SECP256R1())
    issuing_key = ec.generate_private_key(ec.SECP256R1())
    root = _cert("Sapporo Root CA", root_key.public_key(), None, root_key, ca=True)
    issuing = _cert("Sapporo Issuing CA", issuing_key.public_key(), root, root_key, ca=True)
    tsl = [trustlist.TSL_SIGNING_EKU]

    def signer(public: Any, _: str) -> x509.Certificate:
        return _cert("Sapporo Trust List Signer", public, issuing, issuing_key, ca=False, eku=tsl)

    above = (_der(issuing), _der(root))
    return Region(
        _der(root),
        _der(issuing),
        _hsm_credential(services, signer, above),
        _hsm_credential(services, signer, above),
    )


@pytest.fixture(scope="module")
def own_signer(services: Any, settings: Any) -> status.Credential:
    """Our signer, issued by the session's issuing CA with the trust-list-signer profile."""
    authority = services.ca.authority()
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "JP"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, settings.ca.organization),
            x509.NameAttribute(NameOID.COMMON_NAME, "kakuin Trust List Signer"),
        ]
    )

    def make(public: Any, key_id: str) -> x509.Certificate:
        profile = services.profiles["trust-list-signer"]
        order = CertificateOrder(profile, subject, public, hsm_key_id=key_id)
        return issue(services.store, authority, order, actor="test")

    return _hsm_credential(services, make, status.ca_chain(services.store))


def _own_services(services: Any, settings: Any) -> list[dict[str, Any]]:
    return trustlist.local_services(
        status.ca_chain(services.store),
        base_url=settings.base_url,
        root_name=settings.ca.root_name,
        issuing_name=settings.ca.issuing_name,
        tsa=status.tsa_credential(services.store).certificate,
    )


def _own_root(services: Any) -> bytes:
    return status.ca_chain(services.store)[-1]


def _file(tmp_path: Path, jws: dict[str, Any], name: str = "list.json") -> str:
    path = tmp_path / name
    path.write_text(json.dumps(jws))
    return str(path)


def _payload(jws: dict[str, Any]) -> dict[str, Any]:
    value: dict[str, Any] = json.loads(base64.urlsafe_b64decode(jws["payload"] + "=="))
    return value


# -- our own list -----------------------------------------------------------------------------


def test_round_trip_and_contents(services: Any, settings: Any, own_signer: Any) -> None:
    doc = trustlist.build_trust_list(
        name=settings.ca.organization,
        region="東京都",
        base_url=settings.base_url,
        services=_own_services(services, settings),
        sequence=1,
    )
    jws = trustlist.sign_trust_list(doc, own_signer, services.keys)
    verified = trustlist.verify_trust_list(jws, trust_roots=[_own_root(services)])
    assert verified.document == {**doc, "signers": [_sha(own_signer.certificate)]}
    assert verified.signer_sha256 == _sha(own_signer.certificate)
    again = trustlist.verify_trust_list(json.dumps(jws).encode(), pins={verified.signer_sha256})
    assert again.document == verified.document

    by_type = {s["type"]: s for s in verified.document["services"]}
    assert set(by_type) == {"root-ca", "issuing-ca", "tsa"}
    base = settings.base_url.rstrip("/")
    assert by_type["issuing-ca"]["ocsp"] == f"{base}/ocsp"
    assert by_type["issuing-ca"]["crl"] == f"{base}/pki/{settings.ca.issuing_name}.crl"
    assert by_type["root-ca"]["crl"] == f"{base}/pki/{settings.ca.root_name}.crl"
    assert "ocsp" not in by_type["tsa"] and "crl" not in by_type["tsa"]
    assert all(s["status"] == "granted" for s in by_type.values())
    issued = datetime.strptime(doc["issued_at"], "%Y-%m-%dT%H:%M:%SZ")
    assert datetime.strptime(doc["next_update"], "%Y-%m-%dT%H:%M:%SZ") - issued == timedelta(7)


def test_independent_jose_library_verifies_with_x5c_key(
    services: Any, settings: Any, own_signer: Any
) -> None:
    doc = trustlist.build_trust_list(
        name="kakuin", region="東京都", base_url=settings.base_url, services=[], sequence=2
    )
    jws = trustlist.sign_trust_list(doc, own_signer, services.keys)
    header = json.loads(base64.urlsafe_b64decode(jws["protected"] + "=="))
    leaf = x509.load_der_x509_certificate(base64.b64decode(header["x5c"][0]))
    assert _der(leaf) == own_signer.certificate
    public = leaf.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey)
    registry = jose_jws.JWSRegistry(
        header_registry={"iat": HeaderParameter("Issued at", "int")}, algorithms=["ES256"]
    )
    registry.max_header_length = 16 * 1024
    value: Any = dict(jws)
    result = jose_jws.deserialize_json(value, ECKey.import_key(public), registry=registry)
    assert json.loads(result.payload) == {**doc, "signers": [_sha(own_signer.certificate)]}
    assert result.payload == jades.canonicalize(result.payload)


def test_tampered_payload_fails(services: Any, region: Region) -> None:
    jws = region.signed(None, services.keys, sequence=5)
    doc = _payload(jws)
    doc["services"][0]["status"] = "withdrawn"
    payload = base64.urlsafe_b64encode(jades.canonicalize(json.dumps(doc).encode()))
    forged = {**jws, "payload": payload.rstrip(b"=").decode()}
    pin = _sha(region.signer.certificate)
    with pytest.raises(TrustListError, match="signature does not verify"):
        trustlist.verify_trust_list(forged, pins={pin})


def test_signer_must_be_a_trust_list_signer(services: Any) -> None:
    """A document e-seal (here the TSA) cannot sign or pass for a trust list."""
    tsa = status.tsa_credential(services.store)
    doc = trustlist.build_trust_list(
        name="x", region="x", base_url=SAPPORO, services=[], sequence=1
    )
    with pytest.raises(TrustListError, match="tslSigning"):
        trustlist.sign_trust_list(doc, tsa, services.keys)
    jws = jades.seal_json(json.dumps(doc).encode(), tsa, services.keys)
    with pytest.raises(TrustListError, match="tslSigning"):
        trustlist.verify_trust_list(jws, pins={_sha(tsa.certificate)})


def test_wrong_schema_is_refused(services: Any, region: Region) -> None:
    doc = trustlist.build_trust_list(
        name="x", region="x", base_url=SAPPORO, services=region.services(), sequence=1
    )
    pin = {_sha(region.signer.certificate)}
    for bad in ({"schema": "kakuin-trust-list/2"}, {"sequence": -1}, {"issuer": "x"}):
        jws = trustlist.sign_trust_list({**doc, **bad}, region.signer, services.keys)
        with pytest.raises(TrustListError):
            trustlist.verify_trust_list(jws, pins=pin)
    service = {**doc["services"][0], "sha256": "0" * 64}
    jws = trustlist.sign_trust_list({**doc, "services": [service]}, region.signer, services.keys)
    with pytest.raises(TrustListError, match="sha256 does not match"):
        trustlist.verify_trust_list(jws, pins=pin)


# -- import -----------------------------------------------------------------------------------


def test_import_from_file_and_anchors_are_exactly_ours_and_theirs(
    services: Any, settings: Any, own_signer: Any, region: Region, tmp_path: Path
) -> None:
    source = _file(tmp_path, region.signed(None, services.keys, sequence=10))
    pin = _sha(region.signer.certificate)
    imported = trustlist.import_trust_list(tmp_path, source, pin=pin.upper(), name="sapporo")
    assert imported.pinned_signer_sha256 == pin and imported.trust_list.sequence == 10
    stored = json.loads((tmp_path / "trust/imported/sapporo.json").read_text())
    assert stored["pinned_signer_sha256"] == pin and stored["jws"] == json.loads(
        Path(source).read_text()
    )
    (loaded,) = trustlist.load_imported(tmp_path)
    assert loaded == imported

    ours = _own_services(services, settings)
    doc = trustlist.build_trust_list(
        name="kakuin",
        region="東京都",
        base_url=settings.base_url,
        services=ours,
        sequence=3,
        imported=[loaded],
    )
    (entry,) = doc["imported"]
    assert entry["name"] == "sapporo" and entry["pinned_signer_sha256"] == pin
    assert entry["sequence"] == 10 and entry["issuer"]["region"] == "北海道"
    jws = trustlist.sign_trust_list(doc, own_signer, services.keys)
    verified = trustlist.verify_trust_list(jws, trust_roots=[_own_root(services)])
    anchors = trustlist.anchors(verified.document)
    chain = status.ca_chain(services.store)
    assert set(anchors.roots) == {_own_root(services), region.root}
    assert len(anchors.roots) == 2
    assert set(anchors.intermediates) == {chain[0], region.issuing}
    assert anchors.withdrawn == ()
    tsa = status.tsa_credential(services.store).certificate
    assert tsa not in anchors.roots + anchors.intermediates


def test_import_over_real_http(services: Any, region: Region, tmp_path: Path) -> None:
    served = {"/trust-list": json.dumps(region.signed(None, services.keys, sequence=20)).encode()}

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        body = served.get(environ["PATH_INFO"])
        if body is None:
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"no"]
        start_response("200 OK", [("Content-Type", trustlist.MEDIA_TYPE)])
        return [body]

    server = make_server("127.0.0.1", 0, app)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/trust-list"
        pin = _sha(region.signer.certificate)
        # Loopback is refused unless the settings allow it ([fetch] allow_networks)...
        with pytest.raises(TrustListError, match="loopback, private or link-local"):
            trustlist.import_trust_list(tmp_path, url, pin=pin)
        assert trustlist.load_imported(tmp_path) == []
        # ... as the tests and the demo do.
        loopback = outbound.FetchPolicy(allow_networks=outbound.parse_networks("127.0.0.0/8"))

        def fetch(u: str) -> bytes:
            return trustlist.fetch_list(u, loopback)

        imported = trustlist.import_trust_list(tmp_path, url, pin=pin, fetch=fetch)
        assert imported.source_url == url and imported.name == "tsl-sapporo-example-jp"
        assert imported.trust_list.sequence == 20
        # The scheduler's refresh finds a newer list at the same URL, no pin needed.
        served["/trust-list"] = json.dumps(region.signed(None, services.keys, sequence=21)).encode()
        assert trustlist.refresh_imported(tmp_path, fetch=fetch) == {
            "tsl-sapporo-example-jp": "ok"}
        (loaded,) = trustlist.load_imported(tmp_path)
        assert loaded.trust_list.sequence == 21
        with pytest.raises(TrustListError, match="cannot fetch"):
            trustlist.import_trust_list(tmp_path, url + "-missing", pin=pin, fetch=fetch)
    finally:
        server.shutdown()


def test_pin_is_required_and_must_match(services: Any, region: Region, tmp_path: Path) -> None:
    source = _file(tmp_path, region.signed(None, services.keys, sequence=1))
    with pytest.raises(TrustListError, match="needs --pin"):
        trustlist.import_trust_list(tmp_path, source)
    with pytest.raises(TrustListError, match="does not match the pin"):
        trustlist.import_trust_list(tmp_path, source, pin=secrets.token_hex(32))
    with pytest.raises(TrustListError, match="does not match the pin"):  # another signer
        trustlist.import_trust_list(tmp_path, source, pin=_sha(region.next_signer.certificate))
    with pytest.raises(TrustListError, match="SHA-256 hex"):
        trustlist.import_trust_list(tmp_path, source, pin="abc")
    assert trustlist.load_imported(tmp_path) == []


def test_rollback_and_equivocation_are_refused(
    services: Any, region: Region, tmp_path: Path
) -> None:
    pin = _sha(region.signer.certificate)
    newer = region.signed(None, services.keys, sequence=200)
    trustlist.import_trust_list(tmp_path, _file(tmp_path, newer, "a.json"), pin=pin)
    older = _file(tmp_path, region.signed(None, services.keys, sequence=100), "b.json")
    with pytest.raises(TrustListError, match="rollback: sequence 100 < 200"):
        trustlist.import_trust_list(tmp_path, older, pin=pin)
    other = region.signed(region.services(root_ca="withdrawn"), services.keys, sequence=200)
    with pytest.raises(TrustListError, match="reused with other content"):
        trustlist.import_trust_list(tmp_path, _file(tmp_path, other, "c.json"), pin=pin)
    # The same list again is harmless; under another name it replaces the old file.
    again = trustlist.import_trust_list(
        tmp_path, _file(tmp_path, newer, "d.json"), pin=pin, name="hokkaido"
    )
    assert [i.name for i in trustlist.load_imported(tmp_path)] == ["hokkaido"]
    assert again.trust_list.sequence == 200


def test_stale_and_future_lists_are_refused(services: Any, region: Region, tmp_path: Path) -> None:
    pin = _sha(region.signer.certificate)
    now = datetime.now(UTC)
    stale = region.signed(None, services.keys, sequence=1, now=now - timedelta(days=8))
    with pytest.raises(TrustListError, match="stale"):
        trustlist.import_trust_list(tmp_path, _file(tmp_path, stale), pin=pin)
    future = region.signed(None, services.keys, sequence=1, now=now + timedelta(hours=1))
    with pytest.raises(TrustListError, match="in the future"):
        trustlist.import_trust_list(tmp_path, _file(tmp_path, future), pin=pin)
    # Stored lists going stale stay loadable but are no longer vouched for.
    fresh = region.signed(None, services.keys, sequence=2)
    imported = trustlist.import_trust_list(tmp_path, _file(tmp_path, fresh), pin=pin)
    later = now + timedelta(days=8)
    doc = trustlist.build_trust_list(
        name="k",
        region="k",
        base_url=SAPPORO,
        services=[],
        sequence=1,
        imported=[imported],
        now=later,
    )
    assert doc["imported"] == []
    assert trustlist.load_imported(tmp_path) == [imported]


def test_withdrawn_services_are_not_anchors(services: Any, region: Region, tmp_path: Path) -> None:
    pin = _sha(region.signer.certificate)
    jws = region.signed(region.services(issuing_ca="withdrawn"), services.keys, sequence=1)
    imported = trustlist.import_trust_list(tmp_path, _file(tmp_path, jws), pin=pin)
    anchors = trustlist.anchors(imported.trust_list.document)
    assert anchors == trustlist.Anchors((region.root,), (), (region.issuing,))
    jws = region.signed(region.services(root_ca="withdrawn"), services.keys, sequence=2)
    imported = trustlist.import_trust_list(tmp_path, _file(tmp_path, jws), pin=pin)
    anchors = trustlist.anchors(imported.trust_list.document)
    assert anchors.roots == () and anchors.withdrawn == (region.root,)
    assert trustlist.remove_imported(tmp_path, imported.name)
    assert trustlist.load_imported(tmp_path) == []
    assert not trustlist.remove_imported(tmp_path, imported.name)
    # Withdrawn by one list, granted by another: withdrawn.
    ours = {
        "services": region.services(),
        "imported": [{"services": region.services(root_ca="withdrawn")}],
    }
    assert region.root not in trustlist.anchors(ours).roots


def test_signer_rollover_moves_the_pin(services: Any, region: Region, tmp_path: Path) -> None:
    """The old signer announces the next one; a re-import without --pin then accepts it."""
    old_pin = _sha(region.signer.certificate)
    new_pin = _sha(region.next_signer.certificate)
    announcing = region.signed(None, services.keys, sequence=1, signers=[new_pin])
    source = _file(tmp_path, announcing)
    trustlist.import_trust_list(tmp_path, source, pin=old_pin)
    renewed = region.signed(None, services.keys, sequence=2, signer=region.next_signer)
    _file(tmp_path, renewed)
    imported = trustlist.import_trust_list(tmp_path, source)
    assert imported.pinned_signer_sha256 == new_pin
    # The new list no longer announces the old signer: it is not accepted any more.
    _file(tmp_path, region.signed(None, services.keys, sequence=3, signer=region.signer))
    with pytest.raises(TrustListError, match="does not match the pin"):
        trustlist.import_trust_list(tmp_path, source)


def test_tampered_stored_import_is_ignored(services: Any, region: Region, tmp_path: Path) -> None:
    pin = _sha(region.signer.certificate)
    jws = region.signed(None, services.keys, sequence=1)
    trustlist.import_trust_list(tmp_path, _file(tmp_path, jws), pin=pin, name="sapporo")
    path = tmp_path / "trust/imported/sapporo.json"
    stored = json.loads(path.read_text())
    stored["pinned_signer_sha256"] = _sha(region.next_signer.certificate)
    path.write_text(json.dumps(stored))
    assert trustlist.load_imported(tmp_path) == []


# -- the published list -----------------------------------------------------------------------


def test_published_list_is_cached_and_sequence_increases(
    services: Any, settings: Any, own_signer: Any, region: Region, tmp_path: Path
) -> None:
    ours = _own_services(services, settings)
    kw: dict[str, Any] = {
        "name": "kakuin",
        "region": "東京都",
        "base_url": settings.base_url,
        "services": ours,
    }
    first = trustlist.current_trust_list(tmp_path, own_signer, services.keys, **kw)
    assert trustlist.current_trust_list(tmp_path, own_signer, services.keys, **kw) == first
    doc1 = trustlist.verify_trust_list(first, trust_roots=[_own_root(services)]).document
    assert doc1["imported"] == []

    # An import changes the content: re-signed with a higher sequence.
    source = _file(tmp_path, region.signed(None, services.keys, sequence=1))
    trustlist.import_trust_list(tmp_path, source, pin=_sha(region.signer.certificate))
    second = trustlist.current_trust_list(tmp_path, own_signer, services.keys, **kw)
    doc2 = trustlist.verify_trust_list(second, trust_roots=[_own_root(services)]).document
    assert doc2["sequence"] > doc1["sequence"] and len(doc2["imported"]) == 1
    assert set(trustlist.anchors(doc2).roots) == {_own_root(services), region.root}

    # Past half its validity the same content is signed again.
    later = datetime.now(UTC) + timedelta(days=4)
    third = trustlist.current_trust_list(tmp_path, own_signer, services.keys, now=later, **kw)
    doc3 = trustlist.verify_trust_list(third, trust_roots=[_own_root(services)], now=later)
    assert doc3.sequence > doc2["sequence"]
    assert (tmp_path / "trust/published.json").read_bytes() == third
