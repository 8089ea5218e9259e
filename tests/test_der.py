"""hsm/der.py byte for byte against asn1crypto, and the structures built from it.

The primitives are compared with asn1crypto encoding the same native values; the OCSP
response, CRL and timestamp token that kakuin builds by hand are re-encoded by asn1crypto
(every constructed value dumped anew from its children) and must come out identical, so
lengths, tags and SET OF order are DER.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest
from asn1crypto import core, tsp
from asn1crypto import crl as asn1_crl
from asn1crypto import ocsp as asn1_ocsp
from asn1crypto import x509 as asn1_x509
from cryptography import x509

from ca import crl, ocsp
from hsm import der
from signing.tsa import ETSI_BTSP_POLICY, TimeStampAuthority

RNG = random.Random(12)  # fixed: a failure reproduces


def test_integers() -> None:
    values = [0, 1, -1, 127, 128, 255, 256, -128, -129, 2**159 - 1, -(2**200)]
    values += [RNG.randrange(-(2**170), 2**170) for _ in range(300)]
    for v in values:
        assert der.integer(v) == core.Integer(v).dump(), v


@pytest.mark.parametrize("size", [0, 1, 127, 128, 255, 256, 65535, 65536, 70000])
def test_lengths(size: int) -> None:
    value = bytes(RNG.getrandbits(8) for _ in range(size))
    assert der.octets(value) == core.OctetString(value).dump()
    assert der.tlv(0x30, value) == core.Sequence(contents=value).dump()


@pytest.mark.parametrize("dotted", ["2.5.29.24", "1.3.6.1.5.5.7.48.1.2", "0.4.0.1862.1.6.2",
                                    "1.2.840.113549.1.9.16.2.47", "2.999.16384", "1.2.4294967296"])
def test_oids(dotted: str) -> None:
    assert der.oid(dotted) == core.ObjectIdentifier(dotted).dump()


def test_oid_refuses_what_is_not_one() -> None:
    for bad in ("1", "3.1", "1.40"):
        with pytest.raises(ValueError):
            der.oid(bad)


def test_times() -> None:
    base = datetime(2026, 11, 30, 9, 5, 7, tzinfo=UTC)
    for at in (base, base.replace(year=1950), base.replace(year=2049, month=12, day=31),
               base.replace(year=2050), base.replace(year=9999)):
        assert der.generalized_time(at) == core.GeneralizedTime(at).dump()
        want = (asn1_x509.Time(name="utc_time", value=at) if at.year < 2050
                else asn1_x509.Time(name="general_time", value=at))
        assert der.x509_time(at) == want.dump()
    for micro in (1, 10, 500000, 123456, 999999):
        at = base.replace(microsecond=micro)
        assert der.generalized_time(at, fraction=True) == core.GeneralizedTime(at).dump()
        assert der.generalized_time(at) == der.generalized_time(base)
    with pytest.raises(ValueError):
        der.generalized_time(datetime(2026, 1, 1))  # naive
    with pytest.raises(ValueError):
        der.x509_time(base.replace(year=1949))


def _redone(value: core.Asn1Value) -> bytes:
    return bytes(value.dump(force=True))


def test_ocsp_response_is_der(services, settings) -> None:  # type: ignore[no-untyped-def]
    responder = ocsp.Responder.load(services.store, services.keys, settings.ca.issuing_name)
    now = datetime.now(UTC).replace(microsecond=0)
    for status, reason in (("issued", None), ("revoked", "keyCompromise"), ("hold", None),
                           ("revoked", None)):
        state = ocsp._state(status, reason, now, now - timedelta(days=1), now)
        singles = [responder._single(responder._cert_id(h, 2**150 + 3), state, now, now)
                   for h in responder.presigned_hashes]
        response = responder._signed(singles, now)
        assert _redone(asn1_ocsp.OCSPResponse.load(response)) == response
        basic = asn1_ocsp.OCSPResponse.load(response)["response_bytes"]["response"].parsed
        assert _redone(basic) == basic.dump()


def test_crl_entries_are_der() -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    reasons = [None, x509.ReasonFlags.unspecified, *crl._REASON_EXT]
    entries = [
        crl.Revoked(RNG.getrandbits(159) or 1, now - timedelta(days=RNG.randrange(20000)),
                    reason, now - timedelta(days=2) if i % 2 else None)
        for i, reason in enumerate(reasons * 3)
    ]
    encoded = der.seq(*map(crl._entry, entries))
    parsed = asn1_crl.RevokedCertificates.load(encoded)
    assert _redone(parsed) == encoded
    assert [e["user_certificate"].native for e in parsed] == [e.serial for e in entries]


def test_timestamp_token_is_der(services) -> None:  # type: ignore[no-untyped-def]
    authority = TimeStampAuthority(services.store, services.keys, policy_oid=ETSI_BTSP_POLICY)
    for nonce, cert_req in ((None, False), (2**62 + 5, True)):
        query = tsp.TimeStampReq({
            "version": 1,
            "message_imprint": {"hash_algorithm": {"algorithm": "sha256"},
                                "hashed_message": bytes(32)},
            "nonce": nonce, "cert_req": cert_req,
        }).dump()
        response = authority.respond(query)
        parsed = tsp.TimeStampResp.load(response)
        assert parsed["status"]["status"].native == "granted"
        assert _redone(parsed) == response
        tst = parsed["time_stamp_token"]["content"]["encap_content_info"]["content"].parsed
        assert _redone(tst) == tst.dump()


def test_stored_ocsp_response_checked_whole(services, settings) -> None:  # type: ignore[no-untyped-def]
    """A stored response is served only if it is, whole, what would be signed now."""
    from sqlalchemy import select

    from ca.models import Certificate

    responder = ocsp.Responder.load(services.store, services.keys, settings.ca.issuing_name)
    with services.store.session() as s:
        serial = s.scalars(select(Certificate.serial).where(
            Certificate.kind == "ocsp", Certificate.issuer_name == settings.ca.issuing_name
        )).first()
    assert serial is not None
    responder.resign(serial)
    row = responder._lookup(settings.ca.issuing_name, serial, "sha256")
    assert row is not None and row.der is not None
    state = ocsp._state(*row[:5])
    assert responder._asserts(row.der, serial, "sha256", state, row)
    assert not responder._asserts(row.der, serial, "sha1", state, row)  # the CertID, too
    when = row.updated_at or datetime.now(UTC)
    for other in (ocsp._state("revoked", "keyCompromise", when, None, when),
                  ocsp._state("revoked", "keyCompromise", when, when - timedelta(days=1), when),
                  ocsp._state(None, None, None, None, None)):
        assert not responder._asserts(row.der, serial, "sha256", other, row)
    later = row._replace(produced_at=row.produced_at + timedelta(seconds=1))
    assert not responder._asserts(row.der, serial, "sha256", state, later)  # the row's times
    other_serial = format(int(serial, 16) + 1, "x")
    assert not responder._asserts(row.der, other_serial, "sha256", state, row)
    assert not responder._asserts(ocsp.TRY_LATER.der, serial, "sha256", state, row)
