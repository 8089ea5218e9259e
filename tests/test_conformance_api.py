"""POST /api/v1/conformance/producer over real HTTP: a plain pyHanko seal with a self-made
certificate fails with reasons; non-PDFs and bad levels are 400 problems, never 500."""

from __future__ import annotations

import json

from kakuin import conformance
from tests.served import http, multipart


def test_producer_endpoint_reports_rules(live_server) -> None:
    pdf = conformance._foreign_chain_seal(conformance._document("plain pyHanko"))
    body, ctype = multipart({"level": "B-T"}, {"file": ("x.pdf", pdf, "application/pdf")})
    code, _, out = http("POST", f"{live_server.url}/api/v1/conformance/producer", body=body,
                        content_type=ctype)
    assert code == 200, out[:300]
    result = json.loads(out)
    failed = {r["rule"] for r in result["rules"] if not r["passed"]}
    assert result["passed"] is False
    assert failed == {"visible-seal", "eseal-qctype", "signature-timestamp"}
    for bad, query, want in ((b"not a pdf", "", 422), (b"%PDF-1.7\n garbage", "", 422),
                             (pdf, "?level=B-X", 400)):
        code, headers, out = http("POST", f"{live_server.url}/api/v1/conformance/producer"
                                  + query, body=bad, content_type="application/pdf")
        assert code == want, (code, out[:300])
        assert headers["Content-Type"] == "application/problem+json"
