"""``POST /api/v1/conformance/producer``: the producer check for vendors without Python.

Public like ``/api/v1/verify`` (the upload is read, checked and dropped); multipart field
``file`` (or the raw body), ``level`` (B-B..B-LTA, default B-LTA), ``visible`` (default true).
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, current_app, jsonify, request

from kakuin import conformance
from signing.errors import BadDocument, SigningError, TooLarge

bp = Blueprint("conformance", __name__)


@bp.post("/api/v1/conformance/producer")
def producer_check() -> Any:
    limit: int = current_app.extensions["signing"].max_pdf_bytes
    upload = request.files.get("file")
    data = upload.read(limit + 1) if upload is not None else request.get_data(cache=False)
    if not data:
        raise BadDocument("send the sealed PDF as multipart field 'file' or as the body")
    if len(data) > limit:
        raise TooLarge(f"the document exceeds the {limit} byte limit")
    level = request.values.get("level", "B-LTA")
    if level not in conformance.LEVEL_ORDER:
        raise SigningError(f"level must be one of {', '.join(conformance.LEVEL_ORDER)}")
    visible = request.values.get("visible", "true").lower() not in ("0", "false", "no", "off")
    if not data.startswith(b"%PDF-"):
        raise BadDocument("not a PDF")
    try:
        result = conformance.check_producer_pdf(data, level=level, require_visible=visible)
    except (SigningError, RecursionError):
        raise
    except Exception as exc:  # the file's structure: a bad document, never a 500
        raise BadDocument(f"corrupt or unsupported PDF: {str(exc)[:200]}") from None
    return jsonify(result)
