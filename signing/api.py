"""HTTP for sealing: RFC 3161 TSA, PAdES and JAdES sealing. Thin over signing.service."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from flask import Blueprint, Response, current_app, g, jsonify, render_template, request

from ca import status
from signing import pdf, trustlist
from signing import verify as verification
from signing.errors import BadDocument, SigningError, TooLarge
from signing.service import SigningService, records_from_batch
from signing.tsa import MAX_QUERY_BYTES

bp = Blueprint("signing", __name__, template_folder="templates", static_folder="static",
               static_url_path="/verify/static")
MAX_TSA_QUERY = MAX_QUERY_BYTES
MAX_ID = 2**31 - 1  # row ids are 32-bit INTEGER columns on PostgreSQL
_INT = re.compile(r"-?[0-9]{1,10}\Z")


def _svc() -> SigningService:
    svc: SigningService = current_app.extensions["signing"]
    return svc


def _principal() -> status.Principal:
    return status.authenticate_header(_svc().store, request.headers.get("Authorization"))


def _organization(principal: status.Principal) -> int:
    raw = request.values.get("organization_id")
    if raw is None:
        if principal.organization_id is None:
            raise SigningError("'organization_id' is required")
        return principal.organization_id
    return _integer("organization_id", raw, low=1, high=MAX_ID)


def _integer(name: str, raw: str, *, low: int, high: int) -> int:
    """ASCII digits only (``int()`` would take ``1_0`` or Arabic-Indic digits), in range."""
    if not _INT.match(raw) or not low <= int(raw) <= high:
        raise SigningError(f"'{name}' must be an integer from {low} to {high}")
    return int(raw)


class TsaFastPath:
    """WSGI middleware answering ``POST /tsa`` below Flask, like ``OcspFastPath``.

    The RFC 3161 reply is the whole answer (rejections included), so the app's request-id
    and JSON log hooks add nothing here but ~0.5 ms a token (bench/tsa.py).
    """

    def __init__(self, app: Any, extensions: dict[str, Any]) -> None:
        self.app = app
        self.extensions = extensions

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        if environ.get("REQUEST_METHOD") != "POST" or environ.get("PATH_INFO") != "/tsa":
            return self.app(environ, start_response)
        # Honour Content-Length (a raw socket stream would block past the body) and read
        # at most one byte past the limit: the TSA rejects oversized queries itself.
        try:
            length = int(environ.get("CONTENT_LENGTH") or -1)
        except ValueError:
            length = -1
        stream = environ["wsgi.input"]
        if length >= 0:
            body = stream.read(min(length, MAX_TSA_QUERY + 1))
        elif environ.get("wsgi.input_terminated"):
            body = stream.read(MAX_TSA_QUERY + 1)
        else:
            body = b""
        svc: SigningService = self.extensions["signing"]
        der = svc.tsa.respond(body, requester=environ.get("REMOTE_ADDR"))
        start_response("200 OK", [("Content-Type", "application/timestamp-reply"),
                                  ("Content-Length", str(len(der))),
                                  ("Cache-Control", "no-store")])
        return [der]


@bp.post("/tsa")
def tsa() -> Response:
    """RFC 3161 over HTTP: always a TimeStampResp (rejections included), never a 500."""
    # Read at most one byte past the limit: the TSA rejects oversized queries itself.
    body = request.stream.read(MAX_TSA_QUERY + 1)
    der = _svc().tsa.respond(body, requester=request.remote_addr)
    return Response(der, mimetype="application/timestamp-reply")


def _flag(name: str, default: bool) -> bool:
    value = request.values.get(name)
    if value is None:
        return default
    if value.lower() in ("1", "true", "yes", "on"):
        return True
    if value.lower() in ("0", "false", "no", "off"):
        return False
    raise SigningError(f"'{name}' must be true or false")


def _box() -> tuple[float, float, float, float] | None:
    raw = request.values.get("box")
    if raw is None:
        return None
    try:
        x1, y1, x2, y2 = (float(v) for v in raw.split(",", 4))
    except ValueError:
        raise SigningError("'box' must be x1,y1,x2,y2 in PDF points") from None
    return (x1, y1, x2, y2)  # range and size: pdf.SealOptions


@bp.post("/api/v1/seal/pdf")
def seal_pdf() -> Response:
    principal = _principal()
    upload = request.files.get("file")
    if upload is None:
        raise BadDocument("send the PDF as multipart/form-data field 'file'")
    data = upload.read(_svc().max_pdf_bytes + 1)
    if len(data) > _svc().max_pdf_bytes:
        raise TooLarge(f"the PDF exceeds the {_svc().max_pdf_bytes} byte limit")
    page = _integer("page", request.values.get("page", "1"), low=-pdf.MAX_PAGES,
                    high=pdf.MAX_PAGES)
    options = pdf.SealOptions(
        level=request.values.get("level", "B-LTA"),
        visible=_flag("visible", True),
        page=page,
        box=_box(),
        field=request.values.get("field"),
        reason=request.values.get("reason"),
        location=request.values.get("location"),
    )
    result = _svc().seal_pdf(principal, _organization(principal), data, options,
                             request_id=g.get("request_id"), actor=request.values.get("actor"))
    response = Response(result.pdf, mimetype="application/pdf")
    response.headers["Content-Disposition"] = 'attachment; filename="sealed.pdf"'
    response.headers["X-Kakuin-Input-SHA256"] = result.input_sha256
    response.headers["X-Kakuin-Output-SHA256"] = result.output_sha256
    response.headers["X-Kakuin-Level"] = result.level
    _receipt_headers(response, result.receipt)
    return response


def _receipt_headers(response: Response, receipt: dict[str, str] | None) -> None:
    """The transparency receipt: keep the salt with the document to prove its seal event."""
    if receipt is not None:
        response.headers["X-Kakuin-Seal-Salt"] = receipt["salt"]
        response.headers["X-Kakuin-Seal-Commitment"] = receipt["commitment"]


@bp.post("/api/v1/seal/json")
def seal_json() -> Any:
    """The body is the record itself (exactly the JSON text to seal)."""
    principal = _principal()
    seals, receipts = _svc().seal_json_receipts(
        principal, _organization(principal), [request.get_data(cache=False)],
        level=request.values.get("level", "B-T"), detached=_flag("detached", False),
        names=[request.values["name"]] if "name" in request.values else None,
        request_id=g.get("request_id"), actor=request.values.get("actor"))
    response = jsonify(seals[0])
    _receipt_headers(response, receipts[0])
    return response


@bp.post("/api/v1/seal/json/batch")
def seal_json_batch() -> Any:
    """``{"records": [...]}``; each record gets its own JAdES signature, in order."""
    principal = _principal()
    records = records_from_batch(request.get_data(cache=False))
    seals, receipts = _svc().seal_json_receipts(
        principal, _organization(principal), records,
        level=request.values.get("level", "B-T"), detached=_flag("detached", False),
        request_id=g.get("request_id"), actor=request.values.get("actor"))
    return jsonify({"seals": seals, "receipts": receipts})


@bp.get("/trust-list")
def trust_list() -> Response:
    """Public: the signed list of CAs this instance vouches for (JAdES, application/jose+json)."""
    return Response(_svc().trust_list(), mimetype=trustlist.MEDIA_TYPE)


@bp.post("/api/v1/verify")
def verify_document() -> Any:
    """Public: upload a sealed PDF or JAdES JSON (multipart field ``file``, or the raw body);
    the ETSI EN 319 102-1 report comes back as JSON. The upload is not stored."""
    upload = request.files.get("file")
    limit = _svc().max_pdf_bytes
    data = upload.read(limit + 1) if upload is not None else request.get_data(cache=False)
    if not data:
        raise BadDocument("send the sealed document as multipart field 'file' or as the body")
    if len(data) > limit:
        raise TooLarge(f"the document exceeds the {limit} byte limit")
    detached = request.files.get("detached")
    report = _svc().verify(data, detached=detached.read() if detached else None)
    return jsonify(report.to_dict())


# -- the public verification page (HTML) -----------------------------------------------------------

_CSP = ("default-src 'self'; script-src 'self' 'unsafe-inline'; "
        "style-src 'self' 'unsafe-inline'; img-src 'self' data:")
_JST = ZoneInfo("Asia/Tokyo")
_VERDICTS = {  # indication -> (css class, ja, en); text as well as colour
    verification.TOTAL_PASSED: ("passed", "確認できました", "Verified"),
    verification.INDETERMINATE: ("indeterminate", "確認できません（現時点では判断できません）",
                                 "Cannot be confirmed yet"),
    verification.TOTAL_FAILED: ("failed", "改ざん・失効などの問題があります", "Problem found"),
}
_VERDICT_NOTES = {
    "passed": ("この文書は発行元の電子印で封印されてから変更されていません。",
               "The document has not been changed since the organization sealed it."),
    "indeterminate": ("今の時点では有効とも無効とも判断できません。"
                      "時間をおいて再度お試しいただくか、発行元にお問い合わせください。",
                      "It cannot be decided right now whether the seal is valid. Try again later "
                      "or ask the organization that issued the document."),
    "failed": ("この文書は封印後に変更されたか、電子印が無効です。内容を信用しないでください。",
               "The document was changed after sealing or the seal is not valid. Do not rely "
               "on its content."),
}
_CHECKS = {  # check name -> (ja, en), plain words
    "format": ("文書の形式が正しい", "The document format is correct"),
    "integrity": ("封印後に内容が変更されていない", "The content has not changed since sealing"),
    "signature": ("電子印の署名が正しい", "The seal's signature is correct"),
    "signing-certificate": ("電子印の証明書が署名に結び付いている",
                            "The seal's certificate belongs to the signature"),
    "modifications": ("封印後に許されない追記がない",
                      "Nothing that is not allowed was added after sealing"),
    "certificate-path": ("電子印の証明書が信頼できる認証局から発行されている",
                         "The seal's certificate comes from a trusted authority"),
    "e-seal-profile": ("組織の電子印（e シール）用の証明書である",
                       "The certificate is an organization e-seal certificate"),
    "revocation": ("電子印の証明書が失効していない", "The seal's certificate has not been revoked"),
    "signature-timestamp": ("封印の時刻が信頼できるタイムスタンプで証明されている",
                            "A trusted timestamp proves when it was sealed"),
    "archive-timestamp": ("長期保存用のタイムスタンプが有効",
                          "The long-term archive timestamp is valid"),
    "tsa-profile": ("タイムスタンプ発行元の証明書が時刻証明用である",
                    "The timestamp issuer's certificate is for timestamping"),
    "tsa-certificate-path": ("タイムスタンプ発行元が信頼できる認証局から発行されている",
                             "The timestamp issuer comes from a trusted authority"),
    "tsa-revocation": ("タイムスタンプ発行元の証明書が失効していない",
                       "The timestamp issuer's certificate has not been revoked"),
}
_KINDS = {"seal": ("電子印", "Seal"),
          "document-timestamp": ("文書タイムスタンプ", "Document timestamp")}


def _lang() -> str:
    return "en" if request.values.get("lang") == "en" else "ja"


def _jst(moment: datetime | None) -> str | None:
    return None if moment is None else moment.astimezone(_JST).strftime("%Y-%m-%d %H:%M:%S JST")


def _result_view(report: verification.Report, lang: str) -> dict[str, Any]:
    i = 1 if lang == "en" else 0

    def verdict(indication: str) -> tuple[str, str]:
        css, ja, en = _VERDICTS.get(indication, _VERDICTS[verification.INDETERMINATE])
        return css, (en if lang == "en" else ja)

    css, headline = verdict(report.indication)
    signatures = []
    for sig in report.signatures:
        sig_css, sig_text = verdict(sig.indication)
        who = sig.sealed_by
        proven = sig.best_signature_time is not None
        signatures.append({
            "kind": _KINDS.get(sig.kind, (sig.kind, sig.kind))[i], "is_seal": sig.kind == "seal",
            "css": sig_css, "verdict": sig_text,
            "organization": who.get("organization") or who.get("common_name"),
            "identifier": who.get("organization_identifier"),
            "time": _jst(sig.best_signature_time or sig.signing_time), "time_proven": proven,
            "level": sig.level,
            "technical": " / ".join(x for x in (sig.indication, sig.sub_indication) if x),
            "checks": [{
                "text": _CHECKS.get(c.name, (c.name, c.name))[i], "name": c.name,
                "state": {True: "ok", False: "ng", None: "skip"}[c.passed], "detail": c.detail,
            } for c in sig.checks],
        })
    return {"css": css, "headline": headline, "note": _VERDICT_NOTES[css][i],
            "technical": " / ".join(x for x in (report.indication, report.sub_indication) if x),
            "checked_at": _jst(report.checked_at), "signatures": signatures}


def _page(status_code: int = 200, **context: Any) -> Response:
    lang = _lang()
    html = render_template("verify.html", lang=lang, other="ja" if lang == "en" else "en",
                           **context)
    response = Response(html, status=status_code, mimetype="text/html")
    response.headers["Content-Security-Policy"] = _CSP
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.get("/verify")
def verify_page() -> Response:
    """Public HTML page: choose or drop a sealed document and see the verdict."""
    return _page()


@bp.post("/verify")
def verify_page_result() -> Response:
    """The form's target: the verdict on the same page. The upload is read into memory,
    verified and dropped (never stored); bad uploads get a friendly message (422/413)."""
    en = _lang() == "en"
    upload = request.files.get("file")
    data = upload.read(_svc().max_pdf_bytes + 1) if upload is not None else b""
    if not data:
        return _page(422, error=("Choose a sealed PDF or JSON file." if en
                                 else "封印された PDF または JSON ファイルを選んでください。"))
    if len(data) > _svc().max_pdf_bytes:
        return _page(413, error=("The file is too large." if en else "ファイルが大きすぎます。"))
    try:
        report = _svc().verify(data)
    except verification.TooComplex:
        return _page(422, error=(
            "This document has too many seals, revisions or parts to be checked here."
            if en else "この文書は電子印・更新・構成要素が多すぎるため、ここでは確認できません。"))
    except BadDocument:
        return _page(422, error=(
            "This file does not look like a sealed document (a PDF or JSON with an e-seal). "
            "Please check that you chose the right file." if en else
            "このファイルは電子印で封印された文書（PDF または JSON）ではないようです。"
            "選んだファイルをご確認ください。"))
    filename = upload.filename if upload is not None else None
    return _page(result=_result_view(report, _lang()), filename=filename)
