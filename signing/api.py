"""HTTP for sealing: RFC 3161 TSA, PAdES and JAdES sealing. Thin over signing.service."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, current_app, g, jsonify, request

from ca import status
from signing import pdf, trustlist
from signing.errors import BadDocument, SigningError, TooLarge
from signing.service import SigningService, records_from_batch
from signing.tsa import MAX_QUERY_BYTES

bp = Blueprint("signing", __name__)
MAX_TSA_QUERY = MAX_QUERY_BYTES


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
    try:
        return int(raw)
    except ValueError:
        raise SigningError("'organization_id' must be an integer") from None


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
        x1, y1, x2, y2 = (float(v) for v in raw.split(","))
    except ValueError:
        raise SigningError("'box' must be x1,y1,x2,y2 in PDF points") from None
    return (x1, y1, x2, y2)


@bp.post("/api/v1/seal/pdf")
def seal_pdf() -> Response:
    principal = _principal()
    upload = request.files.get("file")
    if upload is None:
        raise BadDocument("send the PDF as multipart/form-data field 'file'")
    data = upload.read(_svc().max_pdf_bytes + 1)
    if len(data) > _svc().max_pdf_bytes:
        raise TooLarge(f"the PDF exceeds the {_svc().max_pdf_bytes} byte limit")
    try:
        page = int(request.values.get("page", "1"))
    except ValueError:
        raise SigningError("'page' must be an integer") from None
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
                             request_id=g.get("request_id"))
    response = Response(result.pdf, mimetype="application/pdf")
    response.headers["Content-Disposition"] = 'attachment; filename="sealed.pdf"'
    response.headers["X-Kakuin-Input-SHA256"] = result.input_sha256
    response.headers["X-Kakuin-Output-SHA256"] = result.output_sha256
    response.headers["X-Kakuin-Level"] = result.level
    return response


@bp.post("/api/v1/seal/json")
def seal_json() -> Any:
    """The body is the record itself (exactly the JSON text to seal)."""
    principal = _principal()
    seals = _svc().seal_json(
        principal, _organization(principal), [request.get_data(cache=False)],
        level=request.values.get("level", "B-T"), detached=_flag("detached", False),
        names=[request.values["name"]] if "name" in request.values else None,
        request_id=g.get("request_id"))
    return jsonify(seals[0])


@bp.post("/api/v1/seal/json/batch")
def seal_json_batch() -> Any:
    """``{"records": [...]}``; each record gets its own JAdES signature, in order."""
    principal = _principal()
    records = records_from_batch(request.get_data(cache=False))
    seals = _svc().seal_json(
        principal, _organization(principal), records,
        level=request.values.get("level", "B-T"), detached=_flag("detached", False),
        request_id=g.get("request_id"))
    return jsonify({"seals": seals})


@bp.get("/trust-list")
def trust_list() -> Response:
    """Public: the signed list of CAs this instance vouches for (JAdES, application/jose+json)."""
    return Response(_svc().trust_list(), mimetype=trustlist.MEDIA_TYPE)


@bp.post("/api/v1/verify")
def verify_document() -> Any:
    """Public: upload a sealed PDF or JAdES JSON (multipart field ``file``, or the raw body);
    the ETSI EN 319 102-1 report comes back as JSON. The upload is not stored."""
    upload = request.files.get("file")
    data = upload.read() if upload is not None else request.get_data(cache=False)
    if not data:
        raise BadDocument("send the sealed document as multipart field 'file' or as the body")
    detached = request.files.get("detached")
    report = _svc().verify(data, detached=detached.read() if detached else None,
                           requester=f"anonymous@{request.remote_addr}",
                           request_id=g.get("request_id"))
    return jsonify(report.to_dict())
