"""JAdES sealing of JSON records (signing/jades.py): strict input, RFC 8785 payloads, B-B/B-T/
B-LT, detached ``sigD``, batches; checked with an independent JOSE library (joserfc), with
``openssl ts -verify`` for the signature timestamps and with our own ``verify_jws``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import random
import re
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509 import ocsp
from joserfc import jws as jose_jws
from joserfc.errors import BadSignatureError, JoseError
from joserfc.jwk import ECKey, RSAKey
from joserfc.registry import HeaderParameter

from ca import clients, crl, status
from signing import jades
from signing.errors import BadDocument, TooLarge, Unavailable
from signing.tsa import ETSI_BTSP_POLICY, TimeStampAuthority, timestamp_token
from tests.cafixtures import Env, _call

RECORD = json.dumps(
    {
        "type": "在学証明書",
        "student": {"name": "山田 花子", "grade": 3, "class": "B"},
        "school_code": "C113210000010",
        "issued": "2026-11-24",
        "scores": [88, 92.5, 71],
    },
    ensure_ascii=False,
    indent=2,
).encode()


# -- strict parsing and canonical form (no HSM) ----------------------------------------------


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b'{"a":1,"a":2}', "duplicate member name 'a'"),
        (b'{"a":{"b":1,"b":1}}', "duplicate member name 'b'"),
        (b'{"a":NaN}', "NaN is not a JSON number"),
        (b'{"a":Infinity}', "Infinity is not a JSON number"),
        (b'{"a":-Infinity}', "-Infinity is not a JSON number"),
        (b'{"a":1e400}', "out of the IEEE 754 double range"),
        (b'{"id":12345678901234567890}', "not exactly an IEEE 754 double"),
        (b'{"a":0.10000000000000000001}', "not exactly an IEEE 754 double"),
        (b'{"a":"\xff"}', "not valid UTF-8 (byte offset 6)"),
        (b'{"a":"\xed\xa0\x80"}', "not valid UTF-8"),  # a surrogate encoded in UTF-8
        (b'{"a":"\\ud800"}', "unpaired UTF-16 surrogate U+D800"),
        (b'\xef\xbb\xbf{"a":1}', "byte order mark"),
        (b'{"a":' + b"[" * 64 + b"]" * 64 + b"}", "nested deeper than 64"),
        (b"[" * 100_000 + b"]" * 100_000, "nested deeper than 64"),
        (b"", "not JSON"),
        (b"{'a': 1}", "not JSON"),
        (b'{"a":1} {}', "not JSON: Extra data"),
        (b'{"a":"\x01"}', "not JSON: Invalid control character"),
        (b"[1,2]", "must be a JSON object"),
        (b'"text"', "must be a JSON object"),
    ],
)
def test_bad_records_are_refused_precisely(raw: bytes, message: str) -> None:
    with pytest.raises(BadDocument, match=re.escape(message)):
        jades.parse_record(raw)


def test_too_large_is_413(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(jades, "MAX_RECORD_BYTES", 100)
    with pytest.raises(TooLarge):
        jades.canonicalize(b'{"a":"' + b"x" * 100 + b'"}')


def test_depth_limit_is_inclusive() -> None:
    ok = b'{"a":' + b"[" * 62 + b"]" * 62 + b"}"  # 63 arrays + the object = 64 levels
    assert jades.parse_record(ok)


def test_canonical_form_is_rfc8785() -> None:
    raw = (
        '{"b": [1, 2.50, 1E2, -0, 1e21, 1e-7, 0.000001, 295147905179352830000],'
        ' "a": "é\\n\\u001f/\\u007f\\"", "€": 1, "😀": 2, "｡": 3, "1": {"z": null, "y": true}}'
    ).encode()
    assert (
        jades.canonicalize(raw)
        == (
            '{"1":{"y":true,"z":null},"a":"é\\n\\u001f/\x7f\\"",'
            '"b":[1,2.5,100,0,1e+21,1e-7,0.000001,295147905179352830000],'
            '"€":1,"😀":2,"｡":3}'  # sorted by UTF-16 code units: U+20AC < U+D83D < U+FF61
        ).encode()
    )
    canonical = jades.canonicalize(RECORD)
    assert jades.canonicalize(canonical) == canonical
    assert b" " not in canonical.replace("山田 花子".encode(), b"")


def test_fast_path_matches_the_general_serializer() -> None:
    """Integer-only, BMP-only records take the C encoder; it must agree with the RFC 8785
    serializer byte for byte."""
    rng = random.Random(8785)
    alphabet = 'aZ09 _-/\\"\n\t\x00\x1f\x7fé€ｱ漢字\u2028\ufeff'

    def text() -> str:
        return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 8)))

    def value(depth: int) -> Any:
        kind = rng.randint(0, 6 if depth < 5 else 4)
        if kind == 0:
            return rng.randint(-(2**53), 2**53)
        if kind == 1:
            return text()
        if kind == 2:
            return rng.choice([True, False, None])
        if kind in (3, 4):
            return rng.randint(-5, 5)
        if kind == 5:
            return [value(depth + 1) for _ in range(rng.randint(0, 4))]
        return {text(): value(depth + 1) for _ in range(rng.randint(0, 4))}

    for _ in range(500):
        record = {text(): value(1) for _ in range(rng.randint(1, 6))}
        raw = json.dumps(record, ensure_ascii=rng.random() < 0.5, indent=rng.choice([None, 2]))
        assert jades.canonicalize(raw.encode()) == jades._jcs(record).encode()


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (333333333.3333333, "333333333.3333333"),
        (1e30, "1e+30"),
        (4.5, "4.5"),
        (0.002, "0.002"),
        (1e-27, "1e-27"),
        (5e-324, "5e-324"),
        (1.7976931348623157e308, "1.7976931348623157e+308"),
        (9007199254740994.0, "9007199254740994"),
        (123e-20, "1.23e-18"),
        (-1.5, "-1.5"),
    ],
)
def test_ecmascript_number_form(value: float, text: str) -> None:
    assert jades._es_number(value) == text


# -- fixtures: hosted e-seals, the TSA, joserfc --------------------------------------------------


@dataclass(frozen=True)
class Sealing:
    env: Env
    keys: Any
    credential: status.Credential
    root: bytes
    timestamp: Callable[[bytes], bytes]


def _hosted(env: Env, school_token: str, algorithm: str) -> None:
    status_code, req = _call(
        env.url,
        "POST",
        "/api/v1/seal-requests",
        school_token,
        {"key": {"hosted": True, "algorithm": algorithm}},
    )
    assert status_code == 201, req
    status_code, done = _call(
        env.url, "POST", f"/api/v1/seal-requests/{req['id']}/approve", env.officer_a
    )
    assert status_code == 200 and done["status"] == "issued", done


@pytest.fixture(scope="module")
def sealing(env: Env, services: Any) -> Sealing:
    _hosted(env, env.school, "ECDSA-P256")
    authority = TimeStampAuthority(env.store, services.keys, policy_oid=ETSI_BTSP_POLICY)
    return Sealing(
        env,
        services.keys,
        status.seal_credential(env.store, env.school_id),
        status.ca_chain(env.store)[-1],
        lambda data: timestamp_token(authority, data).dump(),
    )


def _other_school(env: Env, code: str, algorithm: str) -> status.Credential:
    status_code, school = _call(
        env.url,
        "POST",
        "/api/v1/organizations",
        env.officer_a,
        {"kind": "school", "name_ja": f"新宿区立学校 {code}", "school_code": code},
    )
    assert status_code == 201, school
    status_code, school = _call(
        env.url, "POST", f"/api/v1/organizations/{school['id']}/confirm", env.operator
    )
    assert status_code == 200, school
    with env.store.session() as s:
        _, token = clients.create_client(
            s, organization_id=school["id"], role="school-system", name="sys", actor="test"
        )
    _hosted(env, token, algorithm)
    return status.seal_credential(env.store, school["id"])


def _registry() -> jose_jws.JWSRegistry:
    """joserfc, told about the JAdES header parameters we use (it refuses unknown ``crit``
    names and unknown header members otherwise, as RFC 7515 asks)."""
    registry = jose_jws.JWSRegistry(
        header_registry={
            "iat": HeaderParameter("Issued at (RFC 7519 as a header)", "int"),
            "sigD": HeaderParameter("JAdES signed data reference", lambda v: None),
            "etsiU": HeaderParameter("JAdES unsigned properties", lambda v: None),
        },
        algorithms=["ES256", "ES384", "PS256"],
    )
    registry.max_header_length = 16 * 1024  # x5c makes our headers longer than 512 bytes
    return registry


def _header(jws: dict[str, Any]) -> dict[str, Any]:
    raw = base64.urlsafe_b64decode(jws["protected"] + "==")
    return json.loads(raw)


def _jose_verify(jws: dict[str, Any], payload: str | None = None) -> Any:
    """joserfc's JWS JSON deserialization with the public key of ``x5c[0]``."""
    leaf = x509.load_der_x509_certificate(base64.b64decode(_header(jws)["x5c"][0]))
    public = leaf.public_key()
    key: ECKey | RSAKey
    if isinstance(public, rsa.RSAPublicKey):
        key = RSAKey.import_key(public)
    else:
        assert isinstance(public, ec.EllipticCurvePublicKey)
        key = ECKey.import_key(public)
    value: Any = dict(jws)
    if payload is not None:
        value["payload"] = payload
    return jose_jws.deserialize_json(value, key, registry=_registry())


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


# -- B-B -----------------------------------------------------------------------------------------


def test_bb_header_payload_and_independent_verification(sealing: Sealing) -> None:
    before = int(datetime.now(UTC).timestamp())
    jws = jades.seal_json(RECORD, sealing.credential, sealing.keys)
    assert set(jws) == {"payload", "protected", "signature"}
    header = _header(jws)
    assert set(header) == {"alg", "typ", "cty", "x5t#S256", "x5c", "iat", "crit"}
    assert header["alg"] == "ES256" and header["typ"] == "jose+json" and header["cty"] == "json"
    assert header["crit"] == ["iat"] and "sigT" not in header
    assert before <= header["iat"] <= before + 5
    leaf_der = base64.b64decode(header["x5c"][0])
    assert leaf_der == sealing.credential.certificate
    assert header["x5t#S256"] == _b64url(hashlib.sha256(leaf_der).digest())
    assert [base64.b64decode(c) for c in header["x5c"]] == list(sealing.credential.chain[:-1])

    # The payload is the record's RFC 8785 form, nothing else.
    assert base64.urlsafe_b64decode(jws["payload"] + "==") == jades.canonicalize(RECORD)

    signed = _jose_verify(jws)
    assert signed.payload == jades.canonicalize(RECORD)
    result = jades.verify_jws(jws, [sealing.root])
    assert result.level == "B-B" and result.alg == "ES256"
    assert result.payload == jades.canonicalize(RECORD)
    assert result.signing_time == datetime.fromtimestamp(header["iat"], UTC)


def test_x5c_chain_validates_to_our_root(sealing: Sealing) -> None:
    jws = jades.seal_json(RECORD, sealing.credential, sealing.keys)
    chain = [x509.load_der_x509_certificate(base64.b64decode(c)) for c in _header(jws)["x5c"]]
    root = x509.load_der_x509_certificate(sealing.root)
    for child, parent in zip(chain, [*chain[1:], root], strict=True):
        child.verify_directly_issued_by(parent)
    assert root.subject == root.issuer


@pytest.mark.parametrize(
    ("algorithm", "alg", "code"),
    [("ECDSA-P384", "ES384", "C113210000028"), ("RSA-2048", "PS256", "C113210000036")],
)
def test_other_key_types(sealing: Sealing, algorithm: str, alg: str, code: str) -> None:
    credential = _other_school(sealing.env, code, algorithm)
    jws = jades.seal_json(
        RECORD, credential, sealing.keys, level="B-T", timestamp=sealing.timestamp
    )
    assert _header(jws)["alg"] == alg
    assert _jose_verify(jws).payload == jades.canonicalize(RECORD)
    assert jades.verify_jws(jws, [sealing.root]).alg == alg


def _tampered_payload(jws: dict[str, Any]) -> dict[str, Any]:
    record = json.loads(base64.urlsafe_b64decode(jws["payload"] + "=="))
    record["student"]["grade"] = 2
    return {**jws, "payload": _b64url(jades.canonicalize(json.dumps(record).encode()))}


def _tampered_header(jws: dict[str, Any]) -> dict[str, Any]:
    header = _header(jws)
    header["iat"] -= 86400 * 365  # backdate by a year
    return {**jws, "protected": _b64url(json.dumps(header).encode())}


def _one_byte(jws: dict[str, Any]) -> dict[str, Any]:
    raw = bytearray(base64.urlsafe_b64decode(jws["payload"] + "=="))
    raw[-2] ^= 0x01  # still valid JSON text, different bytes
    return {**jws, "payload": _b64url(bytes(raw))}


@pytest.mark.parametrize("tamper", [_tampered_payload, _tampered_header, _one_byte])
def test_changed_payload_or_header_fails(sealing: Sealing, tamper: Any) -> None:
    jws = tamper(jades.seal_json(RECORD, sealing.credential, sealing.keys))
    with pytest.raises(BadSignatureError):
        _jose_verify(jws)
    with pytest.raises(jades.InvalidSeal, match="signature does not verify"):
        jades.verify_jws(jws, [sealing.root])


def test_alg_none_and_hmac_are_refused(sealing: Sealing) -> None:
    jws = jades.seal_json(RECORD, sealing.credential, sealing.keys)
    header = _header(jws)
    # alg "none" with an empty signature.
    none = {
        **jws,
        "protected": _b64url(json.dumps({**header, "alg": "none"}).encode()),
        "signature": "",
    }
    with pytest.raises(jades.InvalidSeal, match="alg 'none' is not allowed"):
        jades.verify_jws(none, [sealing.root])
    # HS256 keyed with the certificate's public key: the classic algorithm-confusion forgery.
    protected = _b64url(json.dumps({**header, "alg": "HS256"}).encode())
    secret = x509.load_der_x509_certificate(sealing.credential.certificate).public_key()
    mac_key = secret.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    mac = hmac.new(mac_key, f"{protected}.{jws['payload']}".encode(), "sha256").digest()
    forged = {**jws, "protected": protected, "signature": _b64url(mac)}
    with pytest.raises(jades.InvalidSeal, match="alg 'HS256' is not allowed"):
        jades.verify_jws(forged, [sealing.root])
    with pytest.raises(JoseError):
        _jose_verify(forged)


def test_untrusted_root_and_wrong_thumbprint_fail(sealing: Sealing) -> None:
    jws = jades.seal_json(RECORD, sealing.credential, sealing.keys)
    issuing = base64.b64decode(_header(jws)["x5c"][1])
    tsa = status.tsa_credential(sealing.env.store).certificate
    with pytest.raises(jades.InvalidSeal, match="no path"):
        jades.verify_jws(jws, [tsa])  # a certificate of ours, but not an issuer of the seal
    assert jades.verify_jws(jws, [issuing]).level == "B-B"  # trusting the issuing CA is fine
    header = {**_header(jws), "x5t#S256": _b64url(b"\0" * 32)}
    bad = {**jws, "protected": _b64url(json.dumps(header).encode())}
    with pytest.raises(jades.InvalidSeal, match="x5t#S256"):
        jades.verify_jws(bad, [sealing.root])


def test_unknown_crit_is_refused(sealing: Sealing) -> None:
    jws = jades.seal_json(RECORD, sealing.credential, sealing.keys)
    header = {**_header(jws), "exp": 1, "crit": ["iat", "exp"]}
    bad = {**jws, "protected": _b64url(json.dumps(header).encode())}
    with pytest.raises(jades.InvalidSeal, match="crit names 'exp'"):
        jades.verify_jws(bad, [sealing.root])


# -- B-T and B-LT ----------------------------------------------------------------------------------


def _openssl_ts_verify(
    tmp_path: Path, token: bytes, data: bytes, root: bytes, untrusted: list[bytes]
) -> str:
    (tmp_path / "token.der").write_bytes(token)
    (tmp_path / "data.txt").write_bytes(data)
    pem = lambda der: x509.load_der_x509_certificate(der).public_bytes(  # noqa: E731
        serialization.Encoding.PEM
    )
    (tmp_path / "root.pem").write_bytes(pem(root))
    (tmp_path / "untrusted.pem").write_bytes(b"".join(pem(d) for d in untrusted))
    out = subprocess.run(
        [
            "openssl",
            "ts",
            "-verify",
            "-token_in",
            "-in",
            str(tmp_path / "token.der"),
            "-data",
            str(tmp_path / "data.txt"),
            "-CAfile",
            str(tmp_path / "root.pem"),
            "-untrusted",
            str(tmp_path / "untrusted.pem"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    return out.stdout + out.stderr


def test_bt_sigtst_verifies_with_openssl(sealing: Sealing, tmp_path: Path) -> None:
    jws = jades.seal_json(
        RECORD, sealing.credential, sealing.keys, level="B-T", timestamp=sealing.timestamp
    )
    (entry,) = jws["header"]["etsiU"]
    (token,) = entry["sigTst"]["tstTokens"]
    assert set(token) == {"val"}
    der = base64.b64decode(token["val"])
    tsa = status.tsa_credential(sealing.env.store)
    untrusted = [*sealing.credential.chain[1:-1], *tsa.chain[:-1]]
    # The imprint covers the ASCII of the base64url signature value (TS 119 182-1 5.3.4).
    data = jws["signature"].encode("ascii")
    out = _openssl_ts_verify(tmp_path, der, data, sealing.root, untrusted)
    assert "Verification: OK" in out, out
    other = data[:-1] + (b"B" if data.endswith(b"A") else b"A")
    out = _openssl_ts_verify(tmp_path, der, other, sealing.root, untrusted)
    assert "Verification: OK" not in out, out

    assert _jose_verify(jws).payload == jades.canonicalize(RECORD)
    result = jades.verify_jws(jws, [sealing.root])
    assert result.level == "B-T"
    assert abs(result.timestamps[0] - result.signing_time) < timedelta(seconds=5)


def test_timestamp_over_something_else_is_refused(sealing: Sealing) -> None:
    def wrong(data: bytes) -> bytes:
        return sealing.timestamp(data + b"x")

    with pytest.raises(Unavailable, match="does not cover the signature"):
        jades.seal_json(RECORD, sealing.credential, sealing.keys, level="B-T", timestamp=wrong)


def test_moved_timestamp_fails(sealing: Sealing) -> None:
    a = jades.seal_json(
        RECORD, sealing.credential, sealing.keys, level="B-T", timestamp=sealing.timestamp
    )
    b = jades.seal_json(
        RECORD, sealing.credential, sealing.keys, level="B-T", timestamp=sealing.timestamp
    )
    swapped = {**a, "header": b["header"]}
    with pytest.raises(jades.InvalidSeal, match="does not cover the signature value"):
        jades.verify_jws(swapped, [sealing.root])


def test_base64url_etsiu_form_is_read_too(sealing: Sealing) -> None:
    jws = jades.seal_json(
        RECORD, sealing.credential, sealing.keys, level="B-T", timestamp=sealing.timestamp
    )
    encoded = [_b64url(json.dumps(e).encode()) for e in jws["header"]["etsiU"]]
    assert jades.verify_jws({**jws, "header": {"etsiU": encoded}}, [sealing.root]).timestamps
    mixed = [encoded[0], *jws["header"]["etsiU"]]
    with pytest.raises(jades.InvalidSeal, match="mixes"):
        jades.verify_jws({**jws, "header": {"etsiU": mixed}}, [sealing.root])


def test_blt_embeds_certificates_and_revocation_data(sealing: Sealing, settings: Any) -> None:
    store = sealing.env.store
    authorities = crl.load_authorities(
        store, sealing.keys, root_name=settings.ca.root_name, issuing_name=settings.ca.issuing_name
    )
    crl.publish_due(store, authorities=authorities)
    tsa = status.tsa_credential(store)
    material = jades.gather_validation_material(
        store, sealing.keys, sealing.credential, tsa=tsa, crl_issuers=[settings.ca.root_name]
    )
    jws = jades.seal_json(
        RECORD,
        sealing.credential,
        sealing.keys,
        level="B-LT",
        timestamp=sealing.timestamp,
        validation_material=material,
    )
    etsi_u = jws["header"]["etsiU"]
    assert [next(iter(e)) for e in etsi_u] == ["sigTst", "xVals", "rVals"]
    x_vals = [base64.b64decode(v["x509Cert"]["val"]) for v in etsi_u[1]["xVals"]]
    assert sealing.root in x_vals and tsa.certificate in x_vals
    assert sealing.credential.certificate not in x_vals  # already in x5c
    r_vals = etsi_u[2]["rVals"]
    responses = [
        ocsp.load_der_ocsp_response(base64.b64decode(v["val"])) for v in r_vals["ocspVals"]
    ]
    assert len(responses) == 2
    assert all(r.response_status == ocsp.OCSPResponseStatus.SUCCESSFUL for r in responses)
    serials = {r.serial_number for resp in responses for r in resp.responses}
    assert int(sealing.credential.serial, 16) in serials
    crls = [x509.load_der_x509_crl(base64.b64decode(v["val"])) for v in r_vals["crlVals"]]
    issuers = {x509.load_der_x509_certificate(d).subject for d in sealing.credential.chain[1:]}
    assert {c.issuer for c in crls} == issuers  # the issuing CA's and the root's

    assert _jose_verify(jws).payload == jades.canonicalize(RECORD)
    assert jades.verify_jws(jws, [sealing.root]).level == "B-LT"


# -- detached ------------------------------------------------------------------------------------


def test_detached_sigd_verifies_only_with_the_right_record(sealing: Sealing) -> None:
    name = "class-2026/3-B/record-0001.json"
    jws = jades.seal_json(
        RECORD,
        sealing.credential,
        sealing.keys,
        detached=True,
        name=name,
        level="B-T",
        timestamp=sealing.timestamp,
    )
    assert "payload" not in jws
    header = _header(jws)
    assert "cty" not in header and header["crit"] == ["iat", "sigD"]
    canonical = jades.canonicalize(RECORD)
    assert header["sigD"] == {
        "mId": "http://uri.etsi.org/19182/ObjectIdByURIHash",
        "pars": [name],
        "hashM": "S256",
        "hashV": [_b64url(hashlib.sha256(_b64url(canonical).encode()).digest())],
        "ctys": ["json"],
    }
    assert _jose_verify(jws, payload="").payload == b""
    result = jades.verify_jws(jws, [sealing.root], detached={name: canonical})
    assert result.detached_names == (name,) and result.payload == b"" and result.level == "B-T"
    # The same record pretty-printed verifies after canonicalization (why we sign JCS).
    pretty = json.dumps(json.loads(RECORD), indent=4, ensure_ascii=True).encode()
    assert jades.verify_jws(jws, [sealing.root], detached=jades.canonicalize(pretty))

    other = json.loads(RECORD)
    other["student"]["grade"] = 2
    with pytest.raises(jades.InvalidSeal, match="does not match its sigD hash"):
        jades.verify_jws(
            jws, [sealing.root], detached=jades.canonicalize(json.dumps(other).encode())
        )
    with pytest.raises(jades.InvalidSeal, match="not given"):
        jades.verify_jws(jws, [sealing.root], detached={"other.json": canonical})
    with pytest.raises(jades.InvalidSeal, match="record is needed"):
        jades.verify_jws(jws, [sealing.root])
    with pytest.raises(jades.InvalidSeal, match="empty payload"):
        jades.verify_jws({**jws, "payload": _b64url(canonical)}, [sealing.root], detached=canonical)


def test_detached_name_must_be_a_uri_reference(sealing: Sealing) -> None:
    with pytest.raises(BadDocument, match="URI reference"):
        jades.seal_json(
            RECORD, sealing.credential, sealing.keys, detached=True, name="山田 花子.json"
        )


# -- batches -------------------------------------------------------------------------------------


def _records(n: int) -> list[bytes]:
    return [
        json.dumps(
            {"student_no": i, "name": f"生徒 {i}", "graduated": "2027-03-15"}, ensure_ascii=False
        ).encode()
        for i in range(n)
    ]


def test_batch_of_100_gives_100_independent_signatures(sealing: Sealing) -> None:
    records = _records(100)
    sealed = jades.seal_batch(records, sealing.credential, sealing.keys)
    assert len(sealed) == 100
    assert len({s["signature"] for s in sealed}) == 100
    assert len({s["protected"] for s in sealed}) == 1  # one iat, one header for the batch
    for record, jws in zip(records, sealed, strict=True):
        assert _jose_verify(jws).payload == jades.canonicalize(record)
        assert jades.verify_jws(jws, [sealing.root]).payload == jades.canonicalize(record)
    # Signatures do not vouch for each other's payloads.
    crossed = {**sealed[0], "payload": sealed[1]["payload"]}
    with pytest.raises(jades.InvalidSeal):
        jades.verify_jws(crossed, [sealing.root])


def test_batch_bt_and_detached(sealing: Sealing) -> None:
    records = _records(5)
    names = [f"grad-2027/{i:04d}.json" for i in range(5)]
    sealed = jades.seal_batch(
        records,
        sealing.credential,
        sealing.keys,
        level="B-T",
        timestamp=sealing.timestamp,
        detached=True,
        names=names,
    )
    tokens = {s["header"]["etsiU"][0]["sigTst"]["tstTokens"][0]["val"] for s in sealed}
    assert len(tokens) == 5
    for name, record, jws in zip(names, records, sealed, strict=True):
        result = jades.verify_jws(jws, [sealing.root], detached={name: jades.canonicalize(record)})
        assert result.detached_names == (name,) and result.level == "B-T"


def test_one_bad_record_fails_the_batch_by_index(sealing: Sealing) -> None:
    records = _records(5)
    records[3] = b'{"student_no": 3, "student_no": 4}'
    with pytest.raises(BadDocument, match="record 3: duplicate member name 'student_no'"):
        jades.seal_batch(records, sealing.credential, sealing.keys)


def test_level_arguments_are_checked(sealing: Sealing) -> None:
    with pytest.raises(ValueError, match="needs a timestamp"):
        jades.seal_json(RECORD, sealing.credential, sealing.keys, level="B-T")
    with pytest.raises(ValueError, match="validation material"):
        jades.seal_json(
            RECORD, sealing.credential, sealing.keys, level="B-LT", timestamp=sealing.timestamp
        )
    with pytest.raises(ValueError, match="unknown JAdES level"):
        jades.seal_json(RECORD, sealing.credential, sealing.keys, level="B-LTA")  # type: ignore[arg-type]
