"""PAdES sealing: a school's hosted e-seal (made through the API) seals a 指導要録 at B-B, B-T,
B-LT and B-LTA; pyHanko's validator checks every result, poppler shows the stamp.

Timestamps come from kakuin's own TSA in-process (``signing.tsa.LocalTimeStamper``) and
revocation data from ``ca.status``: the certificates name http://127.0.0.1:8080 (the default
base URL) for OCSP and CRLs, which nothing serves in tests, and nothing is fetched.
"""

from __future__ import annotations

import asyncio
import io
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from asn1crypto import x509 as asn1_x509
from pyhanko.pdf_utils import generic
from pyhanko.pdf_utils.incremental_writer import IncrementalPdfFileWriter
from pyhanko.pdf_utils.reader import PdfFileReader
from pyhanko.sign import validation as pv
from pyhanko.sign.ades.report import AdESPassed
from pyhanko.sign.diff_analysis import ModificationLevel
from pyhanko.sign.validation.ades import ades_lta_validation, simulate_future_ades_lta_validation
from pyhanko.sign.validation.policy_decl import (
    CertificateFetchingRule,
    PdfSignatureValidationSpec,
    RevinfoOnlineFetchingRule,
    RevocationInfoGatheringSpec,
    SignatureValidationSpec,
)
from pyhanko.sign.validation.status import SignatureCoverageLevel
from pyhanko_certvalidator import ValidationContext
from pyhanko_certvalidator.context import CertValidationPolicySpec
from pyhanko_certvalidator.policy_decl import REQUIRE_REVINFO, CertRevTrustPolicy
from pyhanko_certvalidator.registry import SimpleTrustManager

from ca import crl, status
from ca.status import Credential
from hsm.api import KeyManager
from signing.errors import BadDocument, SigningError, TooLarge, Unavailable
from signing.pdf import (
    SealOptions,
    ValidationMaterial,
    needs_renewal,
    renew_lta,
    seal_pdf,
    validation_material,
)
from signing.tsa import ETSI_BTSP_POLICY, LocalTimeStamper, TimeStampAuthority
from tests.cafixtures import Env, _call
from tests.fixtures_pdf import encrypted_pdf, guidance_record, minimal_pdf

VERIFY_URL = "http://127.0.0.1:8080/verify"


@dataclass
class Kit:
    env: Env
    credential: Credential
    keys: KeyManager
    timestamper: LocalTimeStamper
    material: ValidationMaterial

    def seal(self, pdf: bytes, **options: object) -> bytes:
        opts = SealOptions(verify_url=VERIFY_URL, **options)  # type: ignore[arg-type]
        return seal_pdf(
            pdf,
            self.credential,
            self.keys,
            timestamper=self.timestamper,
            validation=self.material,
            options=opts,
        ).pdf


@pytest.fixture(scope="module")
def kit(env: Env, services, settings) -> Iterator[Kit]:
    code, req = _call(env.url, "POST", "/api/v1/seal-requests", env.school,
                      {"key": {"hosted": True, "algorithm": "ECDSA-P256"}})
    assert code == 201, req
    code, req = _call(env.url, "POST", f"/api/v1/seal-requests/{req['id']}/approve",
                      env.officer_a)
    assert code == 200, req
    authorities = crl.load_authorities(env.store, services.keys, root_name=settings.ca.root_name,
                                       issuing_name=settings.ca.issuing_name)
    crl.publish_due(env.store, authorities=authorities)
    credential = status.seal_credential(env.store, env.school_id)
    authority = TimeStampAuthority(env.store, services.keys, policy_oid=ETSI_BTSP_POLICY)
    material = validation_material(env.store, services.keys, credential,
                                   crl_issuers=[settings.ca.root_name])
    yield Kit(env, credential, services.keys, LocalTimeStamper(authority), material)


def _root(kit: Kit) -> asn1_x509.Certificate:
    return asn1_x509.Certificate.load(kit.credential.chain[-1])


def _reader(pdf: bytes) -> PdfFileReader:
    return PdfFileReader(io.BytesIO(pdf))


def _status(kit: Kit, pdf: bytes, index: int = -1) -> pv.PdfSignatureStatus:
    sig = _reader(pdf).embedded_regular_signatures[index]
    context = kit.material.context()
    return pv.validate_pdf_signature(sig, context, context)


def _lta_spec(kit: Kit) -> PdfSignatureValidationSpec:
    """Trust only our root, require revocation data for every certificate, fetch nothing:
    whatever the validator needs must be in the PDF."""
    return PdfSignatureValidationSpec(
        SignatureValidationSpec(
            cert_validation_policy=CertValidationPolicySpec(
                trust_manager=SimpleTrustManager.build(trust_roots=[_root(kit)]),
                revinfo_policy=CertRevTrustPolicy(REQUIRE_REVINFO),
            ),
            revinfo_gathering_policy=RevocationInfoGatheringSpec(
                online_fetching_rule=RevinfoOnlineFetchingRule.LOCAL_ONLY,
                certificate_fetching_rule=CertificateFetchingRule.NEVER_FETCH,
            ),
        )
    )


@pytest.mark.parametrize("level", ["B-B", "B-T"])
def test_seal_b_b_and_b_t(kit: Kit, level: str) -> None:
    sealed = kit.seal(guidance_record(), level=level)
    st = _status(kit, sealed)
    assert st.intact and st.valid and st.trusted, st.pretty_print_details()
    assert st.coverage == SignatureCoverageLevel.ENTIRE_FILE
    assert st.modification_level == ModificationLevel.NONE
    tst = st.timestamp_validity
    assert (tst is not None) == (level == "B-T")
    if tst is not None:
        assert tst.intact and tst.valid and tst.trusted



def _token_times(reader: PdfFileReader) -> list[datetime]:
    """genTime of every timestamp token in the PDF (document and signature timestamps)."""
    tokens = [ts.signed_data for ts in reader.embedded_timestamp_signatures]
    for sig in reader.embedded_regular_signatures:
        for attr in sig.signer_info["unsigned_attrs"]:
            if attr["type"].native == "signature_time_stamp_token":
                tokens += [v["content"] for v in attr["values"]]
    return [t["encap_content_info"]["content"].parsed["gen_time"].native for t in tokens]


def _lta_validate(kit: Kit, seal: pv.EmbeddedPdfSignature) -> Any:
    """ETSI EN 319 102-1 LTA validation, once the clock has passed every token: kakuin's TSA
    rounds genTime to the nearest second, so a token can lie up to half a second ahead, and
    pyHanko's time slide (real clock) finds no proof of existence in a token from the future.
    """
    ahead = (max(_token_times(seal.reader)) - datetime.now(UTC)).total_seconds()
    if ahead > -0.05:
        time.sleep(min(ahead + 0.05, 1.0))
    return asyncio.run(ades_lta_validation(seal, _lta_spec(kit)))


def _dss_context(kit: Kit, reader: PdfFileReader) -> ValidationContext:
    """Only our root and what the PDF's DSS holds; revocation data required, never fetched."""
    dss = pv.DocumentSecurityStore.read_dss(reader)
    return dss.as_validation_context(
        {"trust_roots": [_root(kit)], "revocation_mode": "require", "allow_fetching": False}
    )


@pytest.mark.parametrize("level", ["B-LT", "B-LTA"])
def test_seal_long_term(kit: Kit, level: str) -> None:
    sealed = kit.seal(guidance_record(), level=level)
    reader = _reader(sealed)
    seal = reader.embedded_regular_signatures[0]
    dss = pv.DocumentSecurityStore.read_dss(reader)
    assert len(dss.ocsps) >= 2 and len(dss.crls) >= 2  # seal + TSA OCSP; issuing + root CRLs
    context = _dss_context(kit, reader)
    st = pv.validate_pdf_signature(seal, context, context)
    assert st.intact and st.valid and st.trusted, st.pretty_print_details()
    assert st.coverage == SignatureCoverageLevel.ENTIRE_REVISION
    assert st.modification_level == ModificationLevel.LTA_UPDATES
    assert st.timestamp_validity is not None and st.timestamp_validity.trusted
    stamps = reader.embedded_timestamp_signatures
    assert len(stamps) == (1 if level == "B-LTA" else 0)
    if level == "B-LTA":
        ts = pv.validate_pdf_timestamp(stamps[0], _dss_context(kit, reader))
        assert ts.intact and ts.valid and ts.trusted, ts
        assert ts.coverage == SignatureCoverageLevel.ENTIRE_REVISION
        # ETSI EN 319 102-1 LTA validation with nothing but our root and the PDF ...
        result = _lta_validate(kit, seal)
        assert result.ades_subindic == AdESPassed.OK, result.failure_msg
        # ... and as it would go in five years, after the seal certificate expired
        future = datetime.now(UTC) + timedelta(days=5 * 365)
        result = asyncio.run(simulate_future_ades_lta_validation(seal, _lta_spec(kit), future))
        assert result.ades_subindic == AdESPassed.OK, result.failure_msg


def test_cached_cms_parts_give_pyhankos_cms(kit: Kit) -> None:
    """HsmSigner builds the CMS from cached DER; pyHanko's own path gives the same bytes
    (certificate order aside: pyHanko collects them in a set)."""
    from pyhanko.sign.signers import Signer

    from signing.keys import signer_for

    signer = signer_for(kit.keys, kit.credential)
    digest = bytes(range(32))

    async def build() -> tuple[object, ...]:
        fast_attrs = await signer.signed_attrs(digest, "sha256", use_pades=True)
        slow_attrs = await Signer.signed_attrs(signer, digest, "sha256", use_pades=True)
        # dry runs: the dummy signature and pyHanko's cached dummy token are deterministic
        fast = await signer.async_sign_prescribed_attributes(
            "sha256", fast_attrs, dry_run=True, timestamper=kit.timestamper)
        slow = await Signer.async_sign_prescribed_attributes(
            signer, "sha256", slow_attrs, dry_run=True, timestamper=kit.timestamper)
        return fast_attrs, slow_attrs, fast, slow

    fast_attrs, slow_attrs, fast, slow = asyncio.run(build())
    assert fast_attrs.dump() == slow_attrs.dump()  # type: ignore[attr-defined]
    f, s = fast["content"], slow["content"]  # type: ignore[index]
    for part in ("version", "digest_algorithms", "encap_content_info", "signer_infos"):
        assert f[part].dump() == s[part].dump(), part
    assert sorted(c.dump() for c in f["certificates"]) == sorted(
        c.dump() for c in s["certificates"])
    assert len(f["signer_infos"][0]["unsigned_attrs"]) == 1  # the signature timestamp


# --- the visible seal ------------------------------------------------------------------------


def _render(pdf: bytes, page: int, tmp_path: Path) -> tuple[int, int, bytes]:
    """Page ``page`` (1-based) at 72 dpi, so one pixel is one point: (width, height, RGB)."""
    src = tmp_path / "render.pdf"
    src.write_bytes(pdf)
    ppm = subprocess.run(
        ["pdftoppm", "-r", "72", "-f", str(page), "-l", str(page), str(src)],
        check=True, capture_output=True,
    ).stdout
    magic, width, height, maxval, pixels = ppm.split(maxsplit=4)
    assert magic == b"P6" and maxval == b"255"
    return int(width), int(height), pixels


def _red_fraction(image: tuple[int, int, bytes], box: tuple[float, float, float, float]) -> float:
    """Share of seal-red pixels in ``box`` (PDF points, origin bottom left)."""
    width, height, pixels = image
    x1, y1, x2, y2 = (round(v) for v in box)
    red = total = 0
    for row in range(height - y2, height - y1):
        for col in range(x1, x2):
            r, g, b = pixels[3 * (row * width + col) : 3 * (row * width + col) + 3]
            total += 1
            red += r > 150 and g < 120 and b < 130 and r - g > 80
    return red / total


def test_visible_seal_is_drawn(kit: Kit, tmp_path: Path) -> None:
    box = (400.0, 640.0, 520.0, 760.0)
    sealed = kit.seal(guidance_record(), level="B-B", page=1, box=box)
    image = _render(sealed, 1, tmp_path)
    assert _red_fraction(image, box) > 0.10  # frame, name and QR code in seal red
    assert _red_fraction(image, (60.0, 400.0, 180.0, 520.0)) == 0  # the record's own text
    assert _red_fraction(_render(sealed, 2, tmp_path), box) == 0  # other pages untouched
    widget = _reader(sealed).embedded_regular_signatures[0].sig_field
    assert "/AP" in widget and [float(v) for v in widget["/Rect"]] == list(box)
    fonts = subprocess.run(["pdffonts", "-f", "1", "-l", "1", str(tmp_path / "render.pdf")],
                           check=True, capture_output=True, text=True).stdout
    # the stamp's font is an embedded subset (ABCDEF+IPAexGothic, emb yes, sub yes)
    assert any("+IPAexGothic" in line and " yes yes " in line for line in fonts.splitlines()[2:])


def test_qr_code_carries_the_verify_url(kit: Kit, tmp_path: Path) -> None:
    """Every module of the printed QR code matches the code of VERIFY_URL (no decoder on
    this machine, so compare with the matrix the qrcode package made for the URL)."""
    from signing.stamp import BAND, PAD, _qr_modules

    x0, y0, side = 100.0, 300.0, 120.0
    sealed = kit.seal(minimal_pdf(), level="B-B", box=(x0, y0, x0 + side, y0 + side))
    count, runs = _qr_modules(VERIFY_URL)
    dark = {(r, c + i) for r, c, n in runs for i in range(n)}
    dpi = 600
    scale = dpi / 72
    left, top = int(x0 * scale), int((842 - y0 - side) * scale)
    (tmp_path / "qr.pdf").write_bytes(sealed)
    ppm = subprocess.run(
        ["pdftoppm", "-r", str(dpi), "-x", str(left), "-y", str(top), "-W", str(int(side * scale)),
         "-H", str(int(side * scale)), str(tmp_path / "qr.pdf")],
        check=True, capture_output=True,
    ).stdout
    _, width, _, _, pixels = ppm.split(maxsplit=4)
    unit = side * BAND / (count + 2)
    qx, qtop = x0 + side * PAD, y0 + side * PAD + side * BAND  # QR area, one module of margin
    wrong = 0
    for r in range(count):
        for c in range(count):
            x, y = qx + unit * (1.5 + c), qtop - unit * (1.5 + r)
            col, row = int(x * scale) - left, int((842 - y) * scale) - top
            offset = 3 * (row * int(width) + col)
            wrong += (sum(pixels[offset : offset + 3]) < 3 * 128) != ((r, c) in dark)
    assert wrong == 0


def test_default_position_is_top_right(kit: Kit, tmp_path: Path) -> None:
    sealed = kit.seal(minimal_pdf(), level="B-B")
    rect = [float(v) for v in _reader(sealed).embedded_regular_signatures[0].sig_field["/Rect"]]
    assert rect == [595 - 36 - 120, 842 - 36 - 120, 595 - 36, 842 - 36]
    assert _red_fraction(_render(sealed, 1, tmp_path), tuple(rect)) > 0.10  # type: ignore[arg-type]


def test_invisible_seal_has_no_appearance(kit: Kit, tmp_path: Path) -> None:
    sealed = kit.seal(guidance_record(), level="B-T", visible=False)
    widget = _reader(sealed).embedded_regular_signatures[0].sig_field
    assert "/AP" not in widget and [float(v) for v in widget["/Rect"]] == [0, 0, 0, 0]
    assert _status(kit, sealed).bottom_line
    assert _red_fraction(_render(sealed, 1, tmp_path), (0, 0, 595, 842)) == 0


def test_seal_into_an_existing_field(kit: Kit, tmp_path: Path) -> None:
    from pyhanko.sign import fields

    writer = IncrementalPdfFileWriter(io.BytesIO(guidance_record()))
    box = (380, 600, 500, 720)
    fields.append_signature_field(
        writer, fields.SigFieldSpec("principal-seal", on_page=2, box=box)
    )
    out = io.BytesIO()
    writer.write(out)
    sealed = kit.seal(out.getvalue(), level="B-T", field="principal-seal")
    sig = _reader(sealed).embedded_regular_signatures[0]
    assert sig.field_name == "principal-seal"
    assert _status(kit, sealed).bottom_line
    assert _red_fraction(_render(sealed, 3, tmp_path), box) > 0.10
    with pytest.raises(BadDocument, match="already signed"):
        kit.seal(sealed, level="B-B", field="principal-seal")


# --- more than one seal ----------------------------------------------------------------------


def test_sealing_twice_keeps_the_first_valid(kit: Kit, tmp_path: Path) -> None:
    once = kit.seal(guidance_record(), level="B-T")
    twice = kit.seal(once, level="B-T", page=2)
    reader = _reader(twice)
    names = [s.field_name for s in reader.embedded_regular_signatures]
    assert names == ["kakuin-seal-1", "kakuin-seal-2"]
    first, second = _status(kit, twice, 0), _status(kit, twice, 1)
    assert first.bottom_line and second.bottom_line
    assert first.coverage == SignatureCoverageLevel.ENTIRE_REVISION
    assert first.modification_level == ModificationLevel.FORM_FILLING  # a new signature field
    assert second.coverage == SignatureCoverageLevel.ENTIRE_FILE
    listing = _pdfsig(twice, tmp_path)
    assert listing.count("Signature Validation: Signature is Valid.") == 2


def test_sealing_a_b_lta_document_keeps_its_timestamps_valid(kit: Kit) -> None:
    first = kit.seal(guidance_record(), level="B-LTA")
    both = kit.seal(first, level="B-LTA", page=3)
    reader = _reader(both)
    seals = reader.embedded_regular_signatures
    stamps = reader.embedded_timestamp_signatures
    assert len(seals) == 2 and len(stamps) == 2
    context = _dss_context(kit, reader)
    for stamp in stamps:
        ts = pv.validate_pdf_timestamp(stamp, context)
        assert ts.intact and ts.valid and ts.trusted, ts
    for seal in seals:
        st = pv.validate_pdf_signature(seal, context, context)
        assert st.bottom_line, st.pretty_print_details()
        result = _lta_validate(kit, seal)
        assert result.ades_subindic == AdESPassed.OK, result.failure_msg


def _pdfsig(pdf: bytes, tmp_path: Path) -> str:
    path = tmp_path / "pdfsig.pdf"
    path.write_bytes(pdf)
    return subprocess.run(["pdfsig", str(path)], capture_output=True, text=True).stdout


def test_content_changed_after_sealing_is_caught(kit: Kit, tmp_path: Path) -> None:
    sealed = kit.seal(guidance_record(), level="B-T")
    # white out a grade on page 2 in an incremental update: the signed bytes stay intact
    writer = IncrementalPdfFileWriter(io.BytesIO(sealed))
    cover = generic.StreamObject(stream_data=b"q 1 1 1 rg 55 625 490 22 re f Q")
    writer.add_stream_to_page(1, writer.add_object(cover))
    out = io.BytesIO()
    writer.write(out)
    forged = out.getvalue()
    st = _status(kit, forged)
    assert st.intact and st.valid and st.trusted  # the signature itself still verifies ...
    assert st.modification_level == ModificationLevel.OTHER  # ... but the diff analysis
    assert not st.docmdp_ok and not st.bottom_line  # catches the change
    # poppler's pdfsig does not: it still calls the signature valid (design.md pitfall)
    assert "Signature Validation: Signature is Valid." in _pdfsig(forged, tmp_path)


# --- refusals --------------------------------------------------------------------------------


def _seal(kit: Kit, pdf: bytes, **kwargs: object) -> None:
    seal_pdf(pdf, kit.credential, kit.keys, timestamper=kit.timestamper,
             validation=kit.material, **kwargs)  # type: ignore[arg-type]


def test_refusals(kit: Kit) -> None:
    with pytest.raises(BadDocument, match="encrypted") as exc:
        _seal(kit, encrypted_pdf(guidance_record()))
    assert exc.value.status == 422
    with pytest.raises(BadDocument, match="not a PDF"):
        _seal(kit, b"PK\x03\x04 a zip file, not a PDF")
    with pytest.raises(BadDocument, match="corrupt"):
        _seal(kit, guidance_record()[:5000])
    with pytest.raises(BadDocument, match="corrupt"):
        _seal(kit, b"%PDF-1.7\n" + bytes(range(256)) * 20)
    with pytest.raises(TooLarge) as too_large:
        _seal(kit, guidance_record(), max_bytes=1000)
    assert too_large.value.status == 413
    with pytest.raises(BadDocument, match="page 9 does not exist"):
        _seal(kit, guidance_record(), options=SealOptions(level="B-B", page=9))
    with pytest.raises(SigningError, match="level must be one of"):
        SealOptions(level="B-LTV")
    with pytest.raises(SigningError, match="needs a timestamper"):
        seal_pdf(guidance_record(), kit.credential, kit.keys, options=SealOptions(level="B-T"))


def test_tsa_refusal_is_unavailable(kit: Kit) -> None:
    refusing = LocalTimeStamper(TimeStampAuthority(
        kit.env.store, kit.keys, policy_oid=ETSI_BTSP_POLICY,
        clock_check=lambda: "clock not synchronised"))
    with pytest.raises(Unavailable) as exc:
        seal_pdf(guidance_record(), kit.credential, kit.keys, timestamper=refusing,
                 options=SealOptions(level="B-T"))
    assert exc.value.status == 503 and "clock not synchronised" in exc.value.detail


def test_result_digests_and_last_page(kit: Kit) -> None:
    import hashlib

    doc = guidance_record()
    result = seal_pdf(doc, kit.credential, kit.keys, options=SealOptions(level="B-B", page=-1))
    assert result.input_sha256 == hashlib.sha256(doc).hexdigest()
    assert result.output_sha256 == hashlib.sha256(result.pdf).hexdigest()
    assert result.pdf.startswith(doc)  # an incremental update: the original bytes untouched
    assert result.level == "B-B" and result.field_name == "kakuin-seal-1"
    sig = _reader(result.pdf).embedded_regular_signatures[0]
    assert sig.self_reported_timestamp == result.signing_time.replace(microsecond=0)
    page_ref = sig.sig_field["/P"]
    assert page_ref == _reader(result.pdf).root["/Pages"]["/Kids"][2]


# --- B-LTA upkeep ----------------------------------------------------------------------------


def test_renew_lta(kit: Kit) -> None:
    sealed = kit.seal(guidance_record(), level="B-LTA")
    assert not needs_renewal(sealed, timedelta(days=30))
    assert needs_renewal(sealed, timedelta(days=20 * 365))  # the TSA certificate expires
    renewed = renew_lta(sealed, timestamper=kit.timestamper, validation=kit.material)
    reader = _reader(renewed)
    assert len(reader.embedded_timestamp_signatures) == 2
    context = _dss_context(kit, reader)
    for stamp in reader.embedded_timestamp_signatures:
        ts = pv.validate_pdf_timestamp(stamp, context)
        assert ts.intact and ts.valid and ts.trusted
    seal = reader.embedded_regular_signatures[0]
    assert pv.validate_pdf_signature(seal, context, context).bottom_line
    result = _lta_validate(kit, seal)
    assert result.ades_subindic == AdESPassed.OK, result.failure_msg
    with pytest.raises(BadDocument, match="not B-LTA"):
        renew_lta(kit.seal(minimal_pdf(), level="B-T"), timestamper=kit.timestamper,
                  validation=kit.material)
