"""Hostile documents for the verifier, made here: what an anonymous uploader can send.

- ``reference_loops``: PDFs whose objects refer to themselves or each other in circles (written
  with ``tests.fixtures_pdf.pdf_from_objects``: no PDF library writes them on purpose);
- ``self_signed_pile``: a PDF padded to ``size`` bytes carrying ``count`` signatures made with a
  self-signed key (no kakuin involved), each in its own incremental update;
- ``dss_flips``: a sealed PDF with one byte changed inside each of its embedded revocation
  objects (DSS streams).
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

from asn1crypto import keys as asn1_keys
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from pyhanko.pdf_utils import generic
from pyhanko.pdf_utils.incremental_writer import IncrementalPdfFileWriter
from pyhanko.pdf_utils.reader import PdfFileReader
from pyhanko.sign import signers
from pyhanko.sign.fields import SigFieldSpec, append_signature_field
from pyhanko_certvalidator.registry import SimpleCertificateStore

from tests.fixtures_pdf import minimal_pdf, pdf_from_objects

_SIG_V = (b"<< /Type /Sig /Filter /Adobe.PPKLite /SubFilter /ETSI.CAdES.detached "
          b"/ByteRange [0 10 20 10] /Contents <3082> >>")


def reference_loops() -> dict[str, bytes]:
    """Each a PDF with a signature-looking field, so the verifier gets past "no seal"."""
    page = b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] >>"
    return {
        # a field whose /Kids contain itself
        "field-kids-self": pdf_from_objects([
            b"<< /Type /Catalog /Pages 2 0 R /AcroForm << /Fields [4 0 R] >> >>",
            b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>", page,
            b"<< /FT /Sig /T (s) /Kids [4 0 R] /V 5 0 R >>", _SIG_V]),
        # two fields each other's kid
        "field-kids-pair": pdf_from_objects([
            b"<< /Type /Catalog /Pages 2 0 R /AcroForm << /Fields [4 0 R] >> >>",
            b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>", page,
            b"<< /T (a) /Kids [5 0 R] >>", b"<< /T (b) /Kids [4 0 R] /FT /Sig >>"]),
        # the page tree contains itself
        "pages-self": pdf_from_objects([
            b"<< /Type /Catalog /Pages 2 0 R /AcroForm << /Fields [3 0 R] >> >>",
            b"<< /Type /Pages /Kids [2 0 R] /Count 1 >>",
            b"<< /FT /Sig /T (s) /V 4 0 R /P 2 0 R >>", _SIG_V]),
        # an object that is a reference to itself, used as the signature value
        "value-self": pdf_from_objects([
            b"<< /Type /Catalog /Pages 2 0 R /AcroForm << /Fields [4 0 R] >> >>",
            b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>", page,
            b"<< /FT /Sig /T (s) /V 5 0 R >>", b"5 0 R"]),
        # the /Parent chain of a field loops
        "parent-loop": pdf_from_objects([
            b"<< /Type /Catalog /Pages 2 0 R /AcroForm << /Fields [4 0 R] >> >>",
            b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>", page,
            b"<< /FT /Sig /T (s) /V 6 0 R /Parent 5 0 R >>",
            b"<< /T (p) /Parent 4 0 R /Kids [4 0 R] >>", _SIG_V]),
    }


def _self_signed() -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Mallory"),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Not a school")])
    now = datetime.now(UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(days=1)).not_valid_after(now + timedelta(days=30))
            .add_extension(x509.KeyUsage(True, True, False, False, False, False, False, False,
                                         False), critical=True)
            .sign(key, hashes.SHA256()))
    return key, cert


def self_signed_pile(count: int, size: int = 0) -> bytes:
    """``count`` self-made signatures, each in its own incremental update, on a PDF padded
    with an incompressible stream to about ``size`` bytes."""
    key, cert = _self_signed()
    signer = signers.SimpleSigner(
        signing_cert=asn1_x509.Certificate.load(cert.public_bytes(serialization.Encoding.DER)),
        signing_key=asn1_keys.PrivateKeyInfo.load(key.private_bytes(
            serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption())),
        cert_registry=SimpleCertificateStore())
    base = minimal_pdf("pile")
    pad = max(0, size - len(base) - count * 6700)  # a signature update is ~6.7 KB
    if pad:
        w = IncrementalPdfFileWriter(io.BytesIO(base))
        blob = generic.StreamObject(stream_data=os.urandom(pad))
        w.root["/PieceInfo"] = w.add_object(generic.DictionaryObject(
            {generic.NameObject("/Blob"): w.add_object(blob)}))
        w.update_root()
        out = io.BytesIO()
        w.write(out)
        base = out.getvalue()
    data = base
    for i in range(count):
        w = IncrementalPdfFileWriter(io.BytesIO(data))
        name = f"Sig{i + 1}"
        append_signature_field(w, SigFieldSpec(sig_field_name=name))
        out = signers.sign_pdf(w, signers.PdfSignatureMetadata(field_name=name), signer=signer,
                               bytes_reserved=4096)
        data = out.getvalue()
    return data


def dss_streams(sealed: bytes) -> list[tuple[int, int]]:
    """(offset, length) in the file of each DSS stream's raw data (certs, OCSPs, CRLs)."""
    reader = PdfFileReader(io.BytesIO(sealed), strict=False)
    dss = reader.root["/DSS"]
    found = []
    for key in ("/OCSPs", "/CRLs", "/Certs"):
        for ref in dss.get(key, []):
            stream = ref.get_object()
            raw = stream.encoded_data
            at = sealed.rfind(raw)
            if at > 0 and raw:
                found.append((at, len(raw)))
    return found


def dss_flips(sealed: bytes, per_stream: int = 6) -> Iterator[tuple[str, bytes]]:
    """The sealed PDF with one byte changed at ``per_stream`` places of every DSS stream."""
    for n, (at, length) in enumerate(dss_streams(sealed)):
        for k in range(per_stream):
            pos = at + (length * (k + 1)) // (per_stream + 1)
            flipped = bytearray(sealed)
            flipped[pos] ^= 0x5A
            yield f"dss{n}@{pos - at}", bytes(flipped)
