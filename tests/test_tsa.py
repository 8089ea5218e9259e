"""The RFC 3161 TSA: queries made by ``openssl ts -query``, answers checked by ``openssl ts
-reply -text`` / ``openssl ts -verify``, asn1crypto (DER byte for byte) and pyHanko's own
timestamp validation; every kind of bad query, an unvouched clock, HSM and database failure;
unique recorded serials; the in-process pyHanko timestamper and the external HTTP client.
"""

from __future__ import annotations

import asyncio
import hashlib
import subprocess
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from asn1crypto import cms, core, tsp
from asn1crypto import crl as asn1_crl
from asn1crypto import x509 as asn1_x509
from pyhanko.sign.timestamps import TimestampRequestError
from pyhanko.sign.validation.generic_cms import validate_tst_signed_data
from pyhanko.sign.validation.status import TimestampSignatureStatus
from pyhanko_certvalidator import ValidationContext
from sqlalchemy import select
from sqlalchemy.exc import OperationalError
from werkzeug.serving import make_server

from ca import status
from ca.models import AuditEntry, TsaSerial
from hsm.errors import HsmUnavailable
from kakuin.services import Services
from signing import fetch as outbound
from signing import tsa as tsa_module
from signing.errors import Unavailable
from signing.tsa import (
    ETSI_BTSP_POLICY,
    MAX_QUERY_BYTES,
    REPLY_CONTENT_TYPE,
    LocalTimeStamper,
    TimeStampAuthority,
    TimestampRefused,
    TimeStampResponse,
    external_timestamper,
    kernel_clock_check,
    read_kernel_clock,
    timestamp_token,
)

DATA = "東京都立の学校 timestamp me\n".encode()

# What `openssl ts -reply -text` prints for each failInfo (OpenSSL 3.0 ts_rsp_print.c).
OPENSSL_FAILURE_TEXT = {
    "bad_alg": "unrecognized or unsupported algorithm identifier",
    "bad_data_format": "the data submitted has the wrong format",
    "unaccepted_policy": "the requested TSA policy is not supported by the TSA",
    "unaccepted_extensions": "the requested extension is not supported by the TSA",
    "time_not_available": "the TSA's time source is not available",
    "system_failure": "the request cannot be handled due to system failure",
}


# -- helpers ---------------------------------------------------------------------------------


def _openssl(*args: str | Path, ok: bool = True) -> str:
    out = subprocess.run(
        ["openssl", *map(str, args)], capture_output=True, text=True, timeout=60, check=False
    )
    text = out.stdout + out.stderr
    if ok:
        assert out.returncode == 0, text
    return text


class Files:
    """A data file, queries and responses in a temporary directory."""

    def __init__(self, tmp_path: Path, pki: Path) -> None:
        self.dir = tmp_path
        self.pki = pki
        self.data = tmp_path / "data.txt"
        self.data.write_bytes(DATA)
        self.root = pki / "kakuin-root-ca.pem"
        self.untrusted = tmp_path / "untrusted.pem"
        self.untrusted.write_text(
            (pki / "kakuin-issuing-ca.pem").read_text()
            + (pki / "kakuin-issuing-ca-tsa.pem").read_text()
        )

    def query(self, *options: str, name: str = "q.tsq") -> bytes:
        path = self.dir / name
        _openssl("ts", "-query", "-data", self.data, *options, "-out", path)
        return path.read_bytes()

    def reply_text(self, response: bytes, name: str = "r.tsr") -> str:
        path = self.dir / name
        path.write_bytes(response)
        return _openssl("ts", "-reply", "-in", path, "-text")

    def verify(self, response: bytes, *how: str | Path, untrusted: bool = False) -> str:
        path = self.dir / "v.tsr"
        path.write_bytes(response)
        extra: list[str | Path] = ["-untrusted", self.untrusted] if untrusted else []
        return _openssl("ts", "-verify", *how, "-in", path, "-CAfile", self.root, *extra, ok=False)


@pytest.fixture
def files(tmp_path: Path, home: Path) -> Files:
    return Files(tmp_path, home / "pki")


@pytest.fixture
def authority(services: Services) -> TimeStampAuthority:
    return TimeStampAuthority(services.store, services.keys, policy_oid=ETSI_BTSP_POLICY)


def _tsa_cert(home: Path) -> asn1_x509.Certificate:
    return asn1_x509.Certificate.load((home / "pki" / "kakuin-issuing-ca-tsa.crt").read_bytes())


def _token(response: bytes) -> cms.ContentInfo:
    resp = TimeStampResponse.load(response)
    assert resp["status"]["status"].native == "granted", resp["status"].native
    return resp["time_stamp_token"]


def _tst_info(response: bytes) -> tsp.TSTInfo:
    return _token(response)["content"]["encap_content_info"]["content"].parsed


def _rejected(response: bytes) -> tuple[set[str], list[str]]:
    resp = TimeStampResponse.load(response)
    st = resp["status"]
    assert st["status"].native == "rejection"
    assert resp["time_stamp_token"].native is None
    return set(st["fail_info"].native), st["status_string"].native


def _asn1_query(**changes: Any) -> bytes:
    fields: dict[str, Any] = {
        "version": "v1",
        "message_imprint": {
            "hash_algorithm": {"algorithm": "sha256"},
            "hashed_message": hashlib.sha256(DATA).digest(),
        },
        "nonce": 0x1234567890ABCDEF,
        "cert_req": True,
    }
    fields.update(changes)
    return bytes(tsp.TimeStampReq(fields).dump())


# -- granted tokens, checked by openssl --------------------------------------------------------


@pytest.mark.parametrize("digest", ["sha256", "sha384", "sha512"])
def test_openssl_query_reply_verify(
    authority: TimeStampAuthority, files: Files, home: Path, digest: str
) -> None:
    query = files.query(f"-{digest}", "-cert")
    response = authority.respond(query, requester="test")

    text = files.reply_text(response)
    assert "Status: Granted." in text
    assert f"Policy OID: {ETSI_BTSP_POLICY}" in text
    assert f"Hash Algorithm: {digest}" in text
    assert "Accuracy: 0x01 seconds, unspecified millis, unspecified micros" in text
    assert "Ordering: no" in text
    assert "TSA: DirName:" in text and "CN=kakuin Time-Stamping Authority 1" in text
    nonce_line = next(line for line in text.splitlines() if line.startswith("Nonce: 0x"))
    assert (
        int(nonce_line.removeprefix("Nonce: 0x"), 16)
        == tsp.TimeStampReq.load(query)["nonce"].native
    )

    # certReq: the token carries the TSA and issuing CA certificates, so the root suffices.
    assert "Verification: OK" in files.verify(response, "-queryfile", files.dir / "q.tsq")
    assert "Verification: OK" in files.verify(response, "-data", files.data)
    assert "Verification: OK" in files.verify(
        response, "-queryfile", files.dir / "q.tsq", untrusted=True
    )
    other = files.dir / "other.txt"
    other.write_bytes(DATA + b"!")
    assert "Verification: OK" not in files.verify(response, "-data", other)


def test_token_fields_and_der(authority: TimeStampAuthority, files: Files, home: Path) -> None:
    query = files.query("-sha256", "-cert")
    response = authority.respond(query)
    # DER: asn1crypto re-encoding every parsed value gives back the very same bytes.
    assert TimeStampResponse.load(response).dump(force=True) == response
    token = _token(response)
    assert cms.ContentInfo.load(token.dump()).dump(force=True) == token.dump()

    req = tsp.TimeStampReq.load(query)
    info = _tst_info(response)
    assert info["version"].native == "v1"
    assert info["policy"].dotted == ETSI_BTSP_POLICY
    assert info["message_imprint"].dump() == req["message_imprint"].dump()
    assert info["nonce"].native == req["nonce"].native
    assert info["accuracy"].native == {"seconds": 1, "millis": None, "micros": None}
    assert info["ordering"].native is False
    gen_time = info["gen_time"].native
    assert gen_time.microsecond == 0
    assert abs(gen_time - datetime.now(UTC)) < timedelta(seconds=5)
    tsa_cert = _tsa_cert(home)
    assert info["tsa"].chosen == tsa_cert.subject
    assert 0 < info["serial_number"].native < 2**127

    signed = token["content"]
    assert signed["version"].native == "v3"
    assert signed["encap_content_info"]["content_type"].native == "tst_info"
    certs = [c.chosen for c in signed["certificates"]]
    # The TSA and issuing CA certificates (a SET OF: DER order); the root is the relying
    # party's own trust anchor.
    assert sorted(c.dump() for c in certs) == sorted(
        [tsa_cert.dump(), (home / "pki" / "kakuin-issuing-ca.crt").read_bytes()]
    )
    signer = signed["signer_infos"][0]
    assert signer["signature_algorithm"]["algorithm"].native == "sha256_ecdsa"
    attrs = {a["type"].native: a["values"][0] for a in signer["signed_attrs"]}
    assert set(attrs) == {"content_type", "message_digest", "signing_certificate_v2"}
    assert attrs["content_type"].native == "tst_info"
    econtent = signed["encap_content_info"]["content"].contents
    assert attrs["message_digest"].native == hashlib.sha256(econtent).digest()
    ess = attrs["signing_certificate_v2"]["certs"][0]
    assert ess["hash_algorithm"]["algorithm"].native == "sha256"
    assert ess["cert_hash"].native == hashlib.sha256(tsa_cert.dump()).digest()
    assert ess["issuer_serial"]["serial_number"].native == tsa_cert.serial_number
    assert ess["issuer_serial"]["issuer"][0].chosen == tsa_cert.issuer
    # SHA-256 is ESSCertIDv2's DEFAULT, so DER leaves it out: no sha256 OID in the encoding.
    assert bytes.fromhex("608648016503040201") not in ess.dump()


def test_no_nonce_and_absent_hash_parameters(authority: TimeStampAuthority, files: Files) -> None:
    response = authority.respond(files.query("-sha256", "-cert", "-no_nonce"))
    assert _tst_info(response)["nonce"].native is None
    assert "Verification: OK" in files.verify(response, "-queryfile", files.dir / "q.tsq")

    # RFC 5754 SHA-2 identifiers without the NULL: echoed exactly as asked.
    query = _asn1_query(
        message_imprint=tsp.MessageImprint.load(
            bytes.fromhex("302f300b0609608648016503040201")
            + b"\x04\x20"
            + hashlib.sha256(DATA).digest()
        )
    )
    info = _tst_info(authority.respond(query))
    assert info["message_imprint"].dump() == tsp.TimeStampReq.load(query)["message_imprint"].dump()
    assert info["nonce"].native == 0x1234567890ABCDEF


def test_cert_req_false_leaves_certificates_out(
    authority: TimeStampAuthority, files: Files
) -> None:
    response = authority.respond(files.query("-sha256"))  # no -cert
    assert _token(response)["content"]["certificates"].native is None
    # The signer must then come from elsewhere: openssl needs the TSA certificate given.
    assert "Verification: OK" not in files.verify(response, "-queryfile", files.dir / "q.tsq")
    assert "Verification: OK" in files.verify(
        response, "-queryfile", files.dir / "q.tsq", untrusted=True
    )


def test_serials_unique_and_recorded(authority: TimeStampAuthority, services: Services) -> None:
    query = _asn1_query()
    serials = [_tst_info(authority.respond(query))["serial_number"].native for _ in range(500)]
    assert len(set(serials)) == 500
    with services.store.session() as s:
        rows = s.scalars(
            select(TsaSerial).where(TsaSerial.serial.in_([format(n, "x") for n in serials]))
        ).all()
        assert len(rows) == 500
        assert {r.imprint_sha256 for r in rows} == {hashlib.sha256(DATA).hexdigest()}
        assert {(r.hash_algorithm, r.policy_oid) for r in rows} == {("sha256", ETSI_BTSP_POLICY)}


def test_serial_conflict_draws_again(authority: TimeStampAuthority, services: Services) -> None:
    first = _tst_info(authority.respond(_asn1_query()))["serial_number"].native
    draws = iter([first, first, first + 1])
    authority._new_serial = lambda: next(draws)  # type: ignore[method-assign]
    assert _tst_info(authority.respond(_asn1_query()))["serial_number"].native == first + 1

    authority._new_serial = lambda: first  # type: ignore[method-assign]
    fail, text = _rejected(authority.respond(_asn1_query()))
    assert fail == {"system_failure"} and "serial" in text[0]


def test_injected_clock_sets_gen_time(services: Services, files: Files, home: Path) -> None:
    not_before = _tsa_cert(home)["tbs_certificate"]["validity"]["not_before"].native
    at = not_before.replace(microsecond=0) + timedelta(days=1, microseconds=600_000)
    authority = TimeStampAuthority(
        services.store, services.keys, policy_oid=ETSI_BTSP_POLICY, clock=lambda: at
    )
    info = _tst_info(authority.respond(_asn1_query()))
    assert info["gen_time"].native == at.replace(microsecond=0)  # truncated, never ahead

    fine = TimeStampAuthority(
        services.store,
        services.keys,
        policy_oid=ETSI_BTSP_POLICY,
        accuracy=timedelta(milliseconds=250),
        clock=lambda: at,
    )
    response = fine.respond(files.query("-sha256", "-cert"))
    info = _tst_info(response)
    assert info["gen_time"].native == at
    assert info["accuracy"].native == {"seconds": None, "millis": 250, "micros": None}
    assert TimeStampResponse.load(response).dump(force=True) == response
    text = files.reply_text(response)
    assert ".6 2" in text and "Accuracy: unspecified seconds, 0xFA millis" in text
    assert "Verification: OK" in files.verify(response, "-queryfile", files.dir / "q.tsq")


# -- refusals ---------------------------------------------------------------------------------


def _bad_queries(files: Files) -> dict[str, tuple[bytes, str]]:
    good = files.query("-sha256", "-cert", name="good.tsq")
    sha256 = hashlib.sha256(DATA).digest()
    return {
        "garbage": (b"hello, TSA", "bad_data_format"),
        "empty": (b"", "bad_data_format"),
        "truncated": (good[:-3], "bad_data_format"),
        "trailing data": (good + b"\x00\x00", "bad_data_format"),
        "not a TimeStampReq": (bytes(core.Integer(5).dump()), "bad_data_format"),
        "oversized": (b"\x30\x82\x20\x00" + b"\x00" * 8192, "bad_data_format"),
        "just over the limit": (
            good + b"\x00" * (MAX_QUERY_BYTES - len(good) + 1),
            "bad_data_format",
        ),
        "version 2": (_asn1_query(version="v2"), "bad_data_format"),
        "sha1": (files.query("-sha1", name="sha1.tsq"), "bad_alg"),
        "md5": (files.query("-md5", name="md5.tsq"), "bad_alg"),
        "sha3-256": (
            _asn1_query(
                message_imprint={
                    "hash_algorithm": {"algorithm": "sha3_256"},
                    "hashed_message": sha256,
                }
            ),
            "bad_alg",
        ),
        "hash parameters": (  # sha256 with INTEGER 1 where NULL or nothing belongs
            _asn1_query(
                message_imprint=tsp.MessageImprint.load(
                    bytes.fromhex("3032300e0609608648016503040201020101") + b"\x04\x20" + sha256
                )
            ),
            "bad_alg",
        ),
        "digest too short": (
            _asn1_query(
                message_imprint={
                    "hash_algorithm": {"algorithm": "sha256"},
                    "hashed_message": sha256[:-1],
                }
            ),
            "bad_data_format",
        ),
        "sha384 name, sha256 length": (
            _asn1_query(
                message_imprint={
                    "hash_algorithm": {"algorithm": "sha384"},
                    "hashed_message": sha256,
                }
            ),
            "bad_data_format",
        ),
        "other policy": (
            files.query("-sha256", "-tspolicy", "1.2.3.4.5", name="policy.tsq"),
            "unaccepted_policy",
        ),
        "critical extension": (
            _asn1_query(
                extensions=[
                    {"extn_id": "1.3.6.1.4.1.99999.1", "critical": True, "extn_value": b"\x05\x00"}
                ]
            ),
            "unaccepted_extensions",
        ),
        "non-critical extension": (
            _asn1_query(extensions=[{"extn_id": "1.3.6.1.4.1.99999.2", "extn_value": b"\x05\x00"}]),
            "unaccepted_extensions",
        ),
    }


def test_bad_queries_are_rejected(authority: TimeStampAuthority, files: Files) -> None:
    before = _count_serials(authority)
    for label, (query, fail_info) in _bad_queries(files).items():
        response = authority.respond(query)
        fail, text = _rejected(response)
        assert fail == {fail_info}, label
        assert text and text[0], label
        assert TimeStampResponse.load(response).dump(force=True) == response, label
        shown = files.reply_text(response, name="rejected.tsr")
        assert "Status: Rejected." in shown, label
        assert OPENSSL_FAILURE_TEXT[fail_info] in shown, (label, shown)
        assert "TST info:\nNot included." in shown, label
    assert _count_serials(authority) == before  # no serial spent on a refusal


def _count_serials(authority: TimeStampAuthority) -> int:
    with authority.store.session() as s:
        return len(s.scalars(select(TsaSerial.id)).all())


def test_policy_asked_for_by_name_is_granted(authority: TimeStampAuthority, files: Files) -> None:
    response = authority.respond(files.query("-sha256", "-cert", "-tspolicy", ETSI_BTSP_POLICY))
    assert _tst_info(response)["policy"].dotted == ETSI_BTSP_POLICY


def test_clock_check_failure_is_time_not_available(
    services: Services, files: Files, home: Path
) -> None:
    calls: list[int] = []

    def unsynchronised() -> bool | str:
        calls.append(1)
        return "chrony reports no reachable NTS source"

    authority = TimeStampAuthority(
        services.store, services.keys, policy_oid=ETSI_BTSP_POLICY, clock_check=unsynchronised
    )
    before = _count_serials(authority)
    response = authority.respond(files.query("-sha256", "-cert"))
    fail, text = _rejected(response)
    assert fail == {"time_not_available"}
    assert "chrony reports no reachable NTS source" in text[0]
    shown = files.reply_text(response)
    assert "Status: Rejected." in shown
    assert OPENSSL_FAILURE_TEXT["time_not_available"] in shown
    assert "chrony reports no reachable NTS source" in shown
    assert calls and _count_serials(authority) == before

    falsy = TimeStampAuthority(
        services.store, services.keys, policy_oid=ETSI_BTSP_POLICY, clock_check=lambda: False
    )
    assert _rejected(falsy.respond(_asn1_query()))[0] == {"time_not_available"}
    with pytest.raises(TimestampRefused) as refused:
        falsy.stamp(hashlib.sha256(DATA).digest())
    assert refused.value.fail_info == "time_not_available" and refused.value.status == 503


@pytest.mark.parametrize("when", ["before", "after"])
def test_clock_outside_tsa_certificate_is_time_not_available(
    services: Services, home: Path, when: str
) -> None:
    validity = _tsa_cert(home)["tbs_certificate"]["validity"]
    at = (
        validity["not_before"].native - timedelta(days=400)
        if when == "before"
        else validity["not_after"].native + timedelta(seconds=1)
    )
    authority = TimeStampAuthority(
        services.store, services.keys, policy_oid=ETSI_BTSP_POLICY, clock=lambda: at
    )
    fail, text = _rejected(authority.respond(_asn1_query()))
    assert fail == {"time_not_available"}
    assert "validity" in text[0]


class FailingKeys:
    """The real key manager whose signatures fail as if the token were pulled."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def sign_digest(self, *args: Any) -> bytes:
        raise HsmUnavailable("token removed")


def test_hsm_failure_is_system_failure(services: Services, files: Files) -> None:
    authority = TimeStampAuthority(
        services.store,
        FailingKeys(services.keys),
        policy_oid=ETSI_BTSP_POLICY,
    )
    response = authority.respond(files.query("-sha256", "-cert"))
    fail, text = _rejected(response)
    assert fail == {"system_failure"}
    assert text == ["HSM: token removed"]
    assert OPENSSL_FAILURE_TEXT["system_failure"] in files.reply_text(response)
    with pytest.raises(TimestampRefused) as refused:
        authority.stamp(hashlib.sha256(DATA).digest())
    assert refused.value.fail_info == "system_failure"


def test_database_failure_is_system_failure(
    authority: TimeStampAuthority, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: Any, **kwargs: Any) -> None:
        raise OperationalError("INSERT", {}, Exception("disk I/O error"))

    monkeypatch.setattr(tsa_module.status, "record_tsa_serial", broken)
    fail, text = _rejected(authority.respond(_asn1_query()))
    assert fail == {"system_failure"} and text == ["Internal error."]  # no SQL leaks out


def test_no_tsa_certificate_is_system_failure(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    def none(*args: Any, **kwargs: Any) -> status.Credential:
        raise status.NotFound("no valid TSA certificate; run `kakuin init`")

    monkeypatch.setattr(tsa_module.status, "tsa_credential", none)
    authority = TimeStampAuthority(services.store, services.keys, policy_oid=ETSI_BTSP_POLICY)
    fail, text = _rejected(authority.respond(_asn1_query()))
    assert fail == {"system_failure"} and text == ["no valid TSA certificate"]


def test_credential_is_cached_and_refreshed(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    lookups: list[int] = []
    real = status.tsa_credential

    def counting(*args: Any, **kwargs: Any) -> status.Credential:
        lookups.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(tsa_module.status, "tsa_credential", counting)
    cached = TimeStampAuthority(services.store, services.keys, policy_oid=ETSI_BTSP_POLICY)
    for _ in range(5):
        _tst_info(cached.respond(_asn1_query()))
    assert len(lookups) == 1
    cached.reload()
    _tst_info(cached.respond(_asn1_query()))
    assert len(lookups) == 2

    always = TimeStampAuthority(
        services.store, services.keys, policy_oid=ETSI_BTSP_POLICY, refresh=timedelta(0)
    )
    for _ in range(3):
        _tst_info(always.respond(_asn1_query()))
    assert len(lookups) == 5


def test_audit_tokens(services: Services) -> None:
    authority = TimeStampAuthority(
        services.store, services.keys, policy_oid=ETSI_BTSP_POLICY, audit_tokens=True
    )
    query = _asn1_query(
        message_imprint={
            "hash_algorithm": {"algorithm": "sha512"},
            "hashed_message": hashlib.sha512(DATA).digest(),
        }
    )
    serial = _tst_info(authority.respond(query, requester="school-42"))["serial_number"].native
    with services.store.session() as s:
        entry = s.scalars(
            select(AuditEntry).where(
                AuditEntry.action == "tsa.timestamp", AuditEntry.object_id == format(serial, "x")
            )
        ).one()
        assert entry.actor == "school-42"
        assert entry.digest == hashlib.sha512(DATA).hexdigest()


# -- clock checks -----------------------------------------------------------------------------


def _reader(state: int, flags: int, maxerror_us: int) -> Callable[[], tuple[int, int, int]]:
    return lambda: (state, flags, maxerror_us)


def test_kernel_clock_check() -> None:
    budget = timedelta(milliseconds=500)
    assert kernel_clock_check(budget, read=_reader(0, 0x2001, 120_000))() is True
    assert "not synchronised" in str(kernel_clock_check(budget, read=_reader(5, 0x41, 0))())
    assert "not synchronised" in str(kernel_clock_check(budget, read=_reader(0, 0x40, 0))())
    too_wide = kernel_clock_check(budget, read=_reader(0, 0, 16_000_000))()
    assert isinstance(too_wide, str) and "16000 ms" in too_wide

    def unreadable() -> tuple[int, int, int]:
        raise OSError("adjtimex(2) is Linux-only")

    assert "cannot read" in str(kernel_clock_check(budget, read=unreadable)())
    # The real kernel answers (synchronised or not, depending on the machine).
    state, _flags, maxerror = read_kernel_clock()
    assert 0 <= state <= 5 and maxerror >= 0
    assert kernel_clock_check()() is True or isinstance(kernel_clock_check()(), str)


# -- in-process callers and pyHanko ---------------------------------------------------------


def _validation_context(home: Path) -> ValidationContext:
    pki = home / "pki"
    root = asn1_x509.Certificate.load((pki / "kakuin-root-ca.crt").read_bytes())
    crls = [
        asn1_crl.CertificateList.load((pki / name).read_bytes())
        for name in ("kakuin-root-ca.crl", "kakuin-issuing-ca.crl")
    ]
    return ValidationContext(
        trust_roots=[root], crls=crls, allow_fetching=False, revocation_mode="hard-fail"
    )


def _pyhanko_status(token: cms.ContentInfo, data: bytes, home: Path) -> TimestampSignatureStatus:
    kwargs = asyncio.run(
        validate_tst_signed_data(
            token["content"], _validation_context(home), lambda alg: hashlib.new(alg, data).digest()
        )
    )
    return TimestampSignatureStatus(**kwargs)


def test_local_timestamper_passes_pyhanko_validation(
    authority: TimeStampAuthority, files: Files, home: Path
) -> None:
    stamper = LocalTimeStamper(authority)
    token = asyncio.run(stamper.async_timestamp(hashlib.sha384(DATA).digest(), "sha384"))
    result = _pyhanko_status(token, DATA, home)
    assert result.intact and result.valid and result.trusted, result.summary()

    response = tsp.TimeStampResp({"status": {"status": "granted"}, "time_stamp_token": token})
    assert "Verification: OK" in files.verify(response.dump(), "-data", files.data)
    assert not _pyhanko_status(token, DATA + b"!", home).intact


def test_local_timestamper_reports_refusal(services: Services) -> None:
    authority = TimeStampAuthority(
        services.store,
        services.keys,
        policy_oid=ETSI_BTSP_POLICY,
        clock_check=lambda: "clock stepped",
    )
    with pytest.raises(TimestampRequestError, match="clock stepped"):
        asyncio.run(LocalTimeStamper(authority).async_timestamp(b"\x00" * 32, "sha256"))


def test_timestamp_token_for_jades(authority: TimeStampAuthority, home: Path) -> None:
    signature_value = b"MEUCIQDx-signature-value-as-in-a-JWS"
    for hash_alg in ("sha256", "sha512"):
        token = timestamp_token(authority, signature_value, hash_alg=hash_alg)
        info = token["content"]["encap_content_info"]["content"].parsed
        assert info["message_imprint"]["hash_algorithm"]["algorithm"].native == hash_alg
        assert (
            info["message_imprint"]["hashed_message"].native
            == hashlib.new(hash_alg, signature_value).digest()
        )
        assert token["content"]["certificates"]  # a JAdES verifier finds the TSA certificate
        assert _pyhanko_status(token, signature_value, home).trusted
    digest = hashlib.sha256(signature_value).digest()
    prehashed = timestamp_token(authority, digest, prehashed=True)
    assert (
        prehashed["content"]["encap_content_info"]["content"]
        .parsed["message_imprint"]["hashed_message"]
        .native
        == digest
    )

    with pytest.raises(TimestampRefused) as refused:
        timestamp_token(authority, signature_value, hash_alg="sha1")
    assert refused.value.fail_info == "bad_alg" and refused.value.status == 400
    with pytest.raises(TimestampRefused) as refused:
        timestamp_token(authority, b"short", prehashed=True)
    assert refused.value.fail_info == "bad_data_format"


@pytest.fixture
def tsa_server(services: Services) -> Iterator[tuple[str, dict[str, Any]]]:
    """A bare WSGI endpoint around ``respond`` (the Flask route lives in signing/api.py)."""
    state: dict[str, Any] = {
        "authority": TimeStampAuthority(services.store, services.keys, policy_oid=ETSI_BTSP_POLICY)
    }

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        out = state["authority"].respond(body, requester=environ.get("REMOTE_ADDR"))
        start_response(
            "200 OK", [("Content-Type", REPLY_CONTENT_TYPE), ("Content-Length", str(len(out)))]
        )
        return [out]

    server = make_server("127.0.0.1", 0, app)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/tsa", state
    server.shutdown()


def test_external_timestamper(
    tsa_server: tuple[str, dict[str, Any]], services: Services, home: Path
) -> None:
    url, state = tsa_server
    # Outbound requests refuse loopback unless the settings allow it ([fetch] allow_networks).
    with pytest.raises(Unavailable, match="loopback, private or link-local"):
        asyncio.run(external_timestamper(url, timeout=10).async_timestamp(
            hashlib.sha256(DATA).digest(), "sha256"))
    loopback = outbound.FetchPolicy(allow_networks=outbound.parse_networks("127.0.0.0/8"))
    stamper = external_timestamper(url, timeout=10, policy=loopback)
    token = asyncio.run(stamper.async_timestamp(hashlib.sha256(DATA).digest(), "sha256"))
    assert _pyhanko_status(token, DATA, home).trusted

    # A rejection from the remote TSA surfaces as pyHanko's error with the TSA's reason
    # (stock HTTPTimeStamper fails on asn1crypto's mandatory timeStampToken instead).
    state["authority"] = TimeStampAuthority(
        services.store,
        services.keys,
        policy_oid=ETSI_BTSP_POLICY,
        clock_check=lambda: "leap smear in progress",
    )
    with pytest.raises(TimestampRequestError, match="leap smear in progress"):
        asyncio.run(stamper.async_timestamp(hashlib.sha256(DATA).digest(), "sha256"))
